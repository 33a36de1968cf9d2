"""Merge stage: every verify shard -> the self-curated SFT dataset, stats.json and a funnel chart.

Run as: python -m svd_hpc.task merge --run-dir RUN_DIR (the launcher does this after verify).

The rules (thresholds, selection, dedup) live in selection.py, the spill and parquet writers in
writers.py. This module reads the shards once, in index order, one shard in hand and the next
being read:
- per shard: thresholds, then the first `limit` passing candidates of each question in the shard,
  a superset of what the global selection can pick (a question's first `limit` overall are among
  its first `limit` in each shard). Their solution digests stay in memory (~100 bytes each); their
  SFT messages go to a spill file, one of 2^b buckets chosen by the hash of the question_id;
- after the last shard: question groups, selection and dedup over those small in-memory tables;
- then each bucket is read back alone and its kept rows written out, a row group at a time.
Memory therefore holds two shards, one bucket and the per-candidate digests, whatever the number
of shards; the spill lives in the output's temporary folder and is deleted before the rename.

Output rows are ordered by (blake2b(question_id), question_id, candidate_index): a fixed
pseudo-random order that depends only on the data, so a re-run, or the same rows sharded another
way, gives byte-identical parquet. The validation split holds out whole question groups: those
whose first question_id hashes below merge.validation_fraction.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .. import records
from ..config import VERIFY_STAGES, RunConfig
from ..eval.benchmarks import contamination_index
from ..inputs.decontam import Index
from ..merge import contamination, funnel, selection
from ..merge.writers import ROW_GROUP_ROWS, RowGroupWriter, Spill
from ..publish import hub
from ..rundir.atomic import atomic_path, atomic_write_json
from ..rundir.layout import RunDir

log = logging.getLogger("svd_hpc")

VOTE_COLUMNS = [f"{stage}_votes" for stage in VERIFY_STAGES]
CUT_OFF_COLUMNS = [f"{stage}_cut_off" for stage in VERIFY_STAGES]
READ_COLUMNS = [
    "question_id",
    "question",
    "domain",
    "candidate_index",
    "status",
    "skip_reason",
    *VOTE_COLUMNS,
    *CUT_OFF_COLUMNS,
    "prompt",
    "text",
]
# repeated once per candidate: read as dictionaries, so each distinct value is decoded (and hashed) once
DICTIONARY_COLUMNS = ["question_id", "question", "prompt"]
READ_SCHEMA = pa.schema(
    [
        pa.field(name, pa.dictionary(pa.int32(), pa.string()))
        if name in DICTIONARY_COLUMNS
        else records.VERDICT.field(name)
        for name in READ_COLUMNS
    ]
)
BUCKET_TARGET_BYTES = 64 << 20  # input bytes per spill bucket (a bucket spills a fraction of its input)
MAX_BUCKETS = 256  # open spill files at once

CANDIDATE_FIELDS = pa.schema(
    [
        ("question_id", pa.string()),
        ("candidate_index", pa.int32()),
        ("domain", pa.string()),
        ("shard", pa.int32()),
        ("votes_yes", pa.int32()),
        ("votes_total", pa.int32()),
        ("solution_digest", pa.binary(selection.DIGEST_BYTES)),
        ("order_hash", pa.uint64()),
    ]
)
QUESTION_FIELDS = pa.schema(
    [("question_id", pa.string()), ("question_digest", pa.binary(selection.DIGEST_BYTES)), ("domain", pa.string())]
)


class UnreadableShard(Exception):
    """A verify shard that is missing, truncated or corrupt (merge.allow_missing may skip it)."""


def id_hash(value: str, key: bytes = b"") -> int:
    """A stable 64-bit hash of an id (Python's hash() changes per process)."""
    return int.from_bytes(hashlib.blake2b(value.encode(), digest_size=8, key=key).digest(), "big")


def shard_error(path: Path, reason: str) -> ValueError:
    return ValueError(
        f"verify shard {path} {reason}; run `python -m svd_hpc.launch resume {path.parent.parent}` to redo it, "
        "or set merge.allow_missing=true to proceed and record the skipped shards."
    )


def check_shard(path: Path) -> int:
    """Row count from the footer; UnreadableShard if missing or unreadable, ValueError on wrong schema."""
    if not path.is_file():
        raise UnreadableShard("is missing")
    try:
        meta = pq.read_metadata(path)
        schema = meta.schema.to_arrow_schema()
    except (OSError, pa.ArrowException) as err:
        raise UnreadableShard(f"is truncated or corrupt ({err})") from None
    records.check_schema(schema.empty_table(), records.VERDICT, f"verify shard {path}")
    return meta.num_rows


def read_shard(path: Path) -> pa.Table:
    """The columns merge needs, one chunk each; question_id, question and prompt as dictionaries."""
    try:
        table = pq.read_table(path, columns=READ_COLUMNS, memory_map=True, read_dictionary=DICTIONARY_COLUMNS)
    except (OSError, pa.ArrowException) as err:
        raise UnreadableShard(f"is truncated or corrupt ({err})") from None
    if table.schema != READ_SCHEMA:  # all-null columns come back as type null
        table = table.cast(READ_SCHEMA)
    for name in ("question_id", "candidate_index"):
        if table[name].null_count:
            raise ValueError(f"verify shard {path}: field '{name}' has null values; re-run the verify stage for it.")
    # row groups bring their own dictionaries: one shared dictionary per column, one chunk per column
    return table.unify_dictionaries().combine_chunks()


def chat_messages(prompt: pa.Array, text: pa.Array) -> pa.Array:
    """[user: prompt, assistant: text] per row, in the SFT schema's message type."""
    n = len(prompt)
    content = pa.concat_arrays([prompt, text]).take(pa.array(np.arange(2 * n).reshape(2, n).T.ravel()))
    role = pa.array(["user", "assistant"]).take(pa.array(np.tile([0, 1], n)))
    turns = pa.StructArray.from_arrays([role, content], fields=list(records.MESSAGE))
    return pa.ListArray.from_arrays(pa.array(np.arange(0, 2 * n + 1, 2, dtype=np.int32)), turns)


def _shard_questions(table: pa.Table) -> pa.Table:
    """One row per question_id: its smallest question digest (ids repeat per candidate) and domain."""
    qids, texts = table["question_id"].chunk(0), table["question"].chunk(0)
    # each distinct question text is normalised once; a null question counts as "" (the extra last entry)
    distinct = pa.concat_arrays([texts.dictionary, pa.array([""])])
    distinct = selection.as_keys(selection.normalised_digests(distinct, fold_case=True))
    row_digest = distinct[pc.fill_null(texts.indices, len(texts.dictionary)).to_numpy()]
    qidx = qids.indices.to_numpy()
    by_id = np.lexsort((row_digest, qidx))
    first = by_id[selection.run_starts(qidx[by_id])]
    return pa.table(
        [
            qids.dictionary.take(pa.array(qidx[first])),
            selection.keys_array(row_digest[first]),
            pc.fill_null(table["domain"].take(pa.array(first)), "unknown"),
        ],
        schema=QUESTION_FIELDS,
    )


@dataclass
class SkippedShards:
    """Unreadable verify shards: an error, or with merge.allow_missing a warning and a record."""

    allow_missing: bool
    shards: list[dict] = field(default_factory=list)

    def add(self, path: Path, reason: str) -> None:
        if not self.allow_missing:
            raise shard_error(path, reason)
        log.warning(f"skipping verify shard {path}: {reason} (merge.allow_missing=true)")
        self.shards.append({"shard": path.name, "reason": reason})


@dataclass
class ShardPass:
    """What the pass over the shards builds up: funnel counts, spilled SFT messages, the picks' metadata."""

    cfg: RunConfig
    limit: int | None  # candidates kept per question (None: all)
    spill: Spill
    counts: funnel.Counts = field(default_factory=funnel.Counts)
    index: Index | None = None  # the eval questions (decontaminate.enabled), else no test
    contaminated: list[dict] = field(default_factory=list)  # one record per (candidate, eval question) overlap
    question_parts: list[pa.Table] = field(default_factory=list)
    candidate_parts: list[pa.Table] = field(default_factory=list)
    rows: int = 0  # candidates picked so far: the next pick's row number in the spill


@dataclass
class Picks:
    """Every shard's picks and the merge decision over them (aligned with `candidates`)."""

    questions: pa.Table
    candidates: pa.Table
    result: selection.Resolution
    bucket_ids: list[int]  # spill buckets that hold messages


def _count_shard(table: pa.Table, cfg: RunConfig, counts: funnel.Counts, votes) -> np.ndarray:
    """Add a shard's funnel counts; returns the mask of its valid candidates."""
    stages = cfg.verify.stages
    masks = selection.stage_funnel(table, cfg.merge, stages, votes)
    valid = masks[list(masks)[-1]]
    status = pc.fill_null(table["status"], "")
    counts.add_rows(
        pc.fill_null(table["domain"], "unknown"),
        {"candidates": np.ones(table.num_rows, bool), "valid": valid}
        | {name: pc.equal(status, name).to_numpy(zero_copy_only=False) for name in ("filtered", "skipped")}
        | funnel.skip_stats(table)
        | {f"passed_{stage}": masks[stage] for stage in selection.enabled_stages(cfg.merge, stages)}
        | funnel.vote_stats(table, stages),
    )
    return valid


def _scan_shard(table: pa.Table, index: int, state: ShardPass) -> pa.Table:
    """Thresholds and local selection for one shard; spills the picks, returns their metadata."""
    votes = selection.stage_votes(table)
    valid = _count_shard(table, state.cfg, state.counts, votes)
    if state.index is not None:
        flagged = contamination.flag_candidates(table, valid, index, state.index, state.cfg, state.contaminated)
        state.counts.add_rows(pc.fill_null(table["domain"], "unknown"), {"contaminated_solutions": flagged})
        if state.cfg.decontaminate.solutions:
            valid = valid & ~flagged  # dropped before selection: another candidate of the question may be kept
    qids = table["question_id"].chunk(0)
    codes = qids.indices.to_numpy()
    cidx = table["candidate_index"].to_numpy()
    passing = np.flatnonzero(valid)
    picks = passing[selection.first_per_question(codes[passing], cidx[passing], state.limit)]
    id_hashes = np.array([id_hash(q) for q in qids.dictionary.to_pylist()], np.uint64)
    buckets = state.spill.bucket_of(id_hashes[codes[picks]])
    by_bucket = np.argsort(buckets, kind="stable")  # one take of the texts, then a slice per bucket
    picks, buckets = picks[by_bucket], buckets[by_bucket]
    text = table["text"].chunk(0).take(pa.array(picks))
    messages = chat_messages(table["prompt"].chunk(0).take(pa.array(picks)).cast(pa.string()), text)
    state.spill.add(np.arange(state.rows, state.rows + len(picks), dtype=np.int64), messages, buckets)
    yes, total = selection.votes_summed(votes, table.num_rows)
    return pa.table(
        [
            qids.dictionary.take(pa.array(codes[picks])),
            pa.array(cidx[picks], pa.int32()),
            pc.fill_null(table["domain"], "unknown").take(picks),
            pa.array(np.full(len(picks), index, np.int32)),
            pa.array(yes[picks]),
            pa.array(total[picks]),
            selection.normalised_digests(text),
            pa.array(id_hashes[codes[picks]], pa.uint64()),
        ],
        schema=CANDIDATE_FIELDS,
    )


def _readable_shards(paths: list[Path], skipped: SkippedShards) -> list[int]:
    """Indices of the shards whose footer reads: fail (or skip) before the long pass."""
    readable = []
    for index, path in enumerate(paths):
        try:
            check_shard(path)
            readable.append(index)
        except UnreadableShard as err:
            skipped.add(path, str(err))
    return readable


def _scan_shards(paths: list[Path], readable: list[int], state: ShardPass, skipped: SkippedShards) -> None:
    """Every readable shard in index order, the next one read while this one is scanned."""
    # decoding parquet releases the GIL: one reader thread keeps the next shard coming
    reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="merge-read")
    try:
        pending = [reader.submit(read_shard, paths[index]) for index in readable[:1]]
        for position, index in enumerate(readable):
            if position + 1 < len(readable):
                pending.append(reader.submit(read_shard, paths[readable[position + 1]]))
            try:
                table = pending.pop(0).result()
            except UnreadableShard as err:
                skipped.add(paths[index], str(err))
                continue
            candidates = _scan_shard(table, index, state)
            state.question_parts.append(_shard_questions(table))
            state.candidate_parts.append(candidates)
            state.rows += candidates.num_rows
            log.debug(f"merge scanned shard={index} rows={table.num_rows} picked={candidates.num_rows}")
    finally:
        reader.shutdown(cancel_futures=True)


def _resolve(state: ShardPass) -> Picks:
    """Question groups, selection and dedup over every shard's picks."""
    questions = pa.concat_tables([QUESTION_FIELDS.empty_table(), *state.question_parts])
    candidates = pa.concat_tables([CANDIDATE_FIELDS.empty_table(), *state.candidate_parts]).combine_chunks()
    merge_cfg = state.cfg.merge
    result = selection.resolve(questions, candidates, state.limit, merge_cfg.group_questions, merge_cfg.dedup_solutions)
    return Picks(questions, candidates, result, bucket_ids=state.spill.close())


def merge_shards(
    paths: Sequence[str | Path],
    cfg: RunConfig,
    out_dir: str | Path,
    index: Index | None = None,
    seeds_dropped: dict[str, int] | None = None,
) -> dict:
    """Merge verify shards (shard i = paths[i]) into out_dir/sft/{train,validation}.parquet and stats.json.

    index: the eval questions valid candidates are tested against (decontaminate); overlaps go to
    out_dir/contaminated.jsonl. seeds_dropped: per domain, the seeds the launch dropped as contaminated.
    Returns the stats. The SFT rows are written as they are produced, never held all at once.
    """
    out_dir, paths = Path(out_dir), [Path(p) for p in paths]
    skipped = SkippedShards(cfg.merge.allow_missing)
    readable = _readable_shards(paths, skipped)
    input_bytes = sum(paths[i].stat().st_size for i in readable)
    buckets = min(MAX_BUCKETS, max(1, -(-input_bytes // BUCKET_TARGET_BYTES)))
    state = ShardPass(cfg, selection.selection_limit(cfg.merge), Spill(out_dir / ".spill", buckets), index=index)
    for domain, count in (seeds_dropped or {}).items():
        state.counts.by_domain[domain]["contaminated_seeds"] += count
    try:
        _scan_shards(paths, readable, state, skipped)
        picks = _resolve(state)
        written = _write_sft(out_dir / "sft", state, picks)
    finally:
        shutil.rmtree(state.spill.folder, ignore_errors=True)
    stats = funnel.summary(state.counts, cfg, skipped.shards, written)
    if index is not None:
        kept = picks.candidates.filter(pa.array(picks.result.kept))
        stats["decontamination"] = contamination.summary(state.contaminated, kept, index, cfg, stats["overall"])
        contamination.write_list(out_dir / "contaminated.jsonl", state.contaminated)
    atomic_write_json(out_dir / "stats.json", stats)
    overall = stats["overall"]
    log.info(
        f"merge kept={overall['kept']} of candidates={overall['candidates']} valid={overall['valid']} "
        f"shards={len(paths)} skipped={len(skipped.shards)}"
    )
    if not overall["kept"]:
        # an empty parquet is valid, but datasets.load_dataset refuses it: say so where it starts
        log.warning("merge kept no candidate; merge/stats.json shows the stage where they were lost")
    return stats


def _validation_rows(picks: Picks, state: ShardPass) -> np.ndarray:
    """Per candidate, whether its question group is held out for validation; adds the last counts.

    merge.domain_weights thins result.kept here, after dedup and before the split.
    """
    result, domain = picks.result, picks.candidates["domain"]
    qids = result.question_ids
    state.counts.add_questions(picks.questions, qids, result.duplicate_questions)
    state.counts.add_rows(domain, {"selected": result.selected, "duplicate_solutions": result.selected & ~result.kept})
    weights = state.cfg.merge.domain_weights
    if weights and len(picks.candidates):
        out = selection.weighted_out(
            result.kept,
            domain.to_pylist(),
            picks.candidates["question_id"].to_pylist(),
            picks.candidates["candidate_index"].to_pylist(),
            weights,
        )
        state.counts.add_rows(domain, {"weighted_out": out})
        result.kept = result.kept & ~out  # what _write_sft writes
    held_out = np.zeros(len(qids), bool)
    fraction = state.cfg.merge.validation_fraction
    if fraction > 0:
        leaders = np.unique(result.question_group)
        threshold = fraction * 2.0**64
        chosen = [id_hash(q, key=b"validation") < threshold for q in qids.take(pa.array(leaders)).to_pylist()]
        held_out[leaders[np.array(chosen, bool)]] = True
    in_validation = (
        held_out[result.question_group[result.candidate_rank]] if len(picks.candidates) else np.zeros(0, bool)
    )
    state.counts.add_rows(
        domain,
        {"kept": result.kept, "train": result.kept & ~in_validation, "validation": result.kept & in_validation},
    )
    return in_validation


def _write_sft(sft_dir: Path, state: ShardPass, picks: Picks) -> dict[str, int]:
    """Kept rows, bucket by bucket, in output order, into train (and validation) parquet."""
    sft_dir.mkdir(parents=True, exist_ok=True)
    validation_row = _validation_rows(picks, state)
    result, candidates = picks.result, picks.candidates
    train = RowGroupWriter(sft_dir / "train.parquet", records.SFT)
    validation = (
        RowGroupWriter(sft_dir / "validation.parquet", records.SFT) if state.cfg.merge.validation_fraction > 0 else None
    )
    cidx = candidates["candidate_index"].to_numpy().astype(np.int64)
    shard = candidates["shard"].to_numpy().astype(np.int64)
    order_hash = candidates["order_hash"].to_numpy()
    for bucket in picks.bucket_ids:
        part = state.spill.read(bucket)
        rows = part["row"].to_numpy()
        keep = result.kept[rows]
        rows = rows[keep]
        order = np.lexsort((shard[rows], cidx[rows], result.candidate_rank[rows], order_hash[rows]))
        take, rows = np.flatnonzero(keep)[order], rows[order]
        messages = part["messages"].combine_chunks()  # one batch per shard: take from one array instead
        for start in range(0, len(rows), ROW_GROUP_ROWS):  # copy out a row group's worth at a time
            piece = slice(start, start + ROW_GROUP_ROWS)
            meta = candidates.take(pa.array(rows[piece]))
            sft = pa.table(
                [messages.take(pa.array(take[piece]))]
                + [meta[name] for name in ("question_id", "candidate_index", "domain", "votes_yes", "votes_total")],
                schema=records.SFT,
            )
            if validation is None:
                train.add(sft)
            else:
                in_validation = pa.array(validation_row[rows[piece]])
                train.add(sft.filter(pc.invert(in_validation)))
                validation.add(sft.filter(in_validation))
        del part, messages
    written = {"train": train.close()}
    if validation is not None:
        written["validation"] = validation.close()
    return written


def run_task(run: RunDir, index: int) -> dict:
    """The merge stage body: one task (index 0) over all verify shards of the run."""
    cfg = run.load_config()
    paths = [run.shard_path("verify", i) for i in range(cfg.seeds.shards)]
    index = contamination_index(cfg)
    with atomic_path(run.stage_dir("merge")) as tmp:
        stats = merge_shards(paths, cfg, tmp, index, contamination.seeds_dropped(run) if index is not None else None)
        funnel.chart(stats, tmp / "funnel.png")
    funnel.print_table(stats)
    hub.publish_dataset(run, cfg)  # once, here, not per task; a failed push is recorded, the run goes on
    return {"kept": stats["overall"]["kept"], "skipped_shards": len(stats["skipped_shards"])}
