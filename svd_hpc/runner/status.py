"""What a run is doing: done markers plus squeue/sacct, per stage and per task.

Reads only the run directory (plan.json, jobs.json, markers, progress files, logs) and SLURM's
own view, so it works while the run is live, after it ended, and from any login node.

The ETA of each stage and the run's projected end: runner/eta.py; `status --json`: runner/status_json.py.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from ..publish import hub
from ..rundir import planfile, progress
from ..rundir.failures import final_failures, read_retries
from ..rundir.layout import RunDir
from ..rundir.planfile import Stage
from ..slurm import commands as slurm
from . import targets_check
from .eta import projected_end, stage_estimate
from .stage_status import FailedTask, StageStatus, slurm_seconds

FAILED_STATES = {"FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL", "DEADLINE"}
LIVE_STATES = {"PENDING", "RUNNING", "REQUEUED", "RESIZING", "SUSPENDED", "CONFIGURING", "COMPLETING", "REQUEUE_HOLD"}


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
    plan = load_plan(run)
    subs = run.submissions()
    states = slurm.task_states(sorted({str(s["job_id"]) for s in subs})) if subs and slurm.available() else {}
    local = _local_scheduler(run) if not subs else None
    out = []
    for stage in plan:
        st = StageStatus(stage.name, stage.array_size, parallelism=stage.resources.get("array_parallelism"))
        st.local = not subs
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
                _add_marker(st, run.done_marker(stage.name, index))
                continue
            if st.local:  # no SLURM to ask: the local scheduler's record says which task runs
                if local and (local["stage"], local["index"]) == (stage.name, index) and local["task_alive"]:
                    _add_running(st, run, index, time.time() - local["started"])
                elif local:
                    st.pending.append(index)  # the scheduler will run it; without one, nothing will
                continue
            sub = latest.get(index)
            if sub is None:
                continue
            task = states.get(task_job_id(sub, index)) or states.get(str(sub["job_id"]))
            if task is None:
                continue  # SLURM no longer knows it (no accounting): neither live nor known to have failed
            elapsed.append(task.elapsed)
            if task.state == "RUNNING":
                _add_running(st, run, index, slurm_seconds(task.elapsed))
            elif task.state in LIVE_STATES:
                st.pending.append(index)
            elif task.state in FAILED_STATES or task.state == "COMPLETED":
                # COMPLETED without a done marker: the body exited 0 without finishing its work
                path = log_path(run, sub, index)
                st.failed.append(FailedTask(index, task.job_id, task.state, path, _tail(path)))
        st.elapsed = max(elapsed, default="")
        st.retries = read_retries(run.stage_dir(stage.name), stage.name)
        st.not_retried = final_failures(run.stage_dir(stage.name))
        out.append(st)
    return out


def load_plan(run: RunDir) -> list[Stage]:
    return planfile.plan_from_json(run.load_json(run.plan_path, default=[]))


def _local_scheduler(run: RunDir) -> dict | None:
    """The local scheduler's record of the task it runs (task_alive: whether that task still
    runs), if the scheduler is alive on this host."""

    try:
        record = json.loads(run.local_running_path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or not progress.alive_here(record, "scheduler_pid"):
        return None
    return {**record, "task_alive": progress.alive_here(record)}


def _add_running(st: StageStatus, run: RunDir, index: int, seconds: float) -> None:
    st.running.append(index)
    st.running_s[index] = seconds
    record = progress.read(progress.path(run, st.name, index))
    # a record older than this attempt (a resumed task before its first write) tells nothing
    if record and record["updated"] >= time.time() - seconds - 5:
        st.progress[index] = record


def _add_marker(st: StageStatus, path: Path) -> None:
    """Add a finished task's duration and skipped items (its done marker) to its stage."""
    try:
        marker = json.loads(path.read_text())
    except (OSError, ValueError):
        return  # an older or foreign marker: nothing to add
    if not isinstance(marker, dict):
        return
    if isinstance(marker.get("seconds"), int | float):
        st.durations.append(float(marker["seconds"]))
    if not marker.get("skipped"):
        return
    st.skipped += int(marker["skipped"])
    for kind, count in (marker.get("skip_reasons") or {}).items():
        st.skip_reasons[kind] = st.skip_reasons.get(kind, 0) + int(count)
    for kind, example in (marker.get("skip_examples") or {}).items():
        st.skip_examples.setdefault(kind, example)


def live_tasks(run: RunDir) -> dict[str, tuple[list[int], list[str]]]:
    """Per stage: task indices queued or running now, and the job ids holding them."""
    result = {}
    subs = run.submissions()
    for st in collect(run):
        if st.live:
            live = set(st.live)
            ids = [str(s["job_id"]) for s in subs if s["stage"] == st.name and live & set(s["indices"])]
            result[st.name] = (sorted(live), ids)
    return result


# ----------------------------------------------------------------------------- display


def _clock(epoch: float, now: float) -> str:
    fmt = "%H:%M" if time.localtime(epoch)[:3] == time.localtime(now)[:3] else "%a %d %b %H:%M"
    return time.strftime(fmt, time.localtime(epoch))


def renderables(run: RunDir, statuses: list[StageStatus], now: float | None = None) -> list:
    """The status table, the running tasks' progress, skips, failures, the projected end and the targets."""
    now = time.time() if now is None else now
    goals = targets_check.lines(targets(run, statuses, now))
    return _run_renderables(run, statuses, now) + [
        Text(line, "yellow" if line.startswith("warning") else "") for line in goals
    ]


def targets(run: RunDir, statuses: list[StageStatus], now: float) -> dict | None:
    """The run's deadline and GPU-hour budget against this status's projection (runner/targets_check.py)."""
    if all(st.complete for st in statuses):
        return targets_check.check(run, load_plan(run), statuses, "complete", None, False, now)
    if ended(statuses):
        return targets_check.check(run, load_plan(run), statuses, "stopped", None, False, now)
    epoch, unmeasured = projected_end(load_plan(run), statuses, now)
    known = not (unmeasured and epoch - now < 1)
    return targets_check.check(
        run, load_plan(run), statuses, "running", epoch if known else None, bool(unmeasured), now
    )


def _run_renderables(run: RunDir, statuses: list[StageStatus], now: float) -> list:
    local = any(st.local for st in statuses)
    table = Table(title=f"run {run.root}" + (" (local)" if local else ""))
    columns = ("stage", "tasks", "done", "running", "pending", "failed", "skipped", "jobs", "elapsed", "eta")
    for column in columns:
        if column == "jobs" and local:
            continue  # the local scheduler runs tasks as processes of its own: there are no job ids
        table.add_column(
            column, justify="right" if column not in ("stage", "jobs") else "left", no_wrap=column == "stage"
        )
    for st in statuses:
        est = stage_estimate(st, now)
        jobs = [] if local else [",".join(st.job_ids[-3:]) + ("…" if len(st.job_ids) > 3 else "")]
        table.add_row(
            st.name,
            str(st.size),
            f"[green]{len(st.done)}" if st.complete else str(len(st.done)),
            str(len(st.running)),
            str(len(st.pending)),
            f"[red]{len(st.failed)}" if st.failed else "0",
            f"[yellow]{st.skipped}" if st.skipped else "0",
            *jobs,
            (progress.duration(st.elapsed_s) if st.elapsed_s is not None else "") if local else st.elapsed,
            "" if st.complete else progress.duration(est.left),
        )
    out: list = [table]
    for st in statuses:
        for index in st.running:
            record = st.progress.get(index)
            what = progress.line(record, now) if record else f"{st.name} task {index}: starting, no chunk done yet"
            out.append(Text(f"{what} (running {progress.duration(st.running_s.get(index))})"))
    for st in statuses:
        for kind, count in sorted(st.skip_reasons.items()):
            # items the engine could not run: recorded in the stage's records with skip_reason
            example = st.skip_examples.get(kind, "")
            out.append(Text.assemble((f"{st.name}: {count} skipped ({kind})", "yellow"), " e.g. ", example[:300]))
        for task in st.failed:
            out.append(
                Text.assemble(
                    (f"{st.name} task {task.index}", "red"), f" ({task.job_id}, {task.state}) log: {task.log}"
                )
            )
            why = st.not_retried.get(task.index)
            if why:
                out.append(Text(f"  not retried: {why.get('cause', '')}, {why.get('why', '')}"))
            if task.tail:
                out.append(Text(task.tail))
        for retry in st.retries:
            kept_off = f", retried off {retry.excluded}" if retry.excluded else ", retried"
            out.append(
                Text(
                    f"{st.name} task {retry.index}: {retry.cause} on {retry.node} (life {retry.life + 1}){kept_off}",
                    "yellow",
                )
            )
    # pushes to the hub do not fail the run when they fail (svd_hpc/publish/hub.py): they are shown here
    out += [Text(line, "red" if "FAILED" in line else "") for line in hub.status_lines(run)]
    if all(st.complete for st in statuses):
        out.append(Text("run complete", "green"))
        return out
    resume = f"resume with: python -m svd_hpc.launch resume {run.root}"
    if ended(statuses):  # nothing runs or waits: no end to project, the rest starts only on resume
        failed = [f"{st.name} ({len(st.failed)})" for st in statuses if st.failed]
        left = [st.name for st in statuses if not st.complete]
        why = f"failed tasks in {', '.join(failed)}" if failed else "no task of it runs or waits"
        out.append(Text(f"the run has stopped: {why}; not done: {', '.join(left)}", "red"))
        out.append(Text(resume))
        return out
    if any(st.failed for st in statuses):
        out.append(Text(resume))
    end, unmeasured = projected_end(load_plan(run), statuses, now)
    out.append(Text(end_line(end, unmeasured, now)))
    return out


def end_line(end: float, unmeasured: list[str], now: float) -> str:
    """The projected end in words. When no stage still to run is measured the lower bound is now itself
    ("after 12:35 (in 0s)"), which says nothing: then it names the stage whose first task will tell."""
    if unmeasured and end - now < 1:
        return f"projected end: not known yet (no task of {unmeasured[0]} has reported progress or ended)"
    when = f"{_clock(end, now)} (in {progress.duration(end - now)})"
    if unmeasured:
        return f"projected end: after {when}, plus {', '.join(unmeasured)} (no task measured yet)"
    return f"projected end: {when}"


def render(run: RunDir, statuses: list[StageStatus], console: Console) -> None:
    for part in renderables(run, statuses):
        console.print(part, soft_wrap=True)


def ended(statuses: list[StageStatus]) -> bool:
    """Complete, or nothing left running or queued (a failure waits for `resume`)."""
    if all(st.complete for st in statuses):
        return True
    return not any(st.running or st.pending for st in statuses)


def watch(run: RunDir, console: Console, every: float = 10.0) -> int:
    """Refresh the status in place every `every` seconds until the run ends (0: complete, 1: not),
    or Ctrl-C (130)."""
    try:
        with Live(console=console, auto_refresh=False, transient=False) as live:
            while True:
                statuses = collect(run)
                live.update(Group(*renderables(run, statuses)), refresh=True)
                if ended(statuses):
                    return 0 if all(st.complete for st in statuses) else 1
                time.sleep(every)
    except KeyboardInterrupt:
        return 130
