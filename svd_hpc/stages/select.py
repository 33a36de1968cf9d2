"""Checkpoint selection (train.select): stages select_eval and select.

Run as: python -m svd_hpc.task select_eval --run-dir runs/demo --index K   (then: select)

select_eval task K scores the K-th selection checkpoint (train.select.steps: every `every` steps, and
the last) on the selection set, while training goes on: it starts once train has started (Slurm
`after`), waits for the checkpoint's folder (train renames it into place whole, so the folder is its
completion marker), then answers every selection benchmark on each seed with one engine. Output:
select_eval/step-NNNNNN/<benchmark>/seed-K.parquet (EVAL records) and a JSON summary beside each.

select reads those summaries, picks the checkpoint with the best mean pass@1 (eval/selection.py: ties
go to the later step), writes select/choice.json (the curve and the choice) and pushes the chosen model
when hub.model is set. eval_trained and the hub then use the chosen checkpoint (rundir/layout.py:
trained_model_dir), and the report shows the curve.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path

from ..config import RunConfig
from ..eval.selection import mean_pass1, pick, select_tasks
from ..eval.tasks import EvalTask
from ..publish import hub
from ..rundir.atomic import atomic_write_json
from ..rundir.layout import RunDir, choice_path, selection_checkpoint
from ..sampling.engine import Engine
from ..sampling.engines import open_engines
from ..slurm import commands
from .evaluate import evaluate, progress_dir, remove_progress, summary_path

log = logging.getLogger("svd_hpc")
POLL_S = 30.0  # how often a waiting task looks for its checkpoint
# train job states after which it never saves another checkpoint (a preempted job is requeued: not here)
TRAIN_FAILED = ("FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE")


def selection_steps(cfg: RunConfig) -> list[int]:
    return cfg.train.select.steps(cfg.train.steps)


def output_path(run: RunDir, step: int, task: EvalTask) -> Path:
    return run.stage_dir("select_eval") / f"step-{step:06d}" / task.benchmark / f"seed-{task.seed}.parquet"


def train_ended(run: RunDir) -> str | None:
    """How the run's newest train job ended, if it ended without success (jobs.json, squeue/sacct); else None.

    `after:` lets select_eval start once train has started, and also once train was cancelled: without
    this a task would hold its GPUs until wait_minutes for a checkpoint that never comes.
    """
    jobs = [str(s["job_id"]) for s in run.submissions() if s["stage"] == "train"]
    if not jobs:
        return None
    state = commands.task_states(jobs[-1:]).get(jobs[-1])
    return state.state if state and state.state in TRAIN_FAILED else None


def wait_for_checkpoint(run: RunDir, cfg: RunConfig, step: int) -> Path:
    """The checkpoint of `step` once train has saved it; ValueError once it cannot come or took too long."""
    path = selection_checkpoint(run, step, cfg.train.steps)
    deadline, polls = time.monotonic() + 60 * cfg.train.select.wait_minutes, 0
    while not (path / "config.json").is_file():
        # train's done marker is written after its last export: a checkpoint still missing then never comes
        if run.is_done("train", 0) and not path.is_dir():
            raise ValueError(f"train finished without saving the selection checkpoint {path}; re-run train.")
        if ended := train_ended(run):
            raise ValueError(
                f"the train job ended {ended} before saving the selection checkpoint {path}; resume the run."
            )
        if time.monotonic() > deadline:
            raise ValueError(
                f"the selection checkpoint {path} was not saved within train.select.wait_minutes="
                f"{cfg.train.select.wait_minutes:g}; check the train job (`status`), then resume the run."
            )
        log.info(f"select_eval: waiting for {path}")
        # quick looks first (a checkpoint due any moment), then every POLL_S
        time.sleep(min(POLL_S, 2.0**polls))
        polls += 1
    return path


def run_eval(run: RunDir, index: int) -> dict:
    """Stage body of select_eval: selection checkpoint `index` on every selection benchmark and seed."""
    cfg = run.load_config()
    steps = selection_steps(cfg)
    if not 0 <= index < len(steps):
        raise ValueError(f"select_eval has {len(steps)} tasks (train.select steps); task {index} does not exist.")
    step = steps[index]
    path = wait_for_checkpoint(run, cfg, step)
    model_cfg = dataclasses.replace(cfg.model, path=str(path), revision=None)
    engine, scores = None, {}
    for spec, task in select_tasks(cfg):
        out = output_path(run, step, task)
        if summary_path(out).is_file() and out.is_file():
            summary = json.loads(summary_path(out).read_text())
        else:
            # loaded once, for the first task left to answer (resources.select_eval.engines_per_task of them)
            engine = engine or open_engines(model_cfg, cfg.stage_resources("select_eval").engines_per_task, Engine)
            model = f"step-{step:06d}"
            summary = evaluate(run, cfg, ("select_eval", index), model, model_cfg, spec, task, out, engine)
        scores.setdefault(spec.name, []).append(summary["pass_at_1"])
    score = mean_pass1(scores)
    log.info(f"select_eval: step {step} {cfg.train.select.metric}={score:.4f} on {', '.join(scores)}")
    return {"step": step, "score": score, "benchmarks": {name: sum(v) / len(v) for name, v in scores.items()}}


def drop_scratch(run: RunDir, stage: str, index: int) -> None:
    """The finished task's chunks (after its done marker)."""
    cfg = run.load_config()
    step = selection_steps(cfg)[index]
    for _, task in select_tasks(cfg):
        remove_progress(progress_dir(output_path(run, step, task)))


def curve(run: RunDir, cfg: RunConfig) -> list[dict]:
    """Each selection checkpoint's score, in step order, read from its task summaries."""
    points = []
    for step in selection_steps(cfg):
        per_benchmark: dict[str, list[float]] = {}
        for _, task in select_tasks(cfg):
            summary = run.load_json(summary_path(output_path(run, step, task)))
            if summary is None:
                raise ValueError(f"select_eval has no score of step {step} on {task.benchmark}; resume the run.")
            per_benchmark.setdefault(task.benchmark, []).append(summary["pass_at_1"])
        benchmarks = {name: sum(v) / len(v) for name, v in per_benchmark.items()}
        points.append({"step": step, "score": mean_pass1(per_benchmark), "benchmarks": benchmarks})
    return points


def run_pick(run: RunDir, index: int) -> dict:
    """Stage body of select: pick the checkpoint, record the choice, push the chosen model."""
    cfg = run.load_config()
    points = curve(run, cfg)
    chosen = pick({p["step"]: p["score"] for p in points})
    path = selection_checkpoint(run, chosen, cfg.train.steps)
    choice = {
        "metric": cfg.train.select.metric,
        "benchmarks": [spec.name for spec in cfg.train.select.benchmarks],
        "rule": "highest score; ties go to the later step",
        "curve": points,
        "step": chosen,
        "path": str(path.relative_to(run.root)),  # relative: the run directory may be moved
    }
    atomic_write_json(choice_path(run), choice)
    log.info(f"select: step {chosen} of {[p['step'] for p in points]} chosen ({path})")
    hub.publish_model(run, cfg)  # records a failure instead of raising: the run goes on
    return {"step": chosen, "score": next(p["score"] for p in points if p["step"] == chosen)}
