"""The local scheduler: run the plan on this machine, stage by stage, with progress bars.

A stage's bar moves per chunk, not only per task: while a task runs, its progress file
(svd_hpc/rundir/progress.py) is read every POLL_S seconds, and the bar shows the finished tasks plus
the running one's fraction, with its questions done, tokens/s and ETA. `local_running.json`
in the run's logs/ names the task running now, so `status` can tell it from one that died.

Each task runs in its own process (`python -m svd_hpc.task`, or torchrun for the distributed
stage), exactly the command a SLURM job runs, so a model engine's memory is returned between
tasks and a crash is confined to its task. Tasks with a done marker are skipped: running the
same run again resumes it.
"""

from __future__ import annotations

import functools
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ..config import RunConfig, train_procs_per_node
from ..rundir import progress as task_progress
from ..rundir.atomic import atomic_write_json
from ..rundir.env import without_secrets
from ..rundir.layout import RunDir
from ..rundir.planfile import Stage

POLL_S = 1.0  # how often a running task's progress file is read for its bar


class TaskFailed(RuntimeError):
    """A local task exited non-zero; carries the stage, index, log path and the log's tail."""

    def __init__(self, stage: str, index: int, log_path: Path, returncode: int):
        self.stage, self.index, self.log_path, self.returncode = stage, index, log_path, returncode
        super().__init__(f"stage '{stage}' task {index} failed (exit {returncode}); log: {log_path}")

    def tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def task_command(cfg: RunConfig, run: RunDir, stage: Stage, index: int) -> list[str]:
    base = ["-m", "svd_hpc.task", stage.name, "--run-dir", str(run.root), "--index", str(index)]
    if stage.kind == "distributed":
        procs = train_procs_per_node(cfg)
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}", *base]
    return [sys.executable, "-u", *base]


def run_plan(cfg: RunConfig, run: RunDir, plan: list[Stage], console: Console | None = None) -> dict[str, float]:
    """Run every incomplete task of `plan` here, in order; returns wall seconds per stage."""
    console = console or Console(stderr=True)
    timings: dict[str, float] = {}
    env = {**without_secrets(), "PYTHONUNBUFFERED": "1"}
    # a multi-process stage here gets a rendezvous of its own, never a cluster's leftovers
    for key in ("SLURM_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_PROCID", "RANK", "WORLD_SIZE"):
        env.pop(key, None)
    columns = (
        TextColumn("[bold]{task.fields[stage]:<13}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[note]}"),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        # a bar's clock starts with its stage: a waiting stage showing the time since launch reads as its run time
        bars = {
            s.name: progress.add_task("", total=s.array_size, stage=s.name, note="waiting", start=False) for s in plan
        }
        for stage in plan:
            bar = bars[stage.name]
            todo = run.incomplete(stage.name, stage.array_size)
            if todo:
                progress.start_task(bar)
            progress.update(bar, completed=stage.array_size - len(todo), note="running" if todo else "done earlier")
            start = time.monotonic()
            for index in todo:
                log_path = run.log_dir(stage.name) / f"local_{index}.log"
                log_path.parent.mkdir(parents=True, exist_ok=True)
                progress.update(bar, note=f"task {index}: {log_path}")
                with log_path.open("a") as log_file:
                    proc = subprocess.Popen(
                        task_command(cfg, run, stage, index), stdout=log_file, stderr=subprocess.STDOUT, env=env
                    )
                    finished = stage.array_size - len(todo) + todo.index(index)
                    follow(run, stage.name, index, proc, functools.partial(progress.update, bar), finished)
                if proc.returncode != 0:
                    progress.update(bar, note="[red]failed")
                    raise TaskFailed(stage.name, index, log_path, proc.returncode)
                progress.update(bar, completed=finished + 1)  # not advance: the bar may hold a fraction
            timings[stage.name] = time.monotonic() - start
            atomic_write_json(run.root / "logs" / "local_timings.json", timings)
            progress.update(bar, note=f"done in {timings[stage.name]:.1f} s" if todo else "done earlier")
    return timings


def follow(run: RunDir, stage: str, index: int, proc: subprocess.Popen, update, finished: int) -> None:
    """Wait for task `index` of `stage`, calling update(completed=..., note=...) after each of its chunks.

    `finished` tasks of the stage are done before this one; the bar adds this task's fraction.
    """
    launched = time.time()
    record = dict(
        stage=stage, index=index, pid=proc.pid, scheduler_pid=os.getpid(), host=socket.gethostname(), started=launched
    )
    atomic_write_json(run.local_running_path, record)
    file, seen = task_progress.path(run, stage, index), None
    while True:
        try:
            proc.wait(timeout=POLL_S)
            return
        except subprocess.TimeoutExpired:
            pass
        except BaseException:  # Ctrl-C or an error here: the task does not outlive its scheduler
            proc.kill()
            proc.wait()
            raise
        current = task_progress.read(file)
        # a file left by an earlier attempt is older than this process
        if current and current["updated"] >= launched and current != seen:
            seen = current
            update(completed=finished + task_progress.fraction(current), note=task_progress.line(current))
