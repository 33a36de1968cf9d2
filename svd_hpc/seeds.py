"""Seed questions: load them (JSONL, parquet, a local HF dataset, or a hub id), check them, drop
duplicate questions, and split them once at launch into <run>/seeds/shard-NNNNN.parquet.

Every problem a user can cause is reported before anything is submitted, in one sentence naming
the file, the line or row, and the field. Question text is stripped of surrounding whitespace and
otherwise passes through byte for byte; questions that differ only in case or in runs of
whitespace are one question (the first is kept, the rest counted in the seed stats).
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from . import staging
from .config import RunConfig, SeedsConfig
from .records import SEED
from .rundir import RunDir, atomic_path, atomic_write_json

log = logging.getLogger("svd_hpc")

DOMAINS = ("math", "science", "code")
JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")


def question_id(question: str) -> str:
    """The id of a question without an id field: a hash of its text, stable across runs."""
    return hashlib.sha256(question.encode()).hexdigest()[:16]


def duplicate_key(question: str) -> str:
    """What two questions share when they differ only in case or whitespace."""
    return " ".join(question.split()).casefold()


def detect_format(seeds: SeedsConfig) -> str:
    if seeds.format != "auto":
        return seeds.format
    path = Path(seeds.path).expanduser()
    if path.is_dir():
        return "hf"
    if path.suffix.lower() in JSONL_SUFFIXES:
        return "jsonl"
    if path.suffix.lower() == ".parquet":
        return "parquet"
    if path.exists():
        raise ValueError(f"seeds.path {seeds.path}: unknown file type; use .jsonl or .parquet, or set seeds.format.")
    # a missing file, unless it reads as "owner/name" (hub names may hold dots: AI-MO/NuminaMath-1.5)
    is_file_name = path.suffix.lower() in (*JSONL_SUFFIXES, ".parquet", ".csv", ".arrow")
    if is_file_name or seeds.path.startswith((".", "/", "~")) or seeds.path.count("/") > 1:
        raise ValueError(
            f"seeds.path {seeds.path} does not exist; check the path (relative paths start at the current directory)."
        )
    return "hf"  # "owner/name": a dataset on the hub


def is_hub_dataset(seeds: SeedsConfig) -> bool:
    """Whether the seeds come from a hub dataset (staged at launch, read at seeds.revision)."""
    return detect_format(seeds) == "hf" and not Path(seeds.path).expanduser().exists()


def _read_jsonl(path: Path) -> tuple[list[dict], list[str]]:
    """Rows of a JSON-lines file and, for messages, where each came from ("file line N")."""
    rows, where = [], []
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError:
                raise ValueError(f"{path} line {number}: not valid UTF-8; re-save the file as UTF-8.") from None
            if not line.strip():
                continue
            if number == 1 and line.lstrip().startswith("["):
                raise ValueError(f"{path} is one JSON array; write one JSON object per line (JSONL) instead.")
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path} line {number}: invalid JSON ({err.msg}); fix or remove the line.") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path} line {number}: expected a JSON object, got {type(row).__name__}.")
            rows.append(row)
            where.append(f"{path} line {number}")
    return rows, where


def _read_table(seeds: SeedsConfig, fmt: str) -> tuple[list[dict], list[str]]:
    if fmt == "parquet":
        path = Path(seeds.path).expanduser()
        if not path.is_file():
            raise ValueError(f"seeds.path {seeds.path} does not exist; check the path.")
        table = pq.read_table(path)
        label = str(path)
    else:
        table, label = _read_hf(seeds)
    fields = [f for f in (seeds.question_field, seeds.id_field, seeds.domain_field) if f]
    for name in fields:
        if name not in table.column_names:
            raise ValueError(
                f"{label} has no field '{name}' (named in seeds config); "
                f"its fields are: {', '.join(table.column_names)}."
            )
    rows = table.select(fields).to_pylist()
    return rows, [f"{label} row {i}" for i in range(len(rows))]


def _read_hf(seeds: SeedsConfig) -> tuple[pa.Table, str]:
    path = Path(seeds.path).expanduser()
    try:
        # a hub dataset is read from its snapshot at the pinned revision, the files staging fetched
        source = path if path.is_dir() else staging.snapshot(seeds.path, "dataset", seeds.revision)
        data = read_dataset_split(source, seeds.hf_config, seeds.split, f"seeds.path {seeds.path}", "seeds.split")
    except MissingSplit:
        raise
    except Exception as err:  # the hub client raises many kinds; all mean "cannot get it"
        raise ValueError(
            f"seeds.path {seeds.path}: cannot load the dataset ({err}); check the id, path and access."
        ) from None
    # through the arrow formatter, so a dataset saved after select/shuffle keeps its row order
    return data.with_format("arrow")[:], f"{seeds.path} [{seeds.split}]"


class MissingSplit(ValueError):
    """A dataset folder lacks the configured split."""


def read_dataset_split(path: Path, hf_config: str | None, split: str, where: str, split_key: str = ""):
    """The `split` of a dataset folder: one written by `save_to_disk`, or one `datasets.load_dataset`
    reads (a downloaded hub snapshot). MissingSplit names `where` (and the config key `split_key`)
    and the splits there are; anything else is the library's own error."""
    import datasets

    if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
        data = datasets.load_from_disk(str(path))
    else:
        data = datasets.load_dataset(str(path), hf_config)
    if isinstance(data, (datasets.DatasetDict, dict)):
        if split not in data:
            key = f" ({split_key})" if split_key else ""
            raise MissingSplit(f"{where} has no split '{split}'{key}; splits: {', '.join(data)}.")
        data = data[split]
    return data


def load_with_report(seeds: SeedsConfig) -> tuple[pa.Table, dict]:
    """The checked seed table (SEED schema, duplicates dropped, limit applied) and counts."""
    fmt = detect_format(seeds)
    if fmt == "jsonl":
        path = Path(seeds.path).expanduser()
        if not path.is_file():
            raise ValueError(f"seeds.path {seeds.path} does not exist; check the path.")
        rows, where = _read_jsonl(path)
    else:
        rows, where = _read_table(seeds, fmt)
    if not rows:
        raise ValueError(f"seeds.path {seeds.path} holds no questions; point seeds.path at a non-empty set.")

    out = {name: [] for name in SEED.names}
    seen_questions: set[str] = set()
    seen_ids: dict[str, str] = {}
    duplicates = stripped = 0
    for index, (row, place) in enumerate(zip(rows, where)):
        question = row.get(seeds.question_field)
        if question is None:
            raise ValueError(f"{place}: field '{seeds.question_field}' (seeds.question_field) is missing.")
        if not isinstance(question, str):
            raise ValueError(f"{place}: field '{seeds.question_field}' must be text, got {type(question).__name__}.")
        if not question.strip():
            raise ValueError(f"{place}: field '{seeds.question_field}' is empty; remove the row or fill it in.")
        if question != question.strip():
            stripped += 1
            question = question.strip()
        # a user who fixed a typo's case or spacing in a copy still means one question, and
        # merge would otherwise train on it twice
        key = duplicate_key(question)
        if key in seen_questions:
            duplicates += 1
            continue
        seen_questions.add(key)
        qid = question_id(question)
        if seeds.id_field:
            raw = row.get(seeds.id_field)
            if raw is None or isinstance(raw, (dict, list)) or str(raw) == "":
                raise ValueError(f"{place}: field '{seeds.id_field}' (seeds.id_field) is missing or not a plain value.")
            qid = str(raw)
            if qid in seen_ids:
                raise ValueError(
                    f"{place}: id '{qid}' is used again for a different question (first at {seen_ids[qid]})."
                )
            seen_ids[qid] = place
        domain = seeds.domain
        if seeds.domain_field:
            domain = row.get(seeds.domain_field)
            if domain not in DOMAINS:
                raise ValueError(
                    f"{place}: field '{seeds.domain_field}' is {domain!r}; use one of {', '.join(DOMAINS)}."
                )
        out["question_id"].append(qid)
        out["question"].append(question)
        out["domain"].append(domain)
        out["source_index"].append(index)
    table = pa.Table.from_pydict(out, schema=SEED)
    if seeds.limit is not None:
        table = table.slice(0, seeds.limit)
    if duplicates:
        log.warning(f"seeds: dropped {duplicates} duplicate question(s), up to case and whitespace, from {seeds.path}")
    stats = {"seeds": table.num_rows, "duplicates_dropped": duplicates, "questions_stripped": stripped}
    return table, {**stats, "rows_read": len(rows), "format": fmt}


def load(seeds: SeedsConfig) -> pa.Table:
    """The checked seed table (SEED schema); raises ValueError naming the file, line and field."""
    return load_with_report(seeds)[0]


def shard_bounds(n: int, shards: int) -> list[tuple[int, int]]:
    """Contiguous [start, stop) slices of n rows over `shards` shards, sizes differing by at most one."""
    return [(i * n // shards, (i + 1) * n // shards) for i in range(shards)]


def prepare(cfg: RunConfig, run: RunDir) -> dict:
    """Split the seeds into cfg.seeds.shards shard files in the run directory, once.

    The stats file is written last; once it exists with the same shard count, later calls
    (resume) return it without reading the seed source again.
    """
    stats_path = run.stage_dir("seeds") / "stats.json"
    previous = run.load_json(stats_path)
    shards = cfg.seeds.shards
    if (
        previous
        and previous.get("shards") == shards
        and all(run.shard_path("seeds", i).is_file() for i in range(shards))
    ):
        return previous
    table, stats = load_with_report(cfg.seeds)
    if table.num_rows < shards:
        log.warning(f"seeds: {table.num_rows} questions over {shards} shards; some shards are empty")
    sizes = []
    for i, (start, stop) in enumerate(shard_bounds(table.num_rows, shards)):
        with atomic_path(run.shard_path("seeds", i)) as tmp:
            pq.write_table(table.slice(start, stop - start), tmp)
        sizes.append(stop - start)
    stats.update(shards=shards, shard_sizes=sizes, path=cfg.seeds.path)
    atomic_write_json(stats_path, stats)
    log.info(
        f"seeds: {stats['seeds']} questions in {shards} shard(s), {stats['duplicates_dropped']} duplicates dropped"
    )
    return stats
