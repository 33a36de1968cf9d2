"""The pilot: run generate, verify and merge on a random sample of the seeds, time a few training
steps, then project the full run.

Run as: python -m svd_hpc.launch --config configs/X.yaml --pilot [N] [--pilot-seed S] [--pilot-train-steps K]

The pilot is a small run directory of its own, RUN_DIR/pilot/, with the run's config except one
seed shard of N questions drawn at random (random.Random(S), recorded in pilot/questions.json),
no eval, and instead of train a `pilot_train` task: K real optimiser steps of the configured model
and train setup on the pilot's SFT set at train.max_seq_len (stages/pilot_train.py), on one node
with the configured processes per node (a multi-node allocation would queue like the run itself;
projection.py scales the step to the configured nodes). Its tasks are the real stage bodies run
the way the full run runs them: here by the local scheduler (torchrun for pilot_train), or as
SLURM jobs with the config's cluster profile and resources (srun).
Measurements and the projection (projection.py) go to RUN_DIR/pilot.json and the terminal.

A later launch of the same config keeps the pilot's candidates: `reuse` puts them into the full
run's generate checkpoints (by question id, whatever the shard count), so those questions are not
generated twice. The pilot sampled each question with the seed the full run would use (it
depends on model.seed and the question id only), so they are the candidates the full run would
have drawn. Its judge replies are not reused: verify's checkpoint covers a whole shard's items.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import random
import re
import shutil
import time
from pathlib import Path

import pyarrow.parquet as pq
from rich.console import Console

from .. import __version__
from .. import config as config_mod
from ..config import ConfigError, RunConfig
from ..inputs import seeds, staging
from ..rundir.atomic import atomic_path, atomic_write_json
from ..rundir.chunks import Checkpoint
from ..rundir.layout import RunDir
from ..rundir.planfile import Dependency, Stage, plan_to_json
from ..rundir.targets import Targets
from ..runner import catalog, local
from ..runner.plan import build_plan, resolve_resources
from ..slurm import commands as slurm
from ..slurm import queue_wait
from ..slurm.queue_wait import QueueWait
from ..stages import generate
from . import memory_check, projection, proposal

log = logging.getLogger("svd_hpc")

DEFAULT_QUESTIONS = 64
DEFAULT_TRAIN_STEPS = 4  # one warm-up step, then three timed ones
STAGES = ("generate", "verify", "merge")
TRAIN_STAGE = "pilot_train"
ENGINE_READY = re.compile(r"engine ready: .* in ([0-9.]+)s")  # sampling/engine.py's line once vLLM has loaded


def pilot_config(cfg: RunConfig, train_steps: int = 0) -> RunConfig:
    """The run's config for the pilot: one seed shard, no train stage, no eval; model and sampling unchanged.

    train.steps becomes the pilot's timed steps (what pilot_train runs), every other train key stays.
    """
    pcfg = config_mod.from_dict(config_mod.to_dict(cfg))
    pcfg.rounds = 1  # a run of rounds: the pilot measures round 1, with the base model
    pcfg.seeds.shards = 1
    pcfg.train.enabled = False
    pcfg.train.steps = train_steps or pcfg.train.steps
    pcfg.eval.benchmarks = []
    return pcfg


def timed_steps(cfg: RunConfig, train_steps: int) -> int:
    """The training steps the pilot times: none when the config trains nothing."""
    return train_steps if cfg.train.enabled else 0


def train_stage(cfg: RunConfig) -> Stage:
    """The pilot's timed steps as a one-node distributed task with train's resources."""
    return Stage(
        TRAIN_STAGE, 1, "distributed", [Dependency("merge", "afterok")], resolve_resources(cfg, "train") | {"nodes": 1}
    )


def check_train_steps(train_steps: int) -> None:
    if train_steps == 1 or train_steps < 0:
        raise ConfigError(
            f"--pilot-train-steps {train_steps}: the first step warms up and is not timed; "
            "use 0 (no training steps) or at least 2."
        )


def check(cfg: RunConfig, questions: int, available: int) -> None:
    """Refuse a pilot that cannot measure what it is for, in one sentence (ConfigError: exit 2)."""
    if not cfg.verify.stages:
        raise ConfigError(
            "verify.stages is empty, so the pilot has no cascade to measure; list at least one of "
            f"{', '.join(config_mod.VERIFY_STAGES)} in verify.stages."
        )
    if questions < 1:
        raise ConfigError(f"--pilot {questions}: a pilot needs at least 1 question.")
    if questions > available:
        raise ConfigError(
            f"--pilot {questions} asks for more questions than the {available} seeds in {seeds.describe(cfg.seeds)} "
            f"(after seeds.limit and duplicates); use --pilot {available} or fewer."
        )


def sample(table, questions: int, seed: int):
    """`questions` rows drawn at random (reproducible from `seed`), in seed-file order."""
    rows = sorted(random.Random(seed).sample(range(table.num_rows), questions))
    return table.take(rows)


def generate_settings(cfg: RunConfig) -> dict:
    """What decides a question's candidates (as generate.fingerprint): the model and sampling settings."""
    out = {"model": dataclasses.asdict(cfg.model), "generate": dataclasses.asdict(cfg.generate)}
    out["generate"].pop("chunk_size")
    return out


def prepare(
    cfg: RunConfig, run: RunDir, questions: int, seed: int, train_steps: int = 0
) -> tuple[RunConfig, RunDir, int]:
    """Check the input, then write the pilot's run directory; returns its config, folder and the seed count."""
    check_train_steps(train_steps)
    staged = staging.stage(run.pilot_dir, catalog.hub_inputs(cfg))  # hub inputs pinned as the full launch pins them
    memory_check.check(cfg)
    table = seeds.load(cfg.seeds)
    check(cfg, questions, table.num_rows)
    train_steps = timed_steps(cfg, train_steps)
    pcfg, prun = pilot_config(cfg, train_steps), run.pilot_dir
    drawn = {"questions": questions, "seed": seed, "of": table.num_rows, "train_steps": train_steps}
    if prun.exists():
        same = config_mod.to_dict(prun.load_config()) == config_mod.to_dict(pcfg)
        before = prun.load_json(prun.root / "questions.json", default={}) or {}
        if not same or {k: before.get(k) for k in drawn} != drawn:
            log.info(f"pilot: {prun.root} holds a pilot of other settings; starting it again")
            shutil.rmtree(prun.root)
    if not prun.exists():
        prun.root.mkdir(parents=True, exist_ok=True)
        picked = sample(table, questions, seed)
        with atomic_path(prun.shard_path("seeds", 0)) as tmp:
            pq.write_table(picked, tmp)
        atomic_write_json(prun.root / "questions.json", {**drawn, "question_ids": picked["question_id"].to_pylist()})
        staged.save(prun)
        plan = [s for s in build_plan(pcfg) if s.name in STAGES] + ([train_stage(cfg)] if train_steps else [])
        atomic_write_json(prun.plan_path, plan_to_json(plan))
        prun.write_config(pcfg, {"version": __version__, "pilot_of": str(run.root)})
    return pcfg, prun, table.num_rows


def execute(pcfg: RunConfig, prun: RunDir, console: Console) -> dict[str, float]:
    """Run the pilot's unfinished tasks (here or on SLURM); returns wall seconds per stage, kept in walls.json."""
    from ..rundir.planfile import plan_from_json

    plan = plan_from_json(prun.load_json(prun.plan_path))
    walls_path = prun.root / "walls.json"
    walls = prun.load_json(walls_path, default={}) or {}
    todo = {s.name: prun.incomplete(s.name, s.array_size) for s in plan}
    todo = {name: idx for name, idx in todo.items() if idx}
    if not todo:
        return walls
    if pcfg.is_local:
        measured = local.run_plan(pcfg, prun, [s for s in plan if s.name in todo], console)
    else:
        measured = _run_on_slurm(pcfg, prun, plan, todo)
    walls.update({name: seconds for name, seconds in measured.items() if name in todo})
    atomic_write_json(walls_path, walls)
    return walls


def _run_on_slurm(pcfg: RunConfig, prun: RunDir, plan, todo: dict[str, list[int]]) -> dict[str, float]:
    """Submit the pilot's tasks with the run's profile, wait, and read each task's elapsed time."""
    if not slurm.available():
        raise ConfigError(
            f"cluster profile '{pcfg.cluster}' needs SLURM, but sbatch is not on PATH; use cluster=local."
        )
    subs = slurm.plan_submissions(pcfg, prun, plan, todo, slurm.max_array_size(pcfg.profile))
    by_name = {s.name: s for s in plan}
    for sub in {s.stage: s for s in subs}.values():  # a refused script stops the pilot before any submission
        slurm.test_only(slurm.render(pcfg, prun, by_name[sub.stage], sub, Path.cwd()), sub.stage)
    subs = slurm.submit(pcfg, prun, plan, subs, Path.cwd())
    atomic_write_json(
        prun.jobs_path,
        {"submissions": [{"stage": s.stage, "job_id": s.job_id, "array": by_name[s.stage].is_array,
                          "part": s.part, "offset": s.offset, "indices": s.indices, "dependency": s.dependency}
                         for s in subs]},
    )  # fmt: skip
    ids = [s.job_id for s in subs]
    states = slurm.wait(ids, timeout_s=float(os.environ.get("SVD_WAIT_TIMEOUT", "86400")), poll_s=5)
    walls = {}
    for sub in subs:
        elapsed = [
            projection.slurm_seconds(st.elapsed)
            for key, st in states.items()
            if key.split("_")[0] == sub.job_id and st.elapsed
        ]
        walls[sub.stage] = walls.get(sub.stage, 0.0) + sum(elapsed)
    return walls


def cluster_slots(cfg: RunConfig) -> int | None:
    """How many generate or verify tasks the partition holds at once (sinfo); None here or when unknown.

    On a small partition the run's own tasks wait for each other, however high array_parallelism is.
    """
    if cfg.is_local or not slurm.available():
        return None
    res = [resolve_resources(cfg, stage) for stage in projection.VLLM_STAGES]
    if len({r["partition"] for r in res}) > 1:
        return None  # each array on a partition of its own: they do not share slots
    mems = [r["mem"] for r in res if r["mem"]]
    return slurm.partition_slots(
        res[0]["partition"],
        max(r["cpus_per_task"] or 1 for r in res),
        max(mems, key=slurm.memory_mb) if mems else None,
        max(r["gpus_per_node"] or 0 for r in res),
    )


def queue_waits(cfg: RunConfig) -> proposal.WaitFor:
    """The estimated queue wait of a job of each stage's partition and size, from sacct (one read per partition)."""
    if cfg.is_local:
        return lambda stage, nodes: QueueWait(None, "no queue wait: the local scheduler starts each task itself")
    histories: dict[str | None, queue_wait.History] = {}

    def wait_for(stage: str, nodes: int) -> QueueWait:
        res = resolve_resources(cfg, stage)
        if res["partition"] not in histories:
            histories[res["partition"]] = queue_wait.History(res["partition"])
        return histories[res["partition"]].wait(nodes, res["gpus_per_node"] or 0)

    return wait_for


def train_nodes_available(cfg: RunConfig) -> int | None:
    """How many train nodes the partition holds at once (sinfo); None here or when unknown."""
    if cfg.is_local or not slurm.available():
        return None
    res = resolve_resources(cfg, "train")
    cpus = (res["cpus_per_task"] or 1) * res["ntasks_per_node"]  # a node's share: all its processes
    return slurm.partition_nodes(res["partition"], cpus, res["mem"], res["gpus_per_node"] or 0) or None


def engine_seconds(prun: RunDir, stage: str) -> float:
    """The engine's load time in the stage's task log (0 when the task loaded none)."""
    times = []
    for path in sorted(prun.log_dir(stage).glob("*")):
        times += [float(m) for m in ENGINE_READY.findall(path.read_text(errors="replace"))]
    return times[-1] if times else 0.0


def measure(prun: RunDir, walls: dict[str, float]) -> dict:
    """What the pilot's records say: per stage questions, samples, tokens, wall, fixed and work seconds."""
    questions = pq.read_metadata(prun.shard_path("seeds", 0)).num_rows
    gen = pq.read_table(prun.shard_path("generate", 0), columns=["completion_tokens"])
    ver = pq.read_table(prun.shard_path("verify", 0), columns=["judge_completion_tokens", "judge_samples"])
    counts = {
        "generate": (gen.num_rows, int(sum(gen["completion_tokens"].to_pylist()))),
        "verify": (int(sum(ver["judge_samples"].to_pylist())), int(sum(ver["judge_completion_tokens"].to_pylist()))),
    }
    stages = {}
    for name, (samples, tokens) in counts.items():
        body = float((prun.load_json(prun.done_marker(name, 0), default={}) or {}).get("seconds", 0.0))
        wall = float(walls.get(name, body))
        work = max(0.0, body - engine_seconds(prun, name))
        stages[name] = {
            "questions": questions,
            "samples": samples,
            "tokens": tokens,
            "wall_s": wall,
            "work_s": work,
            "fixed_s": max(0.0, wall - work),  # process start, imports and engine load
        }
    stages["merge"] = {"wall_s": float(walls.get("merge", 0.0))}
    timed = prun.load_json(prun.done_marker(TRAIN_STAGE, 0), default=None)
    if timed:
        stages["train"] = measure_train(timed, float(walls.get(TRAIN_STAGE, 0.0)))
    stats = prun.load_json(prun.stage_dir("merge") / "stats.json", default={}) or {}
    return {"stages": stages, "funnel": stats.get("overall", {})}


def measure_train(timed: dict, wall: float) -> dict:
    """The timed steps' figures: seconds and tokens per step after the warm-up step, and the rest of the task."""
    seconds, tokens = timed["step_seconds"][1:], timed["step_tokens"][1:]
    step_s = sum(seconds) / len(seconds)
    return {
        "steps": len(timed["step_seconds"]),
        "timed_steps": len(seconds),
        "world_size": timed["world_size"],
        "device": timed["device"],
        "step_s": step_s,
        "tokens_per_step": sum(tokens) / len(tokens),
        "wall_s": wall,
        "fixed_s": max(0.0, wall - len(timed["step_seconds"]) * step_s),  # start, model load, warm-up's excess
    }


def run(
    cfg: RunConfig,
    run: RunDir,
    questions: int,
    seed: int = 0,
    console: Console | None = None,
    train_steps: int = DEFAULT_TRAIN_STEPS,
    targets: Targets | None = None,
) -> dict:
    """Prepare, run and measure the pilot; write RUN_DIR/pilot.json and print its tables.

    With targets (a deadline, a GPU-hour budget) it also proposes the settings that meet them (proposal.py).
    """
    console = console or Console()
    started = time.time()
    pcfg, prun, available = prepare(cfg, run, questions, seed, train_steps)
    console.print(f"pilot: {questions} of {available} seed questions (seed {seed}) in {prun.root}")
    measured = measure(prun, execute(pcfg, prun, console))
    result = projection.project(cfg, available, measured, started, cluster_slots(cfg))
    result["pilot"] = {"questions": questions, "seed": seed, "run_dir": str(prun.root), "measured": measured["stages"]}
    wait_for = queue_waits(cfg)
    if targets:
        result["proposal"] = proposal.propose(
            cfg, available, measured, targets, result["cluster_slots"], wait_for, train_nodes_available(cfg), started
        )
    else:
        result["queue_wait"] = {"generate": wait_for("generate", 1).to_json()}
    atomic_write_json(run.pilot_result_path, result)
    projection.render(result, console)
    if targets:
        proposal.render(result["proposal"], console)
    elif not cfg.is_local:  # the local scheduler does not queue
        console.print(f"not in the finish times above: {result['queue_wait']['generate']['how']}.", highlight=False)
    console.print(f"pilot.json: {run.pilot_result_path}")
    return result


def reuse(run: RunDir) -> int:
    """Put the pilot's candidates into the full run's generate checkpoints; returns the questions added.

    Only for shards not yet done, and only when the model and sampling settings equal the pilot's;
    question ids place each candidate set in its shard whatever seeds.shards is now.
    """
    prun = run.pilot_dir
    shard = prun.shard_path("generate", 0)
    if not (prun.is_done("generate", 0) and shard.is_file() and prun.exists()):
        return 0
    cfg = run.load_config()
    if cfg.rounds > 1:  # round 1's questions are picked by its seeds task, after the launch
        log.info(f"pilot: a run of {cfg.rounds} rounds generates afresh; {prun.root}'s candidates are not reused")
        return 0
    if generate_settings(prun.load_config()) != generate_settings(cfg):
        log.info(f"pilot: {prun.root} sampled with other model or generate settings; its candidates are not reused")
        return 0
    by_question: dict[str, list[dict]] = {}
    for row in pq.read_table(shard).to_pylist():
        by_question.setdefault(row["question_id"], []).append(row)
    added = 0
    for index in range(cfg.seeds.shards):
        if run.is_done("generate", index):
            continue
        shard_seeds = generate.read_seed_shard(run, index)
        ids = [q for q in shard_seeds["question_id"].to_pylist() if q in by_question]
        if not ids:
            continue
        saved = Checkpoint(
            generate.chunk_dir(run, index), cfg.generate.chunk_size, generate.fingerprint(cfg, shard_seeds)
        )
        for qid in ids:
            if qid not in saved:
                saved.add(qid, by_question[qid])
                added += 1
        saved.flush()
    if added:
        log.info(f"pilot: {added} questions' candidates reused from {prun.root}")
        reused = run.load_json(prun.root / "reused.json", default={}) or {}
        atomic_write_json(prun.root / "reused.json", {"questions": reused.get("questions", 0) + added})
    return added
