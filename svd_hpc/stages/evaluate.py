"""Stage 5, evaluate: graded answers of the base or the trained model on held-out benchmarks.

Run as: python -m svd_hpc.task eval_base --run-dir runs/demo --index I   (or eval_trained)

run_base and run_trained are the bodies of the two stages. Task i is entry i of
`plan.eval_tasks(cfg, model)`: a (benchmark, seed, mode). The model is loaded once in vLLM and
asked one call per question with the benchmark's own prompt (`eval/prompts.py`; mode "direct"),
or, for the UQ-TTC baseline (mode "uq_ttc", base model only), `eval.uq_ttc_candidates` candidates
whose final answers go through the verify stage's own cascade (`verify.run_cascade`); the first
candidate that passes is the answer, else candidate 0. Output:
eval/<model>/<benchmark>/seed-K[-uq_ttc].parquet (EVAL records) and a JSON summary beside it.
Questions are saved in chunk checkpoints (svd_hpc/rundir/chunks.py, generate.chunk_size), so a
preempted task redoes only its missing chunks.

Direct answers to every missing chunk are queued in one engine run, and each chunk is graded and
saved as soon as its last question finishes: the engine never waits for one chunk's longest
sample, nor idles while a chunk is graded (code is graded in a background thread). UQ-TTC judges
each chunk's candidates through the cascade, one chunk after another.

A question the engine cannot run (too long, refused by the template or vLLM) is recorded with its
skip_reason and graded incorrect: dropping it would score models on different question sets.

Every request's seed comes from the eval seed and the question id only: base and trained models
sample with the same seeds, and UQ-TTC's candidate 0 is the direct answer of the base model.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import shutil
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from ..config import ConfigError, ModelConfig, RunConfig
from ..eval import authors_copies, benchmarks
from ..eval import prompts as eval_prompts
from ..eval.benchmarks import Problem
from ..eval.grade import grade_all
from ..eval.grading import GradeResult
from ..eval.grading.code import CodeRules
from ..eval.sandbox import isolation_record, require_isolation
from ..eval.tasks import EvalTask, eval_tasks
from ..records import EVAL
from ..rundir import progress as task_progress
from ..rundir.atomic import atomic_path, atomic_write_json
from ..rundir.chunks import Checkpoint
from ..rundir.layout import RunDir, choice_path, trained_model_dir
from ..sampling import prompts
from ..sampling.cascade import CascadeItem, CascadeResult, run_cascade
from ..sampling.engine import Completion, Engine, Sampling, request_seed, skip_stats, stage_sampling
from ..sampling.engines import open_engines
from ..sampling.prompts import require_think

log = logging.getLogger("svd_hpc")
MODEL_OF_STAGE = {"eval_base": "base", "eval_trained": "trained"}


# ----------------------------------------------------------------------------- paths


def output_path(run: RunDir, model: str, task: EvalTask) -> Path:
    suffix = "" if task.mode == "direct" else f"-{task.mode}"
    return run.stage_dir("eval") / model / task.benchmark / f"seed-{task.seed}{suffix}.parquet"


def summary_path(output: Path) -> Path:
    return output.with_suffix(".json")


def progress_dir(output: Path) -> Path:
    return output.parent / "progress" / output.stem


def trained_model_path(run: RunDir) -> Path:
    return trained_model_dir(run)


def model_config(run: RunDir, cfg: RunConfig, model: str) -> ModelConfig:
    """The base model as configured, or the trained one: <run>/train/final, or the checkpoint train.select chose."""
    if model == "base":
        return cfg.model
    if cfg.train.select.enabled and not choice_path(run).is_file():
        raise ValueError(f"train.select has not chosen a checkpoint yet ({choice_path(run)}); run the select stage.")
    final = trained_model_path(run)
    if not (final / "config.json").is_file():
        raise ValueError(f"the trained model {final} is missing; run (or resume) the train stage first.")
    return dataclasses.replace(cfg.model, path=str(final))


# ----------------------------------------------------------------------------- one chunk


def eval_sampling(cfg: RunConfig, n: int) -> Sampling:
    """The sampling of eval answers: one per question, or UQ-TTC's candidates."""
    return stage_sampling(cfg.eval, n=n)


def _ask(engine: Engine, cfg: RunConfig, task: EvalTask, chunk: list[Problem], n: int):
    style = cfg.prompts.style
    conversations = [[{"role": "user", "content": eval_prompts.user_prompt(p, task.seed, style)}] for p in chunk]
    seeds = [request_seed(task.seed, "eval", task.benchmark, p.question_id) for p in chunk]
    return engine.chat(conversations, eval_sampling(cfg, n), seeds=seeds)


def uq_ttc_choose(
    engine: Engine,
    cfg: RunConfig,
    task: EvalTask,
    chunk: list[Problem],
    shown: list[str],
    outputs: list[list[Completion]],
    checkpoint: Path,
) -> tuple[list[int], list[list[CascadeResult]]]:
    """UQ-TTC: per question, the first candidate the cascade passes (else 0), and the judges' results."""
    think = require_think(cfg, engine)
    items, owners = [], []
    for q, (problem, question, completions) in enumerate(zip(chunk, shown, outputs)):
        question = problem.question if cfg.eval.uq_ttc_judge_question == "raw" else question
        for k, c in enumerate(completions):
            if c.skip_reason:  # never sampled: nothing to judge
                continue
            # eval.uq_ttc_filter: like the verify stage, a candidate the static filter rejects never reaches the judges
            unfiltered = not cfg.eval.uq_ttc_filter
            if unfiltered or prompts.filter_reason(c.text, problem.domain, think, cfg.generate.format_filter) is None:
                key = f"eval/{task.benchmark}/{task.seed}/{problem.question_id}/{k}"
                items.append(CascadeItem(question, prompts.final_answer(c.text), key=key))
                owners.append((q, k))
    results = run_cascade(engine, items, cfg.verify, checkpoint=checkpoint, style=cfg.prompts.style) if items else []
    chosen = [None] * len(chunk)
    judged: list[list[CascadeResult]] = [[] for _ in chunk]
    for (q, k), result in zip(owners, results):
        judged[q].append(result)
        if result.status == "passed" and chosen[q] is None:
            chosen[q] = k
    return [0 if c is None else c for c in chosen], judged


def evaluate_chunk(
    engine: Engine, cfg: RunConfig, model: str, task: EvalTask, chunk: list[Problem], checkpoint: Path
) -> pa.Table:
    """EVAL records for the problems of one chunk (one batched engine call, plus the cascade for UQ-TTC)."""
    presented = [p.present(task.seed) for p in chunk]
    shown = [q for q, _ in presented]
    n = 1 if task.mode == "direct" else cfg.eval.uq_ttc_candidates
    outputs = _ask(engine, cfg, task, chunk, n)
    if task.mode == "direct":
        chosen, judged = [0] * len(chunk), [[] for _ in chunk]
    else:
        chosen, judged = uq_ttc_choose(engine, cfg, task, chunk, shown, outputs, checkpoint)
    return chunk_table(cfg, model, task, chunk, outputs, chosen, judged)


def code_rules(cfg: RunConfig) -> CodeRules:
    """eval.code_imports, code_call, code_compare and code_memory_mb."""
    e = cfg.eval
    return CodeRules(e.code_imports, e.code_call, e.code_compare, e.code_memory_mb)


def chunk_table(
    cfg: RunConfig,
    model: str,
    task: EvalTask,
    chunk: list[Problem],
    outputs: list[list[Completion]],
    chosen: list[int],
    judged: list[list[CascadeResult]],
) -> pa.Table:
    """Grade the chosen answers of one chunk: its EVAL records.

    A question the engine could not run is recorded as skipped and incorrect: it stays in the
    benchmark's denominator, so base and trained models are scored on the same questions.
    """
    presented = [p.present(task.seed) for p in chunk]
    shown, references = [q for q, _ in presented], [r for _, r in presented]
    responses = [completions[k].text for completions, k in zip(outputs, chosen)]
    skips = [completions[k].skip_reason for completions, k in zip(outputs, chosen)]
    ran = [q for q, skip in enumerate(skips) if not skip]
    graded = grade_all(
        [chunk[q] for q in ran],
        [references[q] for q in ran],
        [responses[q] for q in ran],
        cfg.eval.code_timeout_s,
        cfg.eval.code_tests,
        cfg.eval.code_time_limit,
        code_rules(cfg),
    )
    grades = [GradeResult(False, None, "skipped")] * len(chunk)
    for q, result in zip(ran, graded):
        grades[q] = result
    rows = []
    for problem, question, reference, completions, k, results, response, result, skip in zip(
        chunk, shown, references, outputs, chosen, judged, responses, grades, skips
    ):
        rows.append(
            {
                "benchmark": task.benchmark,
                "model": model,
                "mode": task.mode,
                "seed": task.seed,
                "question_id": problem.question_id,
                "question": question,
                "reference": reference,
                "response": response,
                "extracted": result.extracted,
                "correct": result.correct,
                "grade_reason": result.reason,
                # everything generated for this question: its candidates and, for UQ-TTC, the judges
                "completion_tokens": sum(c.completion_tokens for c in completions)
                + sum(r.completion_tokens for r in results),
                "samples": len(completions) + sum(r.samples for r in results),
                "chosen_candidate": k,
                "skip_reason": skip,
            }
        )
    return pa.Table.from_pylist(rows, schema=EVAL)


def answer_chunks(
    engine: Engine,
    cfg: RunConfig,
    model: str,
    task: EvalTask,
    todo: dict[int, list[Problem]],
    checkpoint: Checkpoint,
    tracker: task_progress.TaskProgress | None = None,
) -> None:
    """Direct answers to every chunk of `todo` (chunk number -> problems) in one engine run; each
    chunk is graded and saved to `checkpoint` as soon as its last question finishes."""
    owner = [c for c, chunk in todo.items() for _ in chunk]
    problems = [p for chunk in todo.values() for p in chunk]
    style = cfg.prompts.style
    rendered = [
        engine.render([{"role": "user", "content": eval_prompts.user_prompt(p, task.seed, style)}]) for p in problems
    ]
    seeds = [request_seed(task.seed, "eval", task.benchmark, p.question_id) for p in problems]
    waiting = Counter(owner)
    answers: dict[int, dict[int, list[Completion]]] = {c: {} for c in todo}

    def save(c: int, outputs: list[list[Completion]]) -> None:
        chunk = todo[c]
        table = chunk_table(cfg, model, task, chunk, outputs, [0] * len(chunk), [[] for _ in chunk])
        _keep(checkpoint, table)
        log.info(f"eval: {task=} chunk={c} saved, correct={sum(table.column('correct').to_pylist())}/{len(chunk)}")
        if tracker:
            tracker.update(len(chunk), sum(table.column("completion_tokens").to_pylist()))

    # math-verify's timeouts need the main thread (and math grading is quick); code runs for
    # seconds per answer, so it is graded beside the engine, one chunk at a time
    background = ThreadPoolExecutor(max_workers=1) if any(p.grader == "code" for p in problems) else None
    saving = []
    try:
        for i, completions in engine.stream(rendered, eval_sampling(cfg, 1), seeds):
            c = owner[i]
            answers[c][i] = completions
            waiting[c] -= 1
            if waiting[c]:
                continue
            outputs = [v for _, v in sorted(answers.pop(c).items())]  # the chunk's question order
            if background is None:
                save(c, outputs)
            else:
                saving.append(background.submit(save, c, outputs))
                for done in [f for f in saving if f.done()]:
                    done.result()  # a grading error stops the task now, not after all sampling
        for future in saving:
            future.result()
    finally:
        if background is not None:
            background.shutdown(wait=True, cancel_futures=True)


def _keep(checkpoint: Checkpoint, table: pa.Table) -> None:
    """Save one graded chunk's EVAL records as one chunk file."""
    for row in table.to_pylist():
        checkpoint.add(row["question_id"], row)
    checkpoint.flush()


def _fingerprint(task: EvalTask, model_path: str, problems: list[Problem]) -> str:
    """What saved records must match to be reused: the task, the model and its questions in order."""
    ids = [p.question_id for p in problems]
    return json.dumps({"task": dataclasses.astuple(task), "model": model_path, "questions": ids})


# ----------------------------------------------------------------------------- one task


def eval_task(cfg: RunConfig, stage: str, index: int) -> tuple[str, EvalTask]:
    """(model, task) of task `index` of `stage` (eval_base | eval_trained)."""
    if stage not in MODEL_OF_STAGE:
        raise ConfigError(f"stage '{stage}' is not an eval stage; use eval_base or eval_trained.")
    model = MODEL_OF_STAGE[stage]
    tasks = eval_tasks(cfg, model)
    if not 0 <= index < len(tasks):
        raise ConfigError(
            f"{stage} has {len(tasks)} tasks (eval.benchmarks × eval.seeds); task {index} does not exist."
        )
    return model, tasks[index]


def run_eval_task(run: RunDir, stage: str, index: int, engine: Engine | None = None) -> dict:
    """Evaluate task `index` of `stage`, write its records and summary; returns the summary.

    Pass `engine` to reuse a loaded one (it must hold the model this stage evaluates).
    """
    cfg = run.load_config()
    model, task = eval_task(cfg, stage, index)
    model_cfg = model_config(run, cfg, model)
    spec = next(b for b in cfg.eval.benchmarks if b.name == task.benchmark)
    return evaluate(run, cfg, (stage, index), model, model_cfg, spec, task, output_path(run, model, task), engine)


def evaluate(
    run: RunDir,
    cfg: RunConfig,
    where: tuple[str, int],
    model: str,
    model_cfg: ModelConfig,
    spec,
    task: EvalTask,
    out: Path,
    engine: Engine | None = None,
) -> dict:
    """Answer and grade `spec` with the model of `model_cfg` as `task`, into `out` and its summary; the summary.

    `where` (stage, index) names the task whose progress file this work updates.
    """
    stage, index = where
    problems, left_out = benchmarks.load_counted(spec)
    copy = authors_copies.check(spec.name, spec.preset, [(p.question, p.answer or "") for p in problems])
    if any(p.grader == "code" for p in problems):  # refuse before loading a model, where the code would run
        require_isolation(cfg.eval.allow_unisolated_code, f"code benchmark '{spec.name}'")
    progress = progress_dir(out)
    size = cfg.generate.chunk_size
    chunks = [problems[i : i + size] for i in range(0, len(problems), size)]
    started = time.perf_counter()
    checkpoint = Checkpoint(progress, size, _fingerprint(task, model_cfg.path, problems))
    todo = {c: chunk for c, chunk in enumerate(chunks) if any(p.question_id not in checkpoint for p in chunk)}
    resumed = len(chunks) - len(todo)
    tracker = None
    if todo:
        engine = engine or open_engines(model_cfg, cfg.stage_resources(stage).engines_per_task, Engine)
        saved = sum(len(chunk) for c, chunk in enumerate(chunks) if c not in todo)
        tracker = task_progress.start(run, stage, index, len(problems), "questions", saved)
    if todo and task.mode == "direct":
        answer_chunks(engine, cfg, model, task, todo, checkpoint, tracker)
    for c, chunk in todo.items() if task.mode == "uq_ttc" else ():
        table = evaluate_chunk(engine, cfg, model, task, chunk, checkpoint=progress / f"cascade-{c:05d}.json")
        _keep(checkpoint, table)
        log.info(
            f"eval: {stage=} {task=} chunk={c + 1}/{len(chunks)} correct={sum(table.column('correct').to_pylist())}"
        )
        tracker.update(len(chunk), sum(table.column("completion_tokens").to_pylist()))
    table = pa.Table.from_pylist([checkpoint[p.question_id] for p in problems], schema=EVAL)
    summary = summarize(table, task, model, spec.name, problems[0], model_cfg.path)
    summary.update(seconds=round(time.perf_counter() - started, 2), chunks_resumed=resumed, rows_left_out=left_out)
    if copy:  # a preset with a stored fingerprint of the authors' copy: whether this one is the same
        summary["authors_copy"] = copy
    if problems[0].grader == "code":
        keys = ("code_tests", "code_time_limit", "code_imports", "code_call", "code_compare", "code_memory_mb")
        summary.update({key: getattr(cfg.eval, key) for key in keys})
        # stated with the results: the isolation used, and what bounded the programs' memory
        summary["sandbox"] = isolation_record(code_rules(cfg).limits())
    with atomic_path(out) as tmp:
        pq.write_table(table, tmp)
    atomic_write_json(summary_path(out), summary)
    log.info(f"eval: {stage=} {task=} pass@1={summary['pass_at_1']:.3f} over {summary['questions']} questions")
    return summary


def remove_progress(progress: Path) -> None:
    """Remove a finished task's chunks, and their parent folder once no task uses it.

    The parent is shared by the tasks of one benchmark, which may run at once: the last one out
    removes it; a task that finds it gone, or still holding another task's chunks, leaves it be.
    """
    shutil.rmtree(progress, ignore_errors=True)
    with contextlib.suppress(OSError):
        progress.parent.rmdir()


def summarize(table: pa.Table, task: EvalTask, model: str, benchmark: str, example: Problem, model_path: str) -> dict:
    """The JSON summary of one task's records."""
    rows = table.to_pylist()
    correct = sum(r["correct"] for r in rows)
    summary = {
        "benchmark": benchmark,
        "model": model,
        "model_path": model_path,
        "mode": task.mode,
        "seed": task.seed,
        "domain": example.domain,
        "grader": example.grader,
        "prompt": example.prompt,
        "questions": len(rows),
        "correct": correct,
        "pass_at_1": correct / len(rows),
        "completion_tokens": sum(r["completion_tokens"] for r in rows),
        "samples": sum(r["samples"] for r in rows),
        "grade_reasons": dict(Counter(r["grade_reason"] for r in rows)),
        # skipped questions count as incorrect (in "questions", not in "correct")
        **skip_stats((r["question_id"], r["skip_reason"]) for r in rows),
    }
    if task.mode == "uq_ttc":
        summary["chosen_not_first"] = sum(r["chosen_candidate"] != 0 for r in rows)
    if example.kind == "choice":
        summary["option_order"] = example.option_order
    return summary


def run_base(run: RunDir, index: int) -> dict:
    """Stage body of eval_base."""
    return marker_stats(run_eval_task(run, "eval_base", index))


def run_trained(run: RunDir, index: int) -> dict:
    """Stage body of eval_trained."""
    return marker_stats(run_eval_task(run, "eval_trained", index))


def marker_stats(summary: dict) -> dict:
    """What a task's done marker keeps of its summary: what status and the report read."""
    keys = (
        "benchmark",
        "seed",
        "mode",
        "pass_at_1",
        "questions",
        "seconds",
        "skipped",
        "skip_reasons",
        "skip_examples",
    )
    return {k: summary[k] for k in keys}


def drop_scratch(run: RunDir, stage: str, index: int) -> None:
    """The finished task's chunks (after its done marker)."""
    model, task = eval_task(run.load_config(), stage, index)
    remove_progress(progress_dir(output_path(run, model, task)))
