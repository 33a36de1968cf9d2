"""Progress inside a task: how far a running task is, written after every chunk.

Every chunked stage (generate and eval: questions; verify: candidate-stages; train: steps) keeps
one small JSON file per task, <run>/<stage>/progress/NNNNN.json, rewritten atomically after
each chunk: units done of the shard's total, the units earlier attempts had saved, tokens
generated, and when this attempt started and the file was written. Readers (`status`, the local
scheduler's bars) get a task's rate and ETA from it without opening the task's outputs. Each
write also logs one plain line with rate and ETA: task logs on SLURM are files, not terminals.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from pathlib import Path

from .atomic import atomic_write_json
from .layout import RunDir

log = logging.getLogger("svd_hpc")


def file_of(stage_dir: Path, index: int) -> Path:
    return Path(stage_dir) / "progress" / f"{index:05d}.json"


def path(run: RunDir, stage: str, index: int) -> Path:
    return file_of(run.stage_dir(stage), index)


def start(run: RunDir, stage: str, index: int, total: float, unit: str, done: float = 0, every: float = 1):
    """The progress file of task `index` of `stage`, written at once (see TaskProgress)."""
    return TaskProgress(path(run, stage, index), stage, index, total, unit, done, every)


class TaskProgress:
    """One task's progress file: `update` after each finished unit; written once `every` units
    have accumulated (a chunk) and at the end of the shard."""

    def __init__(
        self,
        file: Path,
        stage: str,
        index: int,
        total: float,
        unit: str,
        done: float = 0,
        every: float = 1,
        log_lines: bool = True,  # False where the caller logs its own line per unit (train's steps)
    ):
        self.file, self.stage, self.index, self.total, self.unit, self.every = file, stage, index, total, unit, every
        self.log_lines = log_lines
        self.done = self.resumed = done  # units saved by earlier attempts count as done, not as this one's rate
        self.tokens = 0
        self.started = time.time()
        self.written = done
        self.write()  # at once: the file says the task has started, even before its first chunk

    def update(self, units: float = 1, tokens: int = 0, resumed: bool = False) -> None:
        """`units` finished (`resumed`: found saved, not computed now) and the tokens they took."""
        self.done += units
        self.tokens += tokens
        if resumed:
            self.resumed += units
        if self.done - self.written >= self.every or self.done >= self.total - 1e-9:
            self.write()

    def record(self) -> dict:
        return {
            "stage": self.stage,
            "index": self.index,
            "unit": self.unit,
            "done": round(self.done, 3),
            "total": self.total,
            "resumed": round(self.resumed, 3),
            "tokens": self.tokens,
            "started": round(self.started, 3),
            "updated": round(time.time(), 3),
            "host": socket.gethostname(),
            "pid": os.getpid(),
        }

    def write(self) -> None:
        record = self.record()
        atomic_write_json(self.file, record)
        self.written = self.done
        if self.log_lines and self.done > self.resumed:
            log.info(line(record))


# ----------------------------------------------------------------------------- readers


def read(file: Path) -> dict | None:
    """A progress record, or None when the task has written none (or it is unreadable)."""
    try:
        record = json.loads(Path(file).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and "done" in record else None


def fraction(record: dict) -> float:
    return min(1.0, record["done"] / record["total"]) if record["total"] else 1.0


def _seconds(record: dict) -> float:
    return max(1e-9, record["updated"] - record["started"])


def rate(record: dict) -> float | None:
    """Units per second this attempt (units resumed from earlier attempts left out); None before any."""
    computed = record["done"] - record["resumed"]
    return computed / _seconds(record) if computed > 0 else None


def tokens_per_s(record: dict) -> float:
    return record["tokens"] / _seconds(record)


def remaining_s(record: dict, now: float | None = None) -> float | None:
    """Seconds until the task's last unit at this attempt's rate, counted from `now`; None before a rate."""
    per_s = rate(record)
    if per_s is None:
        return None
    left = (record["total"] - record["done"]) / per_s
    since = (time.time() if now is None else now) - record["updated"]
    return max(0.0, left - since)


def duration(seconds: float | None) -> str:
    """90 -> '1m30s', 4000 -> '1h06m'; None -> '?'."""
    if seconds is None:
        return "?"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _amount(value: float) -> str:
    return f"{value:.0f}" if float(value).is_integer() else f"{value:.1f}"


def line(record: dict, now: float | None = None) -> str:
    """'generate task 3: 128/256 questions (50%), 812 tok/s, eta 2m10s'."""
    return (
        f"{record['stage']} task {record['index']}: {_amount(record['done'])}/{_amount(record['total'])} "
        f"{record['unit']} ({fraction(record):.0%}), {tokens_per_s(record):.0f} tok/s, "
        f"eta {duration(remaining_s(record, now))}"
    )


def alive_here(record: dict, key: str = "pid") -> bool:
    """Whether the process `record[key]` names still runs on this host (local runs: no SLURM to ask)."""
    if record.get("host") != socket.gethostname():
        return False
    try:
        os.kill(int(record[key]), 0)
    except (OSError, ValueError, KeyError):
        return False
    return True
