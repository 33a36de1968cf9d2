"""One stage's state as `status` collects it: its tasks by state, their times, progress and retries."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..rundir.failures import Retry


@dataclass
class FailedTask:
    index: int
    job_id: str
    state: str
    log: Path | None
    tail: str


@dataclass
class StageStatus:
    name: str
    size: int
    done: list[int] = field(default_factory=list)
    running: list[int] = field(default_factory=list)
    pending: list[int] = field(default_factory=list)
    failed: list[FailedTask] = field(default_factory=list)
    job_ids: list[str] = field(default_factory=list)
    elapsed: str = ""
    skipped: int = 0  # items the engine could not run, from the done markers
    skip_reasons: dict[str, int] = field(default_factory=dict)  # kind -> count
    skip_examples: dict[str, str] = field(default_factory=dict)  # kind -> the first item's reason
    durations: list[float] = field(default_factory=list)  # seconds of each done task (its marker)
    progress: dict[int, dict] = field(default_factory=dict)  # running task -> its progress record
    running_s: dict[int, float] = field(default_factory=dict)  # running task -> seconds since it started
    parallelism: int | None = None  # array_parallelism, if the plan caps it
    local: bool = False  # run by the local scheduler: one task at a time
    retries: list[Retry] = field(default_factory=list)  # what the batch shell (or Slurm) retried, and why
    not_retried: dict[int, dict] = field(default_factory=dict)  # task -> the shell's word on why it gave up

    @property
    def complete(self) -> bool:
        return len(self.done) == self.size

    @property
    def waiting(self) -> int:
        """Tasks not yet started that will run without a resume (failed ones need one)."""
        return self.size - len(self.done) - len(self.running) - len(self.failed)

    @property
    def live(self) -> list[int]:
        return self.running + self.pending

    @property
    def elapsed_s(self) -> float | None:
        """Seconds the stage has run: SLURM's longest task elapsed; locally, where tasks run one after
        another, the done tasks' durations (their markers) plus the running task's time so far."""
        if not self.local:
            return slurm_seconds(self.elapsed) if self.elapsed else None
        if not self.durations and not self.running_s:
            return None
        return sum(self.durations) + sum(self.running_s.values())

    def task_state(self, index: int) -> str:
        """done, running, pending (queued, or next for the local scheduler), failed, or idle: no job
        holds it, so it runs only on `resume`."""
        failed = {task.index for task in self.failed}
        for state, indices in (("done", self.done), ("running", self.running), ("pending", self.pending)):
            if index in indices:
                return state
        return "failed" if index in failed else "idle"

    @property
    def state(self) -> str:
        """The stage's state: done, failed (some task), running, pending, or idle (nothing holds it)."""
        if self.complete:
            return "done"
        if self.failed:
            return "failed"
        return "running" if self.running else "pending" if self.pending else "idle"


def slurm_seconds(elapsed: str) -> float:
    """SLURM's elapsed time ('[D-]HH:MM:SS', 'MM:SS') in seconds; 0 when unreadable."""
    days, _, clock = elapsed.rpartition("-")
    try:
        parts = [int(p) for p in clock.split(":")]
        return (int(days) if days else 0) * 86400 + sum(p * 60**k for k, p in enumerate(reversed(parts)))
    except ValueError:
        return 0.0
