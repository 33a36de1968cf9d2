"""The ETA of a stage and the projected end of a run, from what `status` collected.

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
import time
from dataclasses import dataclass

from ..rundir import progress
from ..rundir.planfile import Stage
from .stage_status import StageStatus


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
