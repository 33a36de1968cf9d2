"""What a run is doing: done markers plus squeue/sacct, per stage and per task.

Reads only the run directory (plan.json, jobs.json, markers, progress files, logs) and SLURM's
own view, so it works while the run is live, after it ended, and from any login node.

ETA of a stage: each running task finishes its shard at the rate of its own progress file
(units done this attempt over the time since it started; until its first chunk: the mean done
task's duration less its elapsed time); every task not yet started takes the mean duration of
the stage's done tasks (before any is done: the running tasks' projected durations), handed to
the earliest free slot, with as many slots as tasks run now (array_parallelism, or 1 locally,
before any runs). Failed tasks are left out: they run again only on `resume`. The run's end
chains the stages: an afterok stage starts when its dependencies end, an aftercorr one ends at
least one task after them; a stage with nothing measured yet makes the end a lower bound.
"""

from __future__ import annotations

import heapq
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from ..publish import hub
from ..rundir import planfile, progress
from ..rundir.failures import Retry, final_failures, read_retries
from ..rundir.layout import RunDir
from ..rundir.planfile import Stage
from ..slurm import commands as slurm
from . import targets_check

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
            return _seconds(self.elapsed) if self.elapsed else None
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
                _add_running(st, run, index, _seconds(task.elapsed))
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


def _seconds(elapsed: str) -> float:
    """SLURM's elapsed time ('[D-]HH:MM:SS', 'MM:SS') in seconds; 0 when unreadable."""
    days, _, clock = elapsed.rpartition("-")
    try:
        parts = [int(p) for p in clock.split(":")]
        return (int(days) if days else 0) * 86400 + sum(p * 60**k for k, p in enumerate(reversed(parts)))
    except ValueError:
        return 0.0


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


# ----------------------------------------------------------------------------- ETA


@dataclass
class Estimate:
    left: float | None  # seconds until the stage's last task ends, from now (None: nothing to go by)
    typical: float | None  # one task's duration


def schedule(running_left: list[float], waiting: int, each: float, slots: int) -> float:
    """Seconds until the last task ends: running tasks end after `running_left`, then `waiting`
    tasks of `each` seconds each go to the earliest free of `slots` slots."""
    free = sorted(running_left) + [0.0] * max(0, slots - len(running_left))
    heapq.heapify(free)
    for _ in range(waiting):
        heapq.heappush(free, heapq.heappop(free) + each)
    return max(free, default=0.0)


def stage_estimate(st: StageStatus, now: float | None = None) -> Estimate:
    """A stage's time to go (the method is in this module's docstring and the README)."""
    now = time.time() if now is None else now
    typical = sum(st.durations) / len(st.durations) if st.durations else None
    lefts, projected = [], []
    for index in st.running:
        record = st.progress.get(index)
        left = progress.remaining_s(record, now) if record else None
        if left is not None:
            projected.append(st.running_s.get(index, now - record["started"]) + left)
        lefts.append(left)
    if typical is None and projected:
        typical = sum(projected) / len(projected)
    lefts = [
        max(0.0, typical - st.running_s.get(i, 0.0)) if x is None and typical else x for i, x in zip(st.running, lefts)
    ]
    if st.complete:
        return Estimate(0.0, typical)
    if None in lefts or (st.waiting and typical is None):
        return Estimate(None, typical)
    slots = 1 if st.local else (len(st.running) or st.parallelism or 1)
    return Estimate(schedule(lefts, st.waiting, typical or 0.0, slots), typical)


def projected_end(plan: list[Stage], statuses: list[StageStatus], now: float | None = None):
    """(epoch seconds the run ends, stages with nothing measured yet); with unmeasured stages the
    end is a lower bound (they count as taking no time)."""
    now = time.time() if now is None else now
    ends: dict[str, float] = {}
    unmeasured = []
    previous = now
    for stage, st in zip(plan, statuses):
        est = stage_estimate(st, now)
        deps = [ends[d.stage] for d in stage.depends_on if d.stage in ends]
        begin = max([now, *deps])
        if st.local:  # one stage after another
            begin = max(begin, previous)
        if st.complete:
            ends[stage.name] = now
        elif est.left is None:
            unmeasured.append(stage.name)
            ends[stage.name] = begin
        elif any(d.kind == "aftercorr" for d in stage.depends_on) and not st.local:
            # task i follows its dependency's task i: the last one ends a task after the dependency
            ends[stage.name] = max(now + est.left, begin + (est.typical or 0.0))
        else:
            ends[stage.name] = begin + est.left
        previous = ends[stage.name]
    return max(ends.values(), default=now), unmeasured


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


# ----------------------------------------------------------------------------- JSON (`status --json`)

STATUS_SCHEMA = "svd_hpc.status/1"  # docs/schema/status.v1.json; a change that breaks a reader bumps the number


def _iso(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(epoch))


def _retry_json(retry: Retry) -> dict:
    return {
        "index": retry.index,
        "life": retry.life,
        "cause": retry.cause,
        "node": retry.node,
        "exit": retry.exit,
        "excluded": retry.excluded or None,
    }


def _stage_json(st: StageStatus, now: float) -> dict:
    est = stage_estimate(st, now)
    running = []
    for index in st.running:
        record = st.progress.get(index)
        running.append(
            {
                "index": index,
                "running_s": st.running_s.get(index),
                "progress": None
                if record is None
                else {
                    "done": record["done"],
                    "total": record["total"],
                    "unit": record["unit"],
                    "fraction": progress.fraction(record),
                    "tokens_per_s": progress.tokens_per_s(record),
                    "eta_s": progress.remaining_s(record, now),
                },
            }
        )
    return {
        "name": st.name,
        "state": st.state,
        "tasks": st.size,
        "counts": {
            "done": len(st.done),
            "running": len(st.running),
            "pending": len(st.pending),
            "failed": len(st.failed),
            "idle": st.size - len(st.done) - len(st.running) - len(st.pending) - len(st.failed),
        },
        "task_states": [{"index": i, "state": st.task_state(i)} for i in range(st.size)],
        "job_ids": [] if st.local else list(st.job_ids),
        "elapsed_s": st.elapsed_s,
        "eta_s": 0.0 if st.complete else est.left,
        "typical_task_s": est.typical,
        "running": running,
        "failed": [
            {
                "index": task.index,
                "job_id": task.job_id,
                "state": task.state,
                "log": str(task.log) if task.log else None,
                "not_retried": st.not_retried.get(task.index),
            }
            for task in st.failed
        ],
        "skipped_items": st.skipped,
        "skip_reasons": dict(st.skip_reasons),
        "retries": [_retry_json(r) for r in st.retries],
    }


def status_json(run: RunDir, statuses: list[StageStatus], now: float | None = None) -> dict:
    """What `status` shows, for programs: the schema of docs/schema/status.v1.json."""
    now = time.time() if now is None else now
    if all(st.complete for st in statuses):
        state, end = "complete", None
    elif ended(statuses):
        state, end = "stopped", None  # nothing runs or waits: the rest starts only on resume
    else:
        state = "running"
        epoch, unmeasured = projected_end(load_plan(run), statuses, now)
        known = not (unmeasured and epoch - now < 1)
        end = {
            "known": known,
            "epoch": epoch if known else None,
            "at": _iso(epoch) if known else None,
            "in_s": epoch - now if known else None,
            "lower_bound": bool(unmeasured),
            "unmeasured": unmeasured,
        }
    return {
        "schema": STATUS_SCHEMA,
        "run_dir": str(run.root),
        "generated_at": _iso(now),
        "scheduler": "local" if any(st.local for st in statuses) else "slurm",
        "state": state,
        "projected_end": end,
        "stages": [_stage_json(st, now) for st in statuses],
        "hub": hub.status_lines(run),
        "targets": targets(run, statuses, now),
    }
