"""What a run is doing: done markers plus squeue/sacct, per stage and per task.

Reads only the run directory (plan.json, jobs.json, markers, logs) and SLURM's own view, so it
works while the run is live, after it ended, and from any login node.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table

from . import plan as plan_mod
from . import slurm
from .rundir import RunDir

FAILED_STATES = {"FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL", "DEADLINE"}
LIVE_STATES = {"PENDING", "RUNNING", "REQUEUED", "RESIZING", "SUSPENDED", "CONFIGURING", "COMPLETING", "REQUEUE_HOLD"}


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

    @property
    def live(self) -> list[int]:
        return self.running + self.pending


def submissions(run: RunDir) -> list[dict]:
    return run.load_json(run.jobs_path, default={"submissions": []})["submissions"]


def task_job_id(sub: dict, index: int) -> str:
    """SLURM's id of task `index` within one submission: JOB_ARRAYINDEX for arrays, else JOB."""
    return f"{sub['job_id']}_{index - sub['offset']}" if sub.get("array") else str(sub["job_id"])


def log_path(run: RunDir, sub: dict, index: int) -> Path:
    """The stderr file our batch scripts give a task: <job>[_<array index>]_0_log.err."""
    return run.log_dir(sub["stage"]) / f"{task_job_id(sub, index)}_0_log.err"


def _tail(path: Path | None, lines: int = 8) -> str:
    if path is None or not path.is_file():
        return ""
    return "\n".join(path.read_text(errors="replace").rstrip().splitlines()[-lines:])


def collect(run: RunDir) -> list[StageStatus]:
    """Status of every stage of the run, the latest submission of each task deciding its state."""
    plan = plan_mod.plan_from_json(run.load_json(run.plan_path, default=[]))
    subs = submissions(run)
    states = slurm.task_states(sorted({str(s["job_id"]) for s in subs})) if subs and slurm.available() else {}
    out = []
    for stage in plan:
        st = StageStatus(stage.name, stage.array_size)
        latest: dict[int, dict] = {}
        for sub in subs:
            if sub["stage"] == stage.name:
                st.job_ids.append(str(sub["job_id"]))
                for index in sub["indices"]:
                    latest[index] = sub
        elapsed = []
        for index in range(stage.array_size):
            if run.is_done(stage.name, index):
                st.done.append(index)
                _add_skips(st, run.done_marker(stage.name, index))
                continue
            sub = latest.get(index)
            if sub is None:
                continue
            task = states.get(task_job_id(sub, index)) or states.get(str(sub["job_id"]))
            if task is None:
                continue  # SLURM no longer knows it (no accounting): neither live nor known to have failed
            elapsed.append(task.elapsed)
            if task.state == "RUNNING":
                st.running.append(index)
            elif task.state in LIVE_STATES:
                st.pending.append(index)
            elif task.state in FAILED_STATES or task.state == "COMPLETED":
                # COMPLETED without a done marker: the body exited 0 without finishing its work
                path = log_path(run, sub, index)
                st.failed.append(FailedTask(index, task.job_id, task.state, path, _tail(path)))
        st.elapsed = max(elapsed, default="")
        out.append(st)
    return out


def _add_skips(st: StageStatus, path: Path) -> None:
    """Add a finished task's skipped items (its done marker's skip counts) to its stage."""
    try:
        marker = json.loads(path.read_text())
    except (OSError, ValueError):
        return  # an older or foreign marker: nothing to add
    if not isinstance(marker, dict) or not marker.get("skipped"):
        return
    st.skipped += int(marker["skipped"])
    for kind, count in (marker.get("skip_reasons") or {}).items():
        st.skip_reasons[kind] = st.skip_reasons.get(kind, 0) + int(count)
    for kind, example in (marker.get("skip_examples") or {}).items():
        st.skip_examples.setdefault(kind, example)


def live_tasks(run: RunDir) -> dict[str, tuple[list[int], list[str]]]:
    """Per stage: task indices queued or running now, and the job ids holding them."""
    result = {}
    subs = submissions(run)
    for st in collect(run):
        if st.live:
            live = set(st.live)
            ids = [str(s["job_id"]) for s in subs if s["stage"] == st.name and live & set(s["indices"])]
            result[st.name] = (sorted(live), ids)
    return result


def render(run: RunDir, statuses: list[StageStatus], console: Console) -> None:
    table = Table(title=f"run {run.root}")
    for column in ("stage", "tasks", "done", "running", "pending", "failed", "skipped", "jobs", "elapsed"):
        table.add_column(
            column, justify="right" if column not in ("stage", "jobs") else "left", no_wrap=column == "stage"
        )
    for st in statuses:
        table.add_row(
            st.name,
            str(st.size),
            f"[green]{len(st.done)}" if len(st.done) == st.size else str(len(st.done)),
            str(len(st.running)),
            str(len(st.pending)),
            f"[red]{len(st.failed)}" if st.failed else "0",
            f"[yellow]{st.skipped}" if st.skipped else "0",
            ",".join(st.job_ids[-3:]) + ("…" if len(st.job_ids) > 3 else ""),
            st.elapsed,
        )
    console.print(table)
    for st in statuses:
        for kind, count in sorted(st.skip_reasons.items()):
            # items the engine could not run: recorded in the stage's records with skip_reason
            example = st.skip_examples.get(kind, "")
            console.print(f"[yellow]{st.name}: {count} skipped ({kind})[/yellow] e.g. ", end="", soft_wrap=True)
            console.print(example[:300], markup=False, highlight=False, soft_wrap=True)
        for task in st.failed:
            console.print(
                f"[red]{st.name} task {task.index}[/red] ({task.job_id}, {task.state}) log: {task.log}", soft_wrap=True
            )
            if task.tail:
                console.print(task.tail, markup=False, highlight=False)
    if all(len(st.done) == st.size for st in statuses):
        console.print("[green]run complete")
    elif any(st.failed for st in statuses):
        console.print(f"resume with: python -m svd_hpc.launch resume {run.root}", soft_wrap=True)
