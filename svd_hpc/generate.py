"""Stage 1, generate: N candidate solutions per seed question of one shard (an array task).

Run as: python -m svd_hpc.task generate --run-dir runs/demo   (task index from SLURM_ARRAY_TASK_ID)

The shard's questions form chunks of generate.chunk_size. All are queued in one engine run, and
each chunk is written atomically to <run>/generate/chunks/NNNNN/chunk-MMMMM.parquet as soon as
its last question finishes, so a task killed or preempted half-way redoes only missing chunks.
Every question samples with its own seed (from model.seed and its id), so the resumed shard
equals an uninterrupted one.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from . import prompts
from .config import RunConfig
from .engine import Completion, Engine, request_seed, stage_sampling
from .records import CANDIDATE, SEED, check_schema
from .rundir import RunDir, atomic_path

log = logging.getLogger("svd_hpc")
STAGE = "generate"


def chunk_dir(run: RunDir, index: int) -> Path:
    return run.stage_dir(STAGE) / "chunks" / f"{index:05d}"


def read_seed_shard(run: RunDir, index: int) -> pa.Table:
    path = run.shard_path("seeds", index)
    if not path.is_file():
        raise ValueError(f"seed shard {path} is missing; the run was not prepared (launch writes it) or was moved.")
    table = pq.read_table(path)
    check_schema(table, SEED, str(path))
    return table


def require_think(cfg: RunConfig, engine: Engine) -> bool:
    """Whether the filter demands a closed think block: `auto` follows the model's thinking mode."""
    knob = cfg.generate.require_think
    return engine.thinking if knob == "auto" else knob == "on"


def candidate_table(
    rows: list[dict], user_turns: list[str], outputs: list[list[Completion]], think: bool, require_format: bool = True
) -> pa.Table:
    """CANDIDATE records of some questions: their N samples each, in sampling order, filtered."""
    out = {name: [] for name in CANDIDATE.names}
    for row, user, completions in zip(rows, user_turns, outputs):
        for k, c in enumerate(completions):
            too_long = c.finish_reason == "abort" and not c.completion_tokens  # never sent (engine.py)
            reason = "prompt_too_long" if too_long else prompts.filter_reason(c.text, row["domain"], think, require_format)
            values = dict(
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
                passed_filter=reason is None,
                filter_reason=reason,
            )
            for name, value in values.items():
                out[name].append(value)
    return pa.Table.from_pydict(out, schema=CANDIDATE)


def generate_chunks(engine: Engine, cfg: RunConfig, chunks: dict[int, pa.Table], folder: Path) -> int:
    """Sample every question of `chunks` (chunk number -> seeds) in one engine run, writing each
    chunk's file as soon as its last question finishes; returns the tokens generated.

    One run for all chunks keeps the batch full: separate calls per chunk would each wait for
    their longest sample while the rest of the batch sits idle.
    """
    gen = cfg.generate
    sampling = stage_sampling(gen, n=gen.n, stop=gen.stop)
    think = require_think(cfg, engine)
    owner, rows, members = [], [], {}
    for c, table in chunks.items():
        for row in table.to_pylist():
            members.setdefault(c, []).append(len(rows))
            owner.append(c)
            rows.append(row)
    user_turns = [prompts.user_prompt(r["question"], r["domain"]) for r in rows]
    rendered = [engine.render([{"role": "user", "content": u}]) for u in user_turns]
    # the seed depends on the question only, not on its chunk: a changed chunk_size keeps results
    seeds = [request_seed(cfg.model.seed, "generate", r["question_id"]) for r in rows]
    finished: dict[int, list[Completion]] = {}
    waiting = {c: len(m) for c, m in members.items()}
    tokens = 0
    for i, completions in engine.stream(rendered, sampling, seeds):
        finished[i] = completions
        tokens += sum(c.completion_tokens for c in completions)
        c = owner[i]
        waiting[c] -= 1
        if waiting[c]:
            continue
        part = members[c]
        outputs = [finished.pop(j) for j in part]
        table = candidate_table(
            [rows[j] for j in part], [user_turns[j] for j in part], outputs, think, cfg.generate.format_filter
        )
        with atomic_path(folder / f"chunk-{c:05d}.parquet") as tmp:
            pq.write_table(table, tmp)
        log.info(f"generate: chunk={c} written, {sum(1 for w in waiting.values() if not w)}/{len(waiting)} chunks done")
    return tokens


def _chunk_is_valid(path: Path, expected_ids: list[str], n: int) -> bool:
    """A chunk file counts only if it holds exactly the expected questions (a changed
    chunk_size or seed file between attempts makes old chunks stale)."""
    if not path.is_file():
        return False
    try:
        ids = pq.read_table(path, columns=["question_id"]).column("question_id").to_pylist()
    except (pa.ArrowInvalid, OSError):
        return False
    return ids == [q for q in expected_ids for _ in range(n)]


def run_shard(run: RunDir, index: int, engine: Engine | None = None) -> dict:
    """Generate shard `index` (resuming from finished chunks) and write it; returns counts.

    Loads an engine only when some chunk is still missing; pass `engine` to reuse one.
    """
    cfg = run.load_config()
    seeds = read_seed_shard(run, index)
    size = cfg.generate.chunk_size
    chunks = [seeds.slice(start, size) for start in range(0, seeds.num_rows, size)]
    folder = chunk_dir(run, index)
    started = time.perf_counter()
    n = cfg.generate.n
    todo = {
        c: chunk
        for c, chunk in enumerate(chunks)
        if not _chunk_is_valid(folder / f"chunk-{c:05d}.parquet", chunk.column("question_id").to_pylist(), n)
    }
    tokens = 0
    if todo:
        engine = engine or Engine(cfg.model)
        tokens = generate_chunks(engine, cfg, todo, folder)
    parts = [pq.read_table(folder / f"chunk-{c:05d}.parquet") for c in range(len(chunks))]
    shard = pa.concat_tables(parts) if parts else CANDIDATE.empty_table()
    shard = shard.cast(CANDIDATE)
    with atomic_path(run.shard_path(STAGE, index)) as tmp:
        pq.write_table(shard, tmp)
    passed = sum(shard.column("passed_filter").to_pylist())
    seconds = time.perf_counter() - started
    stats = dict(
        questions=seeds.num_rows,
        candidates=shard.num_rows,
        passed_filter=passed,
        chunks=len(chunks),
        chunks_resumed=len(chunks) - len(todo),
        completion_tokens_generated=tokens,
        seconds=round(seconds, 2),
    )
    log.info(f"generate: shard={index} done {stats}")
    return stats


def run_task(run_dir: str, task_index: int) -> None:
    """Stage body: generate shard `task_index` of the run in `run_dir` (a no-op once done)."""
    run = RunDir(run_dir)
    if run.is_done(STAGE, task_index):
        return
    stats = run_shard(run, task_index)
    run.mark_done(STAGE, task_index, **stats)
    # the shard file now holds every chunk; fewer files matter on Lustre/NFS
    shutil.rmtree(chunk_dir(run, task_index), ignore_errors=True)
