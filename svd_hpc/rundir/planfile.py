"""The plan as data: the stages of a run (name, array size, kind, dependencies, resources) and plan.json.

runner.plan builds it from the config; the schedulers, status, the pilot and a round's seeds stage read
it. plan.json names no stage body: a task looks its body up by stage name (runner.plan.BODIES), so a
run directory written by an older svd_hpc resumes with today's bodies.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from .layout import split_stage


@dataclass
class Dependency:
    stage: str
    kind: str  # afterok | aftercorr | afterany | after (the upstream job has started)


@dataclass
class Stage:
    name: str
    array_size: int  # number of tasks; 1 for single jobs
    kind: str  # array | single | distributed
    depends_on: list[Dependency] = field(default_factory=list)
    resources: dict = field(default_factory=dict)  # resolved SLURM resources (see resolve_resources)

    @property
    def is_array(self) -> bool:
        return self.kind == "array"


def round_plan(plan: list[Stage], number: int) -> list[Stage]:
    """Round `number`'s stages under their plain names (round-N/plan.json)."""
    out = []
    for stage in plan:
        if split_stage(stage.name)[0] != number:
            continue
        deps = [
            Dependency(split_stage(d.stage)[1], d.kind) for d in stage.depends_on if split_stage(d.stage)[0] == number
        ]
        out.append(dataclasses.replace(stage, name=split_stage(stage.name)[1], depends_on=deps))
    return out


def downstream(plan: list[Stage], roots: set[str]) -> set[str]:
    """`roots` and every stage that depends on them, transitively."""
    out = set(roots)
    for stage in plan:  # plan order is topological
        if any(d.stage in out for d in stage.depends_on):
            out.add(stage.name)
    return out


def plan_to_json(plan: list[Stage]) -> list[dict]:
    return [dataclasses.asdict(s) for s in plan]


def plan_from_json(data: list[dict]) -> list[Stage]:
    stages = []
    for item in data:
        item = dict(item)
        item.pop("body", None)  # plans written before bodies were looked up by stage name
        item["depends_on"] = [Dependency(**d) for d in item["depends_on"]]
        stages.append(Stage(**item))
    return stages
