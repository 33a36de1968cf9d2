"""The run's targets against what `status` projects: a warning when the end passes the deadline or the
GPU-hours pass the budget (RUN_DIR/targets.json, written by `launch --deadline/--gpu-hours`).

GPU-hours of a stage: each task's seconds times the GPUs it holds (gpus_per_node × nodes, plan.json):
the done tasks' seconds from their markers, a running task's time so far plus what its progress file
says is left (else the stage's typical task less its time so far), and each task still to start one
typical task. A stage with no task measured yet counts the pilot's projection of it (pilot.json) when
there is one, else nothing: the total is then a lower bound, and said so. A marker's seconds are the
body's own, so process start and queue time are not counted.
"""

from __future__ import annotations

import time

from ..rundir import progress, targets
from ..rundir.layout import RunDir
from ..rundir.planfile import Stage
from ..rundir.targets import Targets, iso


def _typical(st, now: float) -> float | None:
    """One task's seconds: the done tasks' mean, else the running tasks' projected mean (as status's ETA)."""
    if st.durations:
        return sum(st.durations) / len(st.durations)
    projected = []
    for index in st.running:
        record = st.progress.get(index)
        left = progress.remaining_s(record, now) if record else None
        if left is not None:
            projected.append(st.running_s.get(index, 0.0) + left)
    return sum(projected) / len(projected) if projected else None


def stage_task_seconds(st, now: float) -> float | None:
    """Seconds of all the stage's tasks, done, running and still to start; None when nothing is measured."""
    typical = _typical(st, now)
    if typical is None and not st.complete:
        return None
    total = sum(st.durations)
    for index in st.running:
        record = st.progress.get(index)
        left = progress.remaining_s(record, now) if record else None
        spent = st.running_s.get(index, 0.0)
        total += spent + (left if left is not None else max(0.0, (typical or 0.0) - spent))
    return total + max(0, st.waiting) * (typical or 0.0)


def gpus_of(stage: Stage) -> int:
    return int(stage.resources.get("gpus_per_node") or 0) * int(stage.resources.get("nodes") or 1)


def gpu_hours(run: RunDir, plan: list[Stage], statuses: list, now: float) -> tuple[float, list[str]]:
    """(projected GPU-hours of the run, stages counted as nothing: neither measured nor in pilot.json)."""
    pilot = (run.load_json(run.pilot_result_path, default=None) or {}).get("stages", {})
    total, unknown = 0.0, []
    for stage, st in zip(plan, statuses):
        gpus = gpus_of(stage)
        if not gpus:
            continue
        seconds = stage_task_seconds(st, now)
        if seconds is not None:
            total += seconds * gpus / 3600
        elif (pilot.get(stage.name) or {}).get("gpu_hours") is not None:
            total += pilot[stage.name]["gpu_hours"]
        else:
            unknown.append(stage.name)
    return total, unknown


def check(
    run: RunDir,
    plan: list[Stage],
    statuses: list,
    state: str,
    end: float | None,
    lower_bound: bool,
    now: float | None = None,
) -> dict | None:
    """The targets, what status projects against them, and one warning per target crossed; None without targets.

    state: complete, running or stopped; end: the projected end (epoch), None when not known.
    """
    goals: Targets = targets.read(run)
    if not goals:
        return None
    now = time.time() if now is None else now
    used, unknown = gpu_hours(run, plan, statuses, now)
    has_gpus = any(gpus_of(stage) for stage in plan)
    warnings = []
    if goals.deadline is not None and state != "complete":
        if now > goals.deadline:
            warnings.append(f"the deadline {iso(goals.deadline)} has passed and the run is not done")
        elif state == "stopped":
            warnings.append(f"the run has stopped; it ends by the deadline {iso(goals.deadline)} only if resumed")
        elif end is not None and end > goals.deadline:
            late = "at least " if lower_bound else ""
            warnings.append(
                f"the projected end {iso(end)} is {late}{progress.duration(end - goals.deadline)} past the deadline "
                f"{iso(goals.deadline)}"
            )
    if goals.gpu_hours is not None and has_gpus and used > goals.gpu_hours:
        late = f" (at least: {', '.join(unknown)} not counted yet)" if unknown else ""
        warnings.append(f"the projected {used:.1f} GPU-hours{late} exceed the budget of {goals.gpu_hours:g}")
    return {
        **goals.to_json(),
        "projected_gpu_hours": used if has_gpus else None,
        "gpu_hours_lower_bound": bool(unknown),
        "not_counted": unknown,
        "warnings": warnings,
    }


def lines(result: dict | None) -> list[str]:
    """What status prints: the targets, then each warning."""
    if result is None:
        return []
    goals = []
    if result["deadline"]:
        goals.append(f"end by {result['deadline']}")
    if result["gpu_hours"] is not None:
        used = result["projected_gpu_hours"]
        spent = "no GPUs held" if used is None else f"{used:.1f} projected"
        goals.append(f"{result['gpu_hours']:g} GPU-hours ({spent})")
    return [f"targets: {', '.join(goals)}"] + [f"warning: {w}" for w in result["warnings"]]
