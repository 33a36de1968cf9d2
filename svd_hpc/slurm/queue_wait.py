"""How long a job of the run's size waits in the queue, from sacct's record of the user's own jobs.

The estimate is the median wait of the last LIKE_JOBS of the user's jobs on the partition of a like
size (the same node count and GPUs in all), over the last LOOKBACK of accounting, and needs at least
MIN_JOBS of them; else the wait is not counted and the sentence says so. A job's wait is Start less
Eligible (the time it could have started: its dependencies met), else less Submit: a verify array
queued at launch behind generate did not wait for the cluster all that time. An array counts once,
by its first task to start: its later tasks wait for their own array's throttle, not for the queue.
"""

from __future__ import annotations

import getpass
import statistics
from dataclasses import dataclass
from datetime import datetime

from . import commands

LIKE_JOBS = 20
MIN_JOBS = 3
LOOKBACK = "now-30days"
FIELDS = ["JobID", "Submit", "Eligible", "Start", "NNodes", "AllocTRES"]


@dataclass(frozen=True)
class Job:
    job_id: str  # the array job id for array tasks
    submit: float
    wait_s: float
    nodes: int
    gpus: int  # in all its nodes


@dataclass(frozen=True)
class QueueWait:
    seconds: float | None  # None: not counted
    how: str  # one sentence: how it was estimated, or why it is not counted
    jobs: int = 0

    def to_json(self) -> dict:
        return {"seconds": self.seconds, "how": self.how, "jobs": self.jobs}


def _epoch(text: str) -> float | None:
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None  # "Unknown", "None": the job has not started (or was never eligible)


def parse(rows: list[list[str]]) -> list[Job]:
    """sacct rows (FIELDS) to the jobs that started, one per job (an array by its first task to start)."""
    first: dict[str, Job] = {}
    for parts in rows:
        if len(parts) < len(FIELDS) or "[" in parts[0]:
            continue  # a pending array range: nothing started
        job_id, submit, eligible, start, nodes, tres = parts[: len(FIELDS)]
        submitted, started = _epoch(submit), _epoch(start)
        if submitted is None or started is None or not nodes.isdigit():
            continue
        ready = _epoch(eligible)
        ready = ready if ready is not None and submitted <= ready <= started else submitted
        job = Job(job_id.split("_")[0].split(".")[0], submitted, started - ready, int(nodes), commands.tres_gpus(tres))
        if job.job_id not in first or job.wait_s < first[job.job_id].wait_s:
            first[job.job_id] = job
    return sorted(first.values(), key=lambda j: j.submit)


class History:
    """The user's started jobs on one partition, read once from sacct; `wait` for any job size."""

    def __init__(self, partition: str | None, user: str | None = None):
        self.partition = partition
        self.user = user or getpass.getuser()
        where = ["-r", partition] if partition else []
        rows = commands.sacct_rows(["-u", self.user, *where, "-S", LOOKBACK], FIELDS)
        self.jobs = parse(rows) if rows is not None else None  # None: no accounting to read

    @property
    def place(self) -> str:
        return f"partition {self.partition}" if self.partition else "the default partition"

    def wait(self, nodes: int, gpus_per_node: int) -> QueueWait:
        """The median wait of the last LIKE_JOBS jobs of `nodes` nodes and nodes × gpus_per_node GPUs."""
        size = f"{nodes} node(s), {nodes * gpus_per_node} GPU(s)"
        if self.jobs is None:
            return QueueWait(None, f"queue wait not counted: sacct has no record of {self.user}'s jobs on {self.place}")
        like = [j for j in self.jobs if j.nodes == nodes and j.gpus == nodes * gpus_per_node][-LIKE_JOBS:]
        if len(like) < MIN_JOBS:
            return QueueWait(
                None,
                f"queue wait not counted: sacct lists {len(like)} of {self.user}'s jobs of {size} on {self.place} "
                f"since {LOOKBACK}, fewer than the {MIN_JOBS} an estimate needs",
                len(like),
            )
        seconds = statistics.median(j.wait_s for j in like)
        return QueueWait(
            seconds,
            f"queue wait {_duration(seconds)}: the median Start − Eligible of {self.user}'s last {len(like)} jobs of "
            f"{size} on {self.place} (sacct)",
            len(like),
        )


def _duration(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 60:.0f} min" if seconds >= 60 else f"{seconds:.0f} s"
