"""Stage 2, verify: the self-judging cascade (sampling/cascade.py) over the candidates of one shard (an array task).

Run as: python -m svd_hpc.task verify --run-dir runs/demo   (task i runs after generate task i)
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from ..config import VERIFY_STAGES
from ..records import CANDIDATE, VOTE_NONE, check_schema
from ..rundir import progress
from ..rundir.atomic import atomic_path
from ..rundir.chunks import Checkpoint
from ..rundir.layout import RunDir
from ..sampling.cascade import STAGE, CascadeItem, CascadeResult, fingerprint, judge, verdict_table
from ..sampling.engine import Engine, skip_stats
from ..sampling.engines import open_engines

log = logging.getLogger("svd_hpc")


def progress_path(run: RunDir, index: int) -> Path:
    """The folder of a task's saved judge replies (removed once its shard is written)."""
    return run.stage_dir(STAGE) / "progress" / f"{index:05d}"


def read_candidates(run: RunDir, index: int) -> pa.Table:
    path = run.shard_path("generate", index)
    if not run.is_done("generate", index) or not path.is_file():
        raise ValueError(f"generate shard {index} is not finished ({path}); run or resume the generate stage first.")
    table = pq.read_table(path)
    check_schema(table, CANDIDATE, str(path))
    return table


def run_shard(run: RunDir, index: int, engine: Engine | None = None) -> dict:
    """Verify shard `index` and write its verdicts; returns counts. Pass `engine` to reuse one."""
    cfg = run.load_config()
    candidates = read_candidates(run, index)
    rows = [r for r, ok in enumerate(candidates.column("passed_filter").to_pylist()) if ok]
    qids = candidates.column("question_id").to_pylist()
    cidx = candidates.column("candidate_index").to_pylist()
    questions = candidates.column("question").to_pylist()
    answers = candidates.column("answer").to_pylist()
    items = [CascadeItem(questions[r], answers[r], key=f"{qids[r]}/{cidx[r]}") for r in rows]
    started = time.perf_counter()
    results: list[CascadeResult] = []
    resumed = 0
    if items:  # a shard where nothing passed the filter needs no engine
        engine = engine or open_engines(cfg.model, cfg.stage_resources(STAGE).engines_per_task, Engine)
        saved = Checkpoint(
            progress_path(run, index),
            cfg.verify.chunk_size,
            fingerprint(cfg.model, items, cfg.verify, cfg.prompts.style),
        )
        resumed = saved.resumed
        units = len(items) * len(cfg.verify.stages)
        tracker = progress.start(run, STAGE, index, units, "candidate-stages", every=cfg.verify.chunk_size)
        results = judge(engine, items, cfg.verify, saved, tracker, style=cfg.prompts.style)
    table = verdict_table(candidates, dict(zip(rows, results)))
    with atomic_path(run.shard_path(STAGE, index)) as tmp:
        pq.write_table(table, tmp)
    statuses = table.column("status").to_pylist()
    stats = {status: statuses.count(status) for status in ("passed", "rejected", "filtered")}
    keys = [f"{q}/{c}" for q, c in zip(qids, cidx)]
    stats.update(skip_stats(zip(keys, table.column("skip_reason").to_pylist())))
    stats["skipped_judging"] = sum(1 for r in results if r.status == "skipped")
    stats.update(
        candidates=table.num_rows,
        judge_samples=sum(r.samples for r in results),
        judge_prompt_tokens=sum(r.prompt_tokens for r in results),
        judge_replies_resumed=resumed,
        seconds=round(time.perf_counter() - started, 2),
    )
    for stage in VERIFY_STAGES:
        stats[f"failed_{stage}"] = sum(1 for r in results if r.failed_stage == stage)
        stats[f"no_verdict_{stage}"] = sum((r.votes[stage] or []).count(VOTE_NONE) for r in results)
        stats[f"cut_off_{stage}"] = sum(sum(r.cut_off[stage] or []) for r in results)
    log.info(f"verify: shard={index} done {stats}")
    return stats


def run_task(run: RunDir, index: int) -> dict:
    """Stage body: verify shard `index`; returns its stats."""
    return run_shard(run, index)


def drop_scratch(run: RunDir, stage: str, index: int) -> None:
    """The saved judge replies of a finished shard."""
    shutil.rmtree(progress_path(run, index), ignore_errors=True)
