"""Config -> plan: the stages of a run, their array sizes, resources and SLURM dependencies.

The plan is data (plan.json in the run directory). Both schedulers read it: SLURM submits every
stage at once with its dependencies; the local scheduler runs the stages here in order.

    eval_base ───────────────────────────────────────────────────────────────┐
    generate[S] ─aftercorr─> verify[S] ─afterok─> merge ─afterok─> train ─afterok─> eval_trained[B×K] ─afterok─> report

With train.select, train ─after─> select_eval[C] ─afterok─> select ─afterok─> eval_trained: task k of
select_eval scores the k-th selection checkpoint as soon as train has saved it.

With `rounds: K` > 1 the chain repeats K times, each stage named "round-R/STAGE" (svd_hpc.stages.rounds),
each round opening with a one-task `seeds` stage after the round before's train (and its eval, when
the stopping rule compares pass@1); the base model is evaluated once, in round 1; one report ends it.
"""

from __future__ import annotations

import functools
import importlib
import os
from collections.abc import Callable

from ..config import RunConfig, train_procs_per_node
from ..config.cluster import ENGINE_STAGES, TRAIN_SIGNAL_SECONDS
from ..eval.tasks import eval_tasks
from ..rundir.layout import split_stage, stage_name
from ..rundir.planfile import Dependency, Stage
from ..stages import rounds

# Where each stage's body lives: a function (run: RunDir, index) -> stats for the done marker
# (None: this process writes none). Looked up by stage name when a task runs, so a run directory
# written by an older svd_hpc resumes with today's bodies. An optional drop_scratch(run, index)
# beside it removes the task's scratch once the marker is written.
BODIES = {
    "eval_base": "svd_hpc.stages.evaluate:run_base",
    "generate": "svd_hpc.stages.generate:run_task",
    "verify": "svd_hpc.stages.verify:run_task",
    "merge": "svd_hpc.stages.merge:run_task",
    "train": "svd_hpc.stages.train:run_task",
    "pilot_train": "svd_hpc.stages.pilot_train:run_task",  # the pilot's timed training steps (forecast/pilot.py)
    "select_eval": "svd_hpc.stages.select:run_eval",  # a selection checkpoint's score (train.select)
    "select": "svd_hpc.stages.select:run_pick",  # the checkpoint chosen on those scores
    "eval_trained": "svd_hpc.stages.evaluate:run_trained",
    "report": "svd_hpc.stages.report:run_task",
    "seeds": "svd_hpc.stages.rounds:run_seeds",  # a round's questions (multi-round runs only)
}
CPU_STAGES = ("merge", "report", "seeds", "select")
PREEMPTIBLE_DEFAULT = ("generate", "verify", "train", "eval_base", "eval_trained", "select_eval")


def resolve_resources(cfg: RunConfig, stage: str) -> dict:
    """Profile defaults, then the stage's own overrides: what its sbatch header asks for."""
    prof, res = cfg.profile, cfg.stage_resources(stage)
    cpu_stage = stage in CPU_STAGES
    gpus = 0 if cpu_stage else (res.gpus if res.gpus is not None else prof.gpus_per_node)
    if stage != "train" and not cpu_stage and res.gpus is None and prof.gpus_per_node:
        # a vLLM task needs exactly its engines' tensor-parallel GPUs
        gpus = cfg.model.tensor_parallel_size * res.engines_per_task
    partition = res.partition or ((prof.cpu_partition or prof.partition) if cpu_stage else prof.partition)
    tasks_per_node = train_procs_per_node(cfg) if stage == "train" else 1
    return {
        "partition": partition,
        "account": prof.account,
        "qos": prof.qos,
        "constraint": None if cpu_stage else prof.constraint,
        "exclude": prof.exclude,
        "gpus_per_node": gpus or None,
        "cpus_per_task": res.cpus or prof.cpus_per_task,
        "mem": res.mem or prof.mem,
        "time": res.time or prof.time,
        "nodes": res.nodes if stage == "train" else 1,
        "ntasks_per_node": tasks_per_node,
        # select_eval: one task at a time by default, so at most one GPU waits for a checkpoint (build_plan)
        "array_parallelism": res.array_parallelism or (1 if stage == "select_eval" else None),
        "preemptible": res.preemptible,
        "requeue_cap": prof.requeue_cap,
        "signal_seconds": signal_seconds(prof.signal_seconds, res.signal_seconds, stage),
        "mail_user": prof.mail_user,
        "mail_type": prof.mail_type,
    }


def signal_seconds(profile: int, stage_value: int | None, stage: str) -> int:
    """The warning's lead time: the stage's own, else the profile's; train's at least TRAIN_SIGNAL_SECONDS."""
    if stage_value is not None:
        return stage_value
    return max(profile, TRAIN_SIGNAL_SECONDS) if stage == "train" else profile


def build_plan(cfg: RunConfig) -> list[Stage]:
    """The stages of `cfg`, in an order where every stage comes after its dependencies."""
    has_eval = bool(cfg.eval.benchmarks)
    stages: list[Stage] = []

    def add(name: str, size: int, kind: str, deps: list[tuple[str, str]]) -> None:
        known = {s.name for s in stages}
        stages.append(
            Stage(
                name=name,
                array_size=size,
                kind=kind,
                depends_on=[Dependency(s, k) for s, k in deps if s in known],
                resources=resolve_resources(cfg, split_stage(name)[1]),
            )
        )

    if cfg.rounds > 1:
        for number in range(1, cfg.rounds + 1):
            _add_round(cfg, add, number)
        ends = [s.name for s in stages if split_stage(s.name)[1] in ("eval_base", "eval_trained", "merge")]
        add("report", 1, "single", [(name, "afterok") for name in ends])
        return stages
    # Submission follows plan order, and schedulers favour older jobs: the chain towards the
    # trained model goes first, base-model eval (off that chain) takes what resources are left.
    add("generate", cfg.seeds.shards, "array", [])
    add("verify", cfg.seeds.shards, "array", [("generate", "aftercorr")])
    add("merge", 1, "single", [("verify", "afterok")])
    selecting = cfg.train.enabled and cfg.train.select.enabled
    if cfg.train.enabled:
        add("train", 1, "distributed", [("merge", "afterok")])
    if selecting:
        # Task k scores selection checkpoint k while training goes on. `after` (train has started),
        # not afterok: each task then waits for its own checkpoint's folder, which train renames into
        # place whole (stages/select.py). Slurm has no dependency on a file, and a job per checkpoint
        # submitted by train itself would need sbatch inside the training job and a second path for
        # the local scheduler; a waiting task holds its GPUs idle, so the array runs one task at a
        # time by default (resolve_resources), and checkpoints come in task order.
        add("select_eval", len(cfg.train.select.steps(cfg.train.steps)), "array", [("train", "after")])
        add("select", 1, "single", [("select_eval", "afterok")])
    if has_eval:
        add("eval_base", len(eval_tasks(cfg, "base")), "array", [])
        if cfg.train.enabled:
            # with selection, the trained model is the chosen checkpoint: known once select has run
            trained_from = "select" if selecting else "train"
            add("eval_trained", len(eval_tasks(cfg, "trained")), "array", [(trained_from, "afterok")])
    ends = ("eval_base", "eval_trained", "merge", "select")
    add("report", 1, "single", [(s.name, "afterok") for s in stages if s.name in ends])
    return stages


def _add_round(cfg: RunConfig, add: Callable, number: int) -> None:
    """Round `number`'s stages. Its seeds stage waits for what the stopping rule reads of the round before."""
    name = functools.partial(stage_name, number)
    before = functools.partial(stage_name, number - 1)
    starts_after = []
    if number > 1:
        starts_after = [(before("train"), "afterok")]
        if cfg.iteration.stop_unless_improved:
            starts_after += [(before("eval_trained"), "afterok")] + ([(before("eval_base"), "afterok")] * (number == 2))
    add(name("seeds"), 1, "single", starts_after)
    add(name("generate"), cfg.seeds.shards, "array", [(name("seeds"), "afterok")])
    add(name("verify"), cfg.seeds.shards, "array", [(name("generate"), "aftercorr")])
    add(name("merge"), 1, "single", [(name("verify"), "afterok")])
    add(name("train"), 1, "distributed", [(name("merge"), "afterok")])
    if cfg.eval.benchmarks:
        if number == 1:
            add(name("eval_base"), len(eval_tasks(cfg, "base")), "array", [])
        add(name("eval_trained"), len(eval_tasks(cfg, "trained")), "array", [(name("train"), "afterok")])


def stage_body(stage: str) -> Callable:
    """The body of `stage`: BODIES, or the one the test bodies (SVD_HPC_TEST_BODIES) put in its place.

    A round's stage ("round-2/generate") runs its plain stage's body inside the round (rounds.round_body).
    """
    number, plain = split_stage(stage)
    body = _test_bodies().get(plain) or import_spec(BODIES[plain])
    return body if number is None else rounds.round_body(body, number, plain)


def uses_engine(stage: str) -> bool:
    """Whether the stage's tasks run a vLLM engine (a round's stage as its plain stage)."""
    return split_stage(stage)[1] in ENGINE_STAGES


def drop_scratch(stage: str, run, index: int) -> None:
    """Remove what task `index` of `stage` kept to resume from, once its done marker is written."""
    number, plain = split_stage(stage)
    if plain in _test_bodies():
        return
    module = importlib.import_module(BODIES[plain].partition(":")[0])
    if hasattr(module, "drop_scratch"):
        module.drop_scratch(run if number is None else run.round_dir(number), plain, index)


# Tests run toy bodies through the real launcher, sbatch and task runner; the jobs inherit the
# environment, so this variable reaches them where a patched registry could not. Its value names a
# dict of stage -> body ("tests.toy_stages:BODIES"); stages it leaves out run their own body.
TEST_BODIES = "SVD_HPC_TEST_BODIES"


def _test_bodies() -> dict[str, Callable]:
    spec = os.environ.get(TEST_BODIES)
    return import_spec(spec) if spec else {}


def import_spec(spec: str):
    """The object a "module:name" spec names (BODIES, SVD_HPC_TEST_BODIES)."""
    module_name, _, name = spec.partition(":")
    return getattr(importlib.import_module(module_name), name)
