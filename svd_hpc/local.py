"""The local scheduler: run the plan on this machine, stage by stage, with progress bars.

Each task runs in its own process (`python -m svd_hpc.task`, or torchrun for the distributed
stage), exactly the command a SLURM job runs, so a model engine's memory is returned between
tasks and a crash is confined to its task. Tasks with a done marker are skipped: running the
same run again resumes it.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from .config import RunConfig, train_procs_per_node
from .plan import Stage
from .rundir import RunDir, atomic_write_json
from .task_env import without_secrets


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
        bars = {s.name: progress.add_task("", total=s.array_size, stage=s.name, note="waiting") for s in plan}
        for stage in plan:
            bar = bars[stage.name]
            todo = run.incomplete(stage.name, stage.array_size)
            progress.update(bar, completed=stage.array_size - len(todo), note="running" if todo else "done earlier")
            start = time.monotonic()
            for index in todo:
                log_path = run.log_dir(stage.name) / f"local_{index}.log"
                log_path.parent.mkdir(parents=True, exist_ok=True)
                progress.update(bar, note=f"task {index}: {log_path}")
                with log_path.open("a") as log_file:
                    proc = subprocess.run(
                        task_command(cfg, run, stage, index), stdout=log_file, stderr=subprocess.STDOUT, env=env
                    )
                if proc.returncode != 0:
                    progress.update(bar, note="[red]failed")
                    raise TaskFailed(stage.name, index, log_path, proc.returncode)
                progress.advance(bar)
            timings[stage.name] = time.monotonic() - start
            atomic_write_json(run.root / "logs" / "local_timings.json", timings)
            progress.update(bar, note=f"done in {timings[stage.name]:.1f} s" if todo else "done earlier")
    return timings
