"""Stage 1, generate: N candidate solutions per seed question of one shard (an array task).

Run as: python -m svd_hpc.task generate --run-dir runs/demo   (task index from SLURM_ARRAY_TASK_ID)

All the shard's questions are queued in one engine run; every generate.chunk_size finished
questions are written atomically to <run>/generate/chunks/NNNNN/chunk-MMMMM.json (svd_hpc/rundir/chunks.py),
so a task killed or preempted half-way redoes at most one chunk. Every question samples with its
own seed (from model.seed and its id), so the resumed shard equals an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shutil
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from ..config import RunConfig
from ..records import CANDIDATE, SEED, SEED_ADDED, check_schema
from ..rundir import progress
from ..rundir.atomic import atomic_path
from ..rundir.chunks import Checkpoint
from ..rundir.layout import RunDir
from ..rundir.progress import TaskProgress
from ..sampling import prompts
from ..sampling.engine import Completion, Engine, Sampling, request_seed, skip_stats, stage_sampling
from ..sampling.engines import open_engines

log = logging.getLogger("svd_hpc")
STAGE = "generate"


def chunk_dir(run: RunDir, index: int) -> Path:
    return run.stage_dir(STAGE) / "chunks" / f"{index:05d}"


def read_seed_shard(run: RunDir, index: int) -> pa.Table:
    path = run.shard_path("seeds", index)
    if not path.is_file():
        raise ValueError(f"seed shard {path} is missing; the run was not prepared (launch writes it) or was moved.")
    table = pq.read_table(path)
    check_schema(table, SEED, str(path), optional=SEED_ADDED)
    return table


def candidate_rows(
    row: dict, user: str, completions: list[Completion], think: bool, require_format: bool = True
) -> list[dict]:
    """CANDIDATE records of one question: its N samples, in sampling order, filtered.

    A question the engine could not run (skip_reason) keeps its N rows, empty and skipped, so it
    is counted downstream instead of vanishing; skipped rows never pass the filter.
    """
    out = []
    for k, c in enumerate(completions):
        reason = None if c.skip_reason else prompts.filter_reason(c.text, row["domain"], think, require_format)
        out.append(
            dict(
                question_id=row["question_id"],
                question=row["question"],
                domain=row["domain"],
                candidate_index=k,
                prompt=user,
                text=c.text,
                answer=prompts.final_answer(c.text),
                prompt_tokens=c.prompt_tokens,
                completion_tokens=c.completion_tokens,
                finish_reason=c.finish_reason,
                passed_filter=reason is None and not c.skip_reason,
                filter_reason=reason,
                skip_reason=c.skip_reason,
            )
        )
    return out


def generate_questions(
    engine: Engine, cfg: RunConfig, rows: list[dict], checkpoint: Checkpoint, tracker: TaskProgress | None = None
) -> int:
    """Sample every question of `rows` in one engine run, handing each question's candidates to
    `checkpoint` as soon as its last sample finishes; returns the tokens generated.

    One run for all keeps the batch full: separate calls per chunk would each wait for their
    longest sample while the rest of the batch sits idle.
    """
    sampling = generate_sampling(cfg)
    think = prompts.require_think(cfg, engine)
    user_turns = [prompts.user_prompt(r["question"], r["domain"], cfg.prompts.style) for r in rows]
    rendered = [engine.render([{"role": "user", "content": u}]) for u in user_turns]
    # the seed depends on the question only, not on what else is in the batch: a resumed shard
    # samples its missing questions exactly as an uninterrupted one did
    seeds = [request_seed(cfg.model.seed, "generate", r["question_id"]) for r in rows]
    tokens = 0
    for i, completions in engine.stream(rendered, sampling, seeds):
        made = sum(c.completion_tokens for c in completions)
        tokens += made
        if tracker:  # the task's progress file and log line, once per chunk
            tracker.update(1, made)
        checkpoint.add(
            rows[i]["question_id"],
            candidate_rows(rows[i], user_turns[i], completions, think, cfg.generate.format_filter),
        )
    checkpoint.flush()
    return tokens


def fingerprint(cfg: RunConfig, seeds: pa.Table) -> str:
    """What decides a shard's candidates: the model, the sampling settings and the questions."""
    settings = {"model": dataclasses.asdict(cfg.model), "generate": dataclasses.asdict(cfg.generate)}
    settings["generate"].pop("chunk_size")  # how results are grouped into files changes none of them
    if cfg.prompts.style != "ours":  # only then: shards saved before prompts.style existed still match
        settings["prompts"] = cfg.prompts.style
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    for row in seeds.to_pylist():
        # the known answer decides nothing the model sees; leaving it out also keeps the
        # fingerprint of shards written before the column existed
        row.pop("reference", None)
        digest.update(json.dumps(row, sort_keys=True, ensure_ascii=False).encode())
    return digest.hexdigest()


def generate_sampling(cfg: RunConfig) -> Sampling:
    """The sampling of the N candidates per seed question."""
    return stage_sampling(cfg.generate, n=cfg.generate.n, stop=cfg.generate.stop)


def run_shard(run: RunDir, index: int, engine: Engine | None = None) -> dict:
    """Generate shard `index` (resuming from its saved chunks) and write it; returns counts.

    Loads an engine only when some question is still missing; pass `engine` to reuse one.
    """
    cfg = run.load_config()
    seeds = read_seed_shard(run, index)
    rows = seeds.to_pylist()
    checkpoint = Checkpoint(chunk_dir(run, index), cfg.generate.chunk_size, fingerprint(cfg, seeds))
    started = time.perf_counter()
    todo = [r for r in rows if r["question_id"] not in checkpoint]
    tokens = 0
    if todo:
        engine = engine or open_engines(cfg.model, cfg.stage_resources(STAGE).engines_per_task, Engine)
        resumed = len(rows) - len(todo)
        tracker = progress.start(run, STAGE, index, len(rows), "questions", resumed, cfg.generate.chunk_size)
        tokens = generate_questions(engine, cfg, todo, checkpoint, tracker)
    records = [candidate for r in rows for candidate in checkpoint[r["question_id"]]]
    shard = pa.Table.from_pylist(records, schema=CANDIDATE)
    with atomic_path(run.shard_path(STAGE, index)) as tmp:
        pq.write_table(shard, tmp)
    passed = sum(shard.column("passed_filter").to_pylist())
    seconds = time.perf_counter() - started
    stats = dict(
        questions=seeds.num_rows,
        candidates=shard.num_rows,
        passed_filter=passed,
        questions_resumed=seeds.num_rows - len(todo),
        completion_tokens_generated=tokens,
        seconds=round(seconds, 2),
    )
    # counted per question (its candidates share the reason)
    stats.update(skip_stats((r["question_id"], r.get("skip_reason")) for r in records if r["candidate_index"] == 0))
    log.info(f"generate: shard={index} done {stats}")
    return stats


def run_task(run: RunDir, index: int) -> dict:
    """Stage body: generate shard `index`; returns its stats."""
    return run_shard(run, index)


def drop_scratch(run: RunDir, stage: str, index: int) -> None:
    """The shard file now holds every chunk; fewer files matter on Lustre/NFS."""
    shutil.rmtree(chunk_dir(run, index), ignore_errors=True)
