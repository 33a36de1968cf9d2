"""Settings that meet a deadline and a GPU-hour budget, searched with the pilot's own projection.

Run as: python -m svd_hpc.launch --config configs/X.yaml --pilot [N] --deadline 07:00 --gpu-hours 40

The search tries seeds.shards (powers of two up to the question count, and the configured value),
array_parallelism of generate and verify (powers of two up to the shard count, and the configured
value), resources.train.nodes (1, 2, 4, 8, 16 and the configured value, within what the partition
holds and what divides train.global_batch) and train.steps (the configured value, then 3/4, 1/2 and
1/4 of it). A shard count whose tasks would pass TIME_MARGIN of their time limit is not tried.
Each setting is projected as projection.project does (project_stage, schedule, project_train); the
end adds the estimated queue wait of the vLLM arrays and of the train job (slurm/queue_wait.py).

Among the settings that meet every target given it keeps train.steps if it can (fewer steps is a
weaker model, not only a cheaper run), then changes as few settings as it can, then spends the
fewest GPU-hours (without GPUs: task-hours). When none meets them all it says which target it cannot meet and why, and
proposes the settings that come closest: within the budget the earliest end, else the fastest.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import math
import time
from collections.abc import Callable

from rich.console import Console
from rich.table import Table

from ..config import RunConfig, train_procs_per_node
from ..inputs.seeds import shard_bounds
from ..rundir.progress import duration
from ..rundir.targets import Targets, iso
from ..runner.plan import resolve_resources
from ..slurm.queue_wait import QueueWait
from . import projection

MAX_SHARDS = 4096
TRAIN_NODES = (1, 2, 4, 8, 16)
STEP_FRACTIONS = (1.0, 0.75, 0.5, 0.25)
KEYS = (
    "seeds.shards",
    "resources.generate.array_parallelism",
    "resources.verify.array_parallelism",
    "resources.train.nodes",
    "train.steps",
)

# stage ("generate" for the vLLM arrays, or "train") and node count -> the estimated queue wait
WaitFor = Callable[[str, int], QueueWait]


@dataclasses.dataclass(frozen=True)
class Option:
    """One setting of the search and its projection."""

    shards: int
    parallelism: tuple[int | None, int | None]  # generate, verify (None: no cap)
    nodes: int | None  # None: train not projected
    steps: int | None
    wall_s: float  # from launch to the end of the last projected stage, queue wait included
    gpu_hours: float
    task_hours: float  # what it costs without GPUs: every task's hours, a node of train counted once
    parts: dict[str, float]  # seconds per part of the wall: queue, generate+verify, merge, train

    def settings(self) -> dict:
        values = (self.shards, *self.parallelism, self.nodes, self.steps)
        return {k: v for k, v in zip(KEYS, values) if v is not None or "parallelism" in k}


def _with(cfg: RunConfig, shards: int, parallelism: tuple[int | None, int | None]) -> RunConfig:
    out = copy.deepcopy(cfg)
    out.seeds.shards = shards
    for stage, cap in zip(projection.VLLM_STAGES, parallelism):
        out.resources[stage] = dataclasses.replace(out.stage_resources(stage), array_parallelism=cap)
    return out


def _train_with(cfg: RunConfig, nodes: int, steps: int) -> RunConfig:
    out = copy.deepcopy(cfg)
    out.resources["train"] = dataclasses.replace(out.stage_resources("train"), nodes=nodes)
    out.train.steps = steps
    return out


def _powers(limit: int) -> list[int]:
    return [2**k for k in range(int(math.log2(max(limit, 1))) + 1)]


def shard_options(cfg: RunConfig, questions: int, measured: dict) -> list[int]:
    """Shard counts to try: the configured one, and powers of two whose tasks stay under TIME_MARGIN of their limit."""
    out = {cfg.seeds.shards}
    for shards in _powers(min(questions, MAX_SHARDS)):
        largest = max(b - a for a, b in shard_bounds(questions, shards))
        if all(
            m["fixed_s"] + m["work_s"] / m["questions"] * largest
            <= projection.TIME_MARGIN * projection.slurm_seconds(resolve_resources(cfg, stage)["time"])
            for stage, m in ((s, measured["stages"][s]) for s in projection.VLLM_STAGES)
        ):
            out.add(shards)
    return sorted(out)


def parallelism_options(cfg: RunConfig, shards: int) -> list[tuple[int | None, int | None]]:
    configured = tuple(resolve_resources(cfg, s)["array_parallelism"] for s in projection.VLLM_STAGES)
    if cfg.is_local:
        return [configured]  # the local scheduler runs one task at a time whatever the cap
    return [configured] + [(p, p) for p in _powers(shards) if (p, p) != configured]


def train_options(cfg: RunConfig, max_nodes: int | None) -> list[tuple[int, int]]:
    """(nodes, steps) to try; nodes whose world size does not divide train.global_batch are left out."""
    nodes0, steps0 = cfg.stage_resources("train").nodes, cfg.train.steps
    nodes = {nodes0} if cfg.is_local else {nodes0, *(n for n in TRAIN_NODES if n <= (max_nodes or TRAIN_NODES[-1]))}
    per_node, t = train_procs_per_node(cfg), cfg.train
    nodes = {n for n in nodes if n == nodes0 or t.global_batch % (n * per_node * t.micro_batch) == 0}
    steps = sorted({max(1, math.ceil(steps0 * f)) for f in STEP_FRACTIONS}, reverse=True)
    return [(n, k) for n in sorted(nodes) for k in steps]


def _no_wait(stage: str, nodes: int) -> QueueWait:
    return QueueWait(None, "queue wait not counted")


def options(
    cfg: RunConfig,
    questions: int,
    measured: dict,
    cluster_slots: int | None = None,
    wait_for: WaitFor | None = None,
    max_train_nodes: int | None = None,
) -> list[Option]:
    """Every setting of the search, projected."""
    wait_for = wait_for or _no_wait
    slots = 1 if cfg.is_local else cluster_slots
    arrays = []  # (shards, parallelism, generate+verify wall, GPU-hours)
    for shards in shard_options(cfg, questions, measured):
        sizes = [b - a for a, b in shard_bounds(questions, shards)]
        for caps in parallelism_options(cfg, shards):
            c = _with(cfg, shards, caps)
            g, v = (projection.project_stage(c, s, measured["stages"][s], sizes, slots) for s in projection.VLLM_STAGES)
            wall = projection.schedule(g["task_s"], v["task_s"], g["parallel"], v["parallel"], slots)
            gpu = (g["gpu_hours"] or 0.0) + (v["gpu_hours"] or 0.0)
            arrays.append((shards, caps, wall, gpu, g["task_hours"] + v["task_hours"]))
    trains: list[tuple[int | None, int | None, float, float, float]] = [(None, None, 0.0, 0.0, 0.0)]
    if cfg.train.enabled and "train" in measured["stages"]:
        trains = []
        for nodes, steps in train_options(cfg, max_train_nodes):
            p = projection.project_train(_train_with(cfg, nodes, steps), measured["stages"]["train"])
            trains.append((nodes, steps, p["wall_s"], p["gpu_hours"] or 0.0, p["task_hours"] * nodes))
    merge_s = measured["stages"].get("merge", {}).get("wall_s", 0.0)
    vllm_wait = wait_for("generate", 1).seconds or 0.0
    out = []
    for (shards, caps, wall, gpu, hours), (nodes, steps, train_s, train_gpu, train_hours) in itertools.product(
        arrays, trains
    ):
        train_wait = (wait_for("train", nodes).seconds or 0.0) if nodes else 0.0
        parts = {"queue": vllm_wait + train_wait, "generate+verify": wall, "merge": merge_s, "train": train_s}
        out.append(Option(shards, caps, nodes, steps, sum(parts.values()), gpu + train_gpu, hours + train_hours, parts))
    return out


def _changes(cfg: RunConfig, option: Option) -> int:
    configured = _configured(cfg, option.nodes is not None)
    return sum(configured.get(k) != v for k, v in option.settings().items())


def _configured(cfg: RunConfig, train: bool) -> dict:
    caps = tuple(resolve_resources(cfg, s)["array_parallelism"] for s in projection.VLLM_STAGES)
    out = dict(zip(KEYS[:3], (cfg.seeds.shards, *caps)))
    if train:
        out |= {KEYS[3]: cfg.stage_resources("train").nodes, KEYS[4]: cfg.train.steps}
    return out


def _describe(option: Option) -> str:
    return ", ".join(f"{k}={'all' if v is None else v}" for k, v in option.settings().items())


def _longest_part(option: Option) -> str:
    name, seconds = max(option.parts.items(), key=lambda kv: kv[1])
    return f"{name} ({duration(seconds)})"


def propose(
    cfg: RunConfig,
    questions: int,
    measured: dict,
    targets: Targets,
    cluster_slots: int | None = None,
    wait_for: WaitFor | None = None,
    max_train_nodes: int | None = None,
    now: float | None = None,
) -> dict:
    """The settings to launch with for `targets`, their projection, and each target it cannot meet and why."""
    now = time.time() if now is None else now
    found = options(cfg, questions, measured, cluster_slots, wait_for, max_train_nodes)
    has_gpus = any(projection.gpus_per_task(cfg, s) for s in (*projection.VLLM_STAGES, "train"))
    budget = targets.gpu_hours if has_gpus else None

    def in_time(o: Option) -> bool:
        return targets.deadline is None or now + o.wall_s <= targets.deadline

    def in_budget(o: Option) -> bool:
        return budget is None or o.gpu_hours <= budget + 1e-9

    def preference(o: Option):
        return (-(o.steps or 0), _changes(cfg, o), o.gpu_hours, o.task_hours, o.wall_s)

    cannot = []
    if targets.gpu_hours is not None and not has_gpus:
        why = "cluster local" if cfg.is_local else "the profile sets no gpus_per_node"
        cannot.append(f"the GPU-hour budget: the run's tasks hold no GPUs ({why}), so there are no GPU-hours to budget")
    meets_all = [o for o in found if in_time(o) and in_budget(o)]
    if meets_all:
        chosen = min(meets_all, key=preference)
    else:
        fastest, cheapest = min(found, key=lambda o: o.wall_s), min(found, key=lambda o: o.gpu_hours)
        if targets.deadline is not None and not in_time(fastest):
            late = now + fastest.wall_s - targets.deadline
            cannot.append(
                f"the deadline {iso(targets.deadline)}: the fastest settings tried ({_describe(fastest)}) end at "
                f"{iso(now + fastest.wall_s)}, {duration(late)} late; their longest part is "
                f"{_longest_part(fastest)}"
            )
        if budget is not None and not in_budget(cheapest):
            cannot.append(
                f"the budget of {budget:g} GPU-hours: the cheapest settings tried ({_describe(cheapest)}) spend "
                f"{cheapest.gpu_hours:.1f}"
            )
        if not cannot:  # each target alone can be met, not both at once
            in_time_cheapest = min((o for o in found if in_time(o)), key=lambda o: o.gpu_hours)
            cannot.append(
                f"the deadline and the budget together: ending by {iso(targets.deadline)} takes at least "
                f"{in_time_cheapest.gpu_hours:.1f} GPU-hours, over the budget of {budget:g}; "
                "the proposal keeps to the budget and ends late"
            )
        within = [o for o in found if in_budget(o)]
        chosen = min(within, key=lambda o: (o.wall_s, preference(o))) if within else fastest
    train = chosen.nodes is not None
    configured = _configured(cfg, train)
    waits = {"generate": (wait_for or _no_wait)("generate", 1)}
    if train:
        waits["train"] = (wait_for or _no_wait)("train", chosen.nodes)
    settings = chosen.settings()
    return {
        "targets": targets.to_json(),
        "settings": settings,
        "configured": configured,
        "overrides": [f"{k}={v}" for k, v in settings.items() if configured.get(k) != v and v is not None],
        "end_at": iso(now + chosen.wall_s),
        "end_epoch": now + chosen.wall_s,
        "gpu_hours": chosen.gpu_hours if has_gpus else None,
        "parts_s": chosen.parts,
        "meets": {
            "deadline": None if targets.deadline is None else in_time(chosen),
            "gpu_hours": None if budget is None else in_budget(chosen),
        },
        "cannot": cannot,
        "queue_wait": {stage: w.to_json() for stage, w in waits.items()},
        "covers": f"generate, verify, merge{' and train' if train else ''}, queue wait included; eval is not projected"
        + (
            ""
            if train
            else "; nor is train (train.enabled is false or the pilot timed no steps), so its nodes and steps are not "
            "proposed"
        ),
        "tried": len(found),
    }


def render(proposal: dict, console: Console) -> None:
    """The proposal: configured against proposed settings, its end and GPU-hours, and what it cannot meet."""
    t = proposal["targets"]
    goal = " and ".join(
        x
        for x in (t["deadline"] and f"end by {t['deadline']}", t["gpu_hours"] and f"{t['gpu_hours']:g} GPU-hours")
        if x
    )
    table = Table(title=f"proposal to {goal} ({proposal['tried']} settings projected)")
    for column in ("setting", "configured", "proposed"):
        table.add_column(column)
    for key, value in proposal["settings"].items():
        before = proposal["configured"].get(key)
        mark = "" if before == value else " ←"
        table.add_row(key, "all" if before is None else str(before), ("all" if value is None else str(value)) + mark)
    console.print(table)
    gpu = "—" if proposal["gpu_hours"] is None else f"{proposal['gpu_hours']:.1f}"
    console.print(f"proposed: ends {proposal['end_at']}, {gpu} GPU-hours ({proposal['covers']}).")
    for stage, wait in proposal["queue_wait"].items():
        console.print(f"{stage}: {wait['how']}.", highlight=False)
    if proposal["overrides"]:
        console.print(f"launch with: {' '.join(proposal['overrides'])}", highlight=False)
    for line in proposal["cannot"]:
        console.print(f"[yellow]cannot meet[/yellow] {line}.", highlight=False)
