"""The step log of training: one record per optimiser step in <run>/train/metrics.jsonl (the file name
is the run directory's public layout), a log line per step, a live bar at a terminal, train.report_to's trackers."""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

from ..rundir import progress as task_progress
from ..rundir.atomic import atomic_write_text

log = logging.getLogger("svd_hpc")

STEP_LOG = "metrics.jsonl"


class StepLog:
    """Step records (rank 0), cut back to `start` on resume; a progress line; rank 0's `tracker` (tracking.py)."""

    def __init__(self, out: Path, rank: int, start: int, total: int, tracker=None):
        self.rank, self.start, self.total = rank, start, total
        self.path = out / STEP_LOG
        self.handle = self.bar = None
        self.tracker = tracker
        self.began = time.perf_counter()
        if rank != 0:
            return
        if self.path.is_file():  # steps after the resumed checkpoint are re-done: drop their lines
            kept = [line for line in self.path.read_text().splitlines() if line and json.loads(line)["step"] <= start]
            atomic_write_text(self.path, "".join(line + "\n" for line in kept))
        self.handle = open(self.path, "a")
        # what `status` and the local bars read of a running task (svd_hpc/rundir/progress.py); the line is ours
        self.progress = task_progress.TaskProgress(
            task_progress.file_of(out, 0), "train", 0, total, "steps", start, log_lines=False
        )
        if sys.stderr.isatty():  # a live bar for people at a terminal; log files get the lines only
            self._start_bar()

    def _start_bar(self) -> None:
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        columns = (TextColumn("train"), BarColumn(), TextColumn("{task.completed}/{task.total}"), TimeRemainingColumn())
        self.bar = Progress(*columns, TextColumn("{task.fields[status]}"))
        self.bar_task = self.bar.add_task("train", total=self.total, completed=self.start, status="")
        self.bar.start()

    def write(self, record: dict) -> None:
        """One step's record: step, loss, lr, grad_norm, tokens, tokens_per_s, padding_efficiency, seconds."""
        if self.rank != 0:
            return
        self.handle.write(json.dumps(record) + "\n")
        self.handle.flush()
        self.progress.update(1, record["tokens"])
        step = record["step"]
        eta = (time.perf_counter() - self.began) / (step - self.start) * (self.total - step)
        status = (
            f"loss {record['loss']:.4f} lr {record['lr']:.2e} grad_norm {record['grad_norm']:.3f} "
            f"{record['tokens_per_s']:.0f} tok/s"
        )
        log.info(
            f"step {step}/{self.total}: {status} padding_efficiency {record['padding_efficiency']:.3f} eta {eta:.0f}s"
        )
        if self.bar:
            self.bar.update(self.bar_task, completed=step, status=status)
        if self.tracker:
            self.tracker.log_step(record)

    def close(self) -> None:
        for part in (self.handle, self.tracker):
            if part:
                part.close()
        if self.bar:
            self.bar.stop()
