"""Why a task failed, told to its batch shell, which retries by cause (slurm/script.py).

A task that fails for a reason a retry can help with (its engine hung or died, a collective or the
GPU failed) writes the cause into its failure file before it exits; the shell reads it after srun
returns. The file, not srun's exit status, carries the cause: when one rank of a multi-process
step exits, `srun --kill-on-bad-exit` terminates the others and reports their SIGTERM (143), not
the first rank's code. A task that fails any other way (a Python error in our code, a bad config)
writes nothing and is not retried.

The file holds two lines: the cause, then the node it happened on; each retry of the task is one
JSON line in RUN/<stage>/retries/<index>.jsonl, written by the shell and read by `status` and the
report (read_retries).
"""

from __future__ import annotations

import json
import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("svd_hpc")

# Causes the batch shell retries, within the requeue cap and off the node they happened on.
ENGINE = "engine"  # vLLM's engine hung or its process died (EXIT_ENGINE_FAILED)
COMMUNICATION = "communication"  # a collective failed: NCCL/gloo error, a lost peer, the rendezvous store
DEVICE = "device"  # the GPU reported an error (ECC, a lost device, a failed launch)
KILLED = "killed"  # SIGKILL, as the kernel's out-of-memory killer sends: retried once (a second is the task's own)
ABORTED = "aborted"  # SIGABRT, as NCCL's watchdog sends on a collective that timed out
TRANSIENT_CAUSES = (ENGINE, COMMUNICATION, DEVICE, KILLED, ABORTED)
WRONG_DEVICE = "wrong-device"  # recorded for `status`, never retried

_failure_file: Path | None = None


def failure_path(stage_dir: Path, index: int) -> Path:
    """Where task `index` of the stage in `stage_dir` writes why it failed (the shell removes it per life)."""
    return stage_dir / "failed" / f"{index:05d}"


def retries_path(stage_dir: Path, index: int) -> Path:
    """The task's life events (start, retry, failed), one JSON object per line, written by its batch shell."""
    return stage_dir / "retries" / f"{index:05d}.jsonl"


def expect_failures_at(path: Path) -> None:
    """Name this task's failure file (the task runner does, before the stage body runs)."""
    global _failure_file
    _failure_file = path


def failure_file() -> Path | None:
    """This task's failure file (None outside a task), for a child process that records in its name."""
    return _failure_file


def record(cause: str, why: str) -> None:
    """Write this task's failure cause for its batch shell; a no-op outside a task."""
    if _failure_file is None:
        return
    node = os.environ.get("SLURMD_NODENAME") or socket.gethostname()
    try:
        _failure_file.parent.mkdir(parents=True, exist_ok=True)
        _failure_file.write_text(f"{cause}\n{node}\n{why}\n")
    except OSError as err:  # the exit code still tells the shell of a single-process task
        log.warning(f"could not record the failure cause in {_failure_file}: {err}")


def transient_cause(err: BaseException) -> str | None:
    """The retryable cause of an exception, or None for one a retry would only repeat."""
    import torch  # the task runner imports this only once a body has raised

    if isinstance(err, torch.OutOfMemoryError):
        return None  # the same shapes need the same memory on any node
    if isinstance(err, torch.distributed.DistError):
        return COMMUNICATION
    if isinstance(err, torch.AcceleratorError):
        return DEVICE
    return None


@dataclass
class Retry:
    """One retry of a task: the life that failed (0 = the first), why, where, and what Slurm was asked."""

    stage: str
    index: int
    life: int
    cause: str
    node: str
    exit: int | None = None
    excluded: str = ""


def read_events(path: Path) -> list[dict]:
    """The life events in a retries file; a torn last line (a shell killed mid-write) is skipped."""
    events = []
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return []
    for line in lines:
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return events


def read_retries(stage_dir: Path, stage: str) -> list[Retry]:
    """Every retry of the stage's tasks, the shell's own and Slurm's (a new life nobody asked for: a
    node failure, or preemption), in task and life order."""
    retries = []
    for path in sorted((stage_dir / "retries").glob("*.jsonl")):
        index = int(path.name.split(".")[0])
        events = read_events(path)
        asked = {e.get("life") for e in events if e.get("event") == "retry"}
        starts = {e.get("life"): e for e in events if e.get("event") == "start"}
        for event in events:
            if event.get("event") == "retry":
                retries.append(
                    Retry(stage, index, event.get("life", 0), event.get("cause", "?"), event.get("node", "?"),
                          event.get("exit"), event.get("excluded", ""))
                )  # fmt: skip
        for life in sorted(k for k in starts if isinstance(k, int) and k > 0):
            if life - 1 not in asked:
                before = starts.get(life - 1, {})
                retries.append(Retry(stage, index, life - 1, "requeued by Slurm", before.get("node", "?")))
    return sorted(retries, key=lambda r: (r.index, r.life))


def final_failures(stage_dir: Path) -> dict[int, dict]:
    """Tasks whose last life failed without a retry, by index: the shell's `failed` event (cause, why not retried)."""
    out = {}
    for path in sorted((stage_dir / "retries").glob("*.jsonl")):
        events = read_events(path)
        if events and events[-1].get("event") == "failed":
            out[int(path.name.split(".")[0])] = events[-1]
    return out
