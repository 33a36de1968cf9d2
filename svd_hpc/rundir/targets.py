"""A run's targets: the deadline it should end by and the GPU-hours it may spend (RUN_DIR/targets.json).

`launch --deadline HH:MM --gpu-hours N` writes them at launch; `status` reads them and warns when its
projection crosses one (runner/targets_check.py); `--pilot` with the same flags proposes settings
that meet them (forecast/proposal.py). The deadline is stored as an absolute time: "HH:MM" means the
next such time after the launch, so a status read tomorrow morning still knows which 07:00 was meant.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from ..config import ConfigError
from .atomic import atomic_write_json
from .layout import RunDir

FILE = "targets.json"
CLOCK = re.compile(r"(\d{1,2}):(\d{2})")


@dataclass(frozen=True)
class Targets:
    deadline: float | None = None  # epoch seconds
    gpu_hours: float | None = None

    def __bool__(self) -> bool:
        return self.deadline is not None or self.gpu_hours is not None

    def to_json(self) -> dict:
        return {
            "deadline": iso(self.deadline) if self.deadline is not None else None,
            "deadline_epoch": self.deadline,
            "gpu_hours": self.gpu_hours,
        }


def iso(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(epoch))


def parse_deadline(text: str, now: float | None = None) -> float:
    """`HH:MM` (the next such local time after `now`) or an ISO date and time (local when it names no
    offset), as epoch seconds. ConfigError when it is neither, or lies in the past."""
    now = time.time() if now is None else now
    if match := CLOCK.fullmatch(text.strip()):
        hour, minute = int(match.group(1)), int(match.group(2))
        if hour > 23 or minute > 59:
            raise ConfigError(f"--deadline {text}: not a time of day; give HH:MM from 00:00 to 23:59.")
        at = datetime.fromtimestamp(now).replace(hour=hour, minute=minute, second=0, microsecond=0)
        if at.timestamp() <= now:  # 07:00 given at 22:00 means tomorrow morning
            at += timedelta(days=1)  # a naive local time: the same clock time across a daylight-saving change
        return at.timestamp()
    try:
        epoch = datetime.fromisoformat(text.strip()).timestamp()
    except ValueError:
        raise ConfigError(
            f"--deadline {text}: not HH:MM nor an ISO date and time; e.g. --deadline 07:30 or "
            "--deadline 2026-12-06T07:30."
        ) from None
    if epoch <= now:
        raise ConfigError(f"--deadline {text} has already passed; give a time in the future.")
    return epoch


def check_gpu_hours(value: float) -> float:
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(
            f"--gpu-hours {value:g}: a budget must be a positive number of GPU-hours, e.g. --gpu-hours 40."
        )
    return float(value)


def from_args(deadline: str | None, gpu_hours: float | None, now: float | None = None) -> Targets:
    """The command line's targets, checked (ConfigError, exit 2, on a bad one)."""
    return Targets(
        parse_deadline(deadline, now) if deadline is not None else None,
        check_gpu_hours(gpu_hours) if gpu_hours is not None else None,
    )


def path(run: RunDir) -> Path:
    return run.root / FILE


def write(run: RunDir, targets: Targets) -> None:
    atomic_write_json(path(run), targets.to_json())


def read(run: RunDir) -> Targets:
    """The run's targets; empty Targets when it has none (or the file is not ours)."""
    data = run.load_json(path(run), default=None)
    if not isinstance(data, dict):
        return Targets()
    deadline, budget = data.get("deadline_epoch"), data.get("gpu_hours")
    return Targets(
        float(deadline) if isinstance(deadline, int | float) else None,
        float(budget) if isinstance(budget, int | float) else None,
    )
