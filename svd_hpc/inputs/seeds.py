"""Seed questions: load them (JSONL, parquet, a local HF dataset, or a hub id; one source or
several, e.g. one per domain), check them, drop duplicate questions, and split them once at launch
into <run>/seeds/shard-NNNNN.parquet.

Every problem a user can cause is reported before anything is submitted, in one sentence naming
the file, the line or row, and the field. Question text is stripped of surrounding whitespace and
otherwise passes through byte for byte; questions that differ only in case or in runs of
whitespace are one question (the first is kept, the rest counted in the seed stats).

Domains: the questions are put in one order where each domain's questions keep their source order
and every prefix holds each domain in its share (`interleave`); shards are slices of that order
(seeds.mix_domains), or each domain gets its share of the shards (`shard_layout`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..config import DOMAINS, RunConfig, SeedsConfig, SeedSource
from ..records import SEED, question_id
from ..rundir.atomic import atomic_path, atomic_write_json, atomic_write_text
from ..rundir.layout import RunDir
from . import staging
from .decontam import Index
from .fields import column_at, equals, filter_mask, value_at
from .sources import JSONL_SUFFIXES, MissingSplit, read_dataset_split, read_jsonl

log = logging.getLogger("svd_hpc")


def duplicate_key(question: str, exact: bool = False) -> str:
    """What two questions share when they differ only in case or whitespace (exact: the same text only)."""
    return question if exact else " ".join(question.split()).casefold()


def detect_format(seeds: SeedSource, key: str = "seeds") -> str:
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
        raise ValueError(f"{key}.path {seeds.path}: unknown file type; use .jsonl or .parquet, or set seeds.format.")
    # a missing file, unless it reads as "owner/name" (hub names may hold dots: AI-MO/NuminaMath-1.5)
    is_file_name = path.suffix.lower() in (*JSONL_SUFFIXES, ".parquet", ".csv", ".arrow")
    if is_file_name or seeds.path.startswith((".", "/", "~")) or seeds.path.count("/") > 1:
        raise ValueError(
            f"{key}.path {seeds.path} does not exist; check the path (relative paths start at the current directory)."
        )
    return "hf"  # "owner/name": a dataset on the hub


def is_hub_dataset(seeds: SeedSource) -> bool:
    """Whether the seeds come from a hub dataset (staged at launch, read at seeds.revision)."""
    return detect_format(seeds) == "hf" and not Path(seeds.path).expanduser().exists()


def _fields(seeds: SeedSource) -> list[str]:
    """The fields a source's rows are read for (the filter field is read apart)."""
    return [f for f in (seeds.question_field, seeds.id_field, seeds.domain_field, seeds.answer_field) if f]


def _read_table(seeds: SeedSource, fmt: str, key: str) -> tuple[list[dict], list[str], int]:
    if fmt == "parquet":
        path = Path(seeds.path).expanduser()
        if not path.is_file():
            raise ValueError(f"{key}.path {seeds.path} does not exist; check the path.")
        table = pq.read_table(path)
        label = str(path)
    else:
        table, label = _read_hf(seeds, key)
    rows_read = table.num_rows
    # each field resolved before any row is read, so a wrong name fails before a long read
    columns = {name: column_at(table, name, label, f"{key} config") for name in _fields(seeds)}
    kept = range(rows_read)
    if seeds.filter_field:
        on = column_at(table, seeds.filter_field, label, f"{key}.filter_field")
        mask = filter_mask(on, seeds.filter_value, label, seeds.filter_field, f"{key}.filter_field")
        kept = pc.indices_nonzero(mask).to_pylist()
        _no_row_kept(kept, seeds, key, on.slice(0, 1000).to_pylist())
        columns = {name: column.filter(mask) for name, column in columns.items()}
    rows = pa.table(columns).to_pylist() if columns else []
    return rows, [f"{label} row {i}" for i in kept], rows_read


def _no_row_kept(kept, seeds: SeedSource, key: str, sample: list) -> None:
    """ValueError when the filter keeps no row, with some of the values the field holds."""
    if len(kept):
        return
    seen = sorted({str(v) for v in sample if v is not None})[:8]
    raise ValueError(
        f"{key}.path {seeds.path}: no row has {seeds.filter_field} = '{seeds.filter_value}' "
        f"({key}.filter_field/filter_value); values seen: {', '.join(seen) or 'none'}."
    )


def _read_hf(seeds: SeedSource, key: str) -> tuple[pa.Table, str]:
    path = Path(seeds.path).expanduser()
    try:
        # a hub dataset is read from its snapshot at the pinned revision, the files staging fetched
        source = path if path.is_dir() else staging.snapshot(seeds.path, "dataset", seeds.revision)
        data = read_dataset_split(source, seeds.hf_config, seeds.split, f"{key}.path {seeds.path}", f"{key}.split")
    except MissingSplit:
        raise
    except Exception as err:  # the hub client raises many kinds; all mean "cannot get it"
        raise ValueError(
            f"{key}.path {seeds.path}: cannot load the dataset ({err}); check the id, path and access."
        ) from None
    # through the arrow formatter, so a dataset saved after select/shuffle keeps its row order
    return data.with_format("arrow")[:], f"{seeds.path} [{seeds.split}]"


def source_key(seeds: SeedsConfig, index: int) -> str:
    """How source `index` is written in the config: `seeds`, or `seeds.sources[i]`."""
    return f"seeds.sources[{index}]" if seeds.sources else "seeds"


def _read_source(source: SeedSource, key: str) -> tuple[list[dict], list[str], str, int]:
    """A source's rows (its filter applied, each row holding its fields by the names the config
    gives them), where each came from, its format and how many rows it had before the filter."""
    fmt = detect_format(source, key)
    if fmt == "jsonl":
        path = Path(source.path).expanduser()
        if not path.is_file():
            raise ValueError(f"{key}.path {source.path} does not exist; check the path.")
        rows, where = read_jsonl(path)
        rows_read = len(rows)
        if source.filter_field:
            pairs = [
                (row, place)
                for row, place in zip(rows, where)
                if equals(value_at(row, source.filter_field, place, f"{key}.filter_field"), source.filter_value)
            ]
            _no_row_kept(pairs, source, key, [value_at(r, source.filter_field, "", "") for r in rows[:1000]])
            rows, where = [r for r, _ in pairs], [p for _, p in pairs]
        rows = [
            {name: value_at(row, name, place, f"{key} config") for name in _fields(source) if _holds(row, name)}
            for row, place in zip(rows, where)
        ]
    else:
        rows, where, rows_read = _read_table(source, fmt, key)
    if not rows_read:
        raise ValueError(f"{key}.path {source.path} holds no questions; point {key}.path at a non-empty set.")
    return rows, where, fmt, rows_read


def _holds(row: dict, name: str) -> bool:
    """Whether a JSON row has the field's first step (so a row lacking the answer key stays without it)."""
    return name in row or name.split(".")[0] in row


def _reference(row: dict, source: SeedSource, place: str, key: str) -> str | None:
    """The row's known answer as text (seeds.answer_field), or None without one."""
    if not source.answer_field:
        return None
    raw = row.get(source.answer_field)
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return None  # a set may know some answers only; the report counts the rest as unknown
    if isinstance(raw, (dict, list, bool)):
        raise ValueError(f"{place}: field '{source.answer_field}' ({key}.answer_field) must be text or a number.")
    return str(raw).strip()


@dataclass
class _Seen:
    """What earlier sources kept: their questions (up to case and whitespace) and ids."""

    questions: set[str] = field(default_factory=set)
    ids: dict[str, str] = field(default_factory=dict)
    duplicates: int = 0
    stripped: int = 0
    exact: bool = False  # seeds.dedup: exact


def _source_table(source: SeedSource, key: str, seen: _Seen) -> tuple[pa.Table, dict]:
    """One source's checked questions (SEED schema), without those earlier sources kept, its limit applied."""
    rows, where, fmt, rows_read = _read_source(source, key)
    if source.answer_field and not any(source.answer_field in row for row in rows):
        raise ValueError(
            f"{key}.path {source.path}: no row has the field '{source.answer_field}' ({key}.answer_field); "
            "check the name, or set it to null."
        )
    out = {name: [] for name in SEED.names}
    own_questions: set[str] = set()
    own_ids: dict[str, str] = {}
    places = []
    for index, (row, place) in enumerate(zip(rows, where)):
        question = row.get(source.question_field)
        if question is None:
            nested = " (its path does not resolve in this row)" if "." in source.question_field else ""
            raise ValueError(f"{place}: field '{source.question_field}' ({key}.question_field) is missing{nested}.")
        if not isinstance(question, str):
            raise ValueError(f"{place}: field '{source.question_field}' must be text, got {type(question).__name__}.")
        if not question.strip():
            raise ValueError(f"{place}: field '{source.question_field}' is empty; remove the row or fill it in.")
        if question != question.strip():
            seen.stripped += 1
            question = question.strip()
        # a user who fixed a typo's case or spacing in a copy still means one question, and
        # merge would otherwise train on it twice
        dup = duplicate_key(question, seen.exact)
        if dup in own_questions or dup in seen.questions:
            seen.duplicates += 1
            continue
        own_questions.add(dup)
        qid = question_id(question)
        if source.id_field:
            raw = row.get(source.id_field)
            if raw is None or isinstance(raw, (dict, list)) or str(raw) == "":
                raise ValueError(
                    f"{place}: field '{source.id_field}' ({key}.id_field) is missing or not a plain value."
                )
            qid = str(raw)
            if qid in own_ids:
                raise ValueError(
                    f"{place}: id '{qid}' is used again for a different question (first at {own_ids[qid]})."
                )
            own_ids[qid] = place
        domain = source.domain
        if source.domain_field:
            domain = row.get(source.domain_field)
            if domain not in DOMAINS:
                raise ValueError(
                    f"{place}: field '{source.domain_field}' is {domain!r}; use one of {', '.join(DOMAINS)}."
                )
        out["question_id"].append(qid)
        out["question"].append(question)
        out["domain"].append(domain)
        out["source_index"].append(index)
        out["reference"].append(_reference(row, source, place, key))
        places.append(place)
    table = pa.Table.from_pydict(out, schema=SEED)
    if source.limit is not None:
        table = table.slice(0, source.limit)
    for qid, question, place in zip(table["question_id"].to_pylist(), table["question"].to_pylist(), places):
        if qid in seen.ids:  # ids of one source were checked above; across sources only what is kept counts
            raise ValueError(f"{place}: id '{qid}' is also the id of a question at {seen.ids[qid]}; ids must differ.")
        seen.ids[qid] = place
        seen.questions.add(duplicate_key(question, seen.exact))
    report = {"path": source.path, "format": fmt, "rows_read": rows_read, "seeds": table.num_rows}
    if source.filter_field:
        report["filtered_out"] = rows_read - len(rows)
    return table, report


def load_with_report(seeds: SeedsConfig) -> tuple[pa.Table, dict]:
    """The checked seed table (SEED schema, duplicates dropped, limits applied, domains interleaved) and counts."""
    seen = _Seen(exact=seeds.dedup == "exact")
    parts, reports = [], []
    for i, source in enumerate(seeds.source_list()):
        table, report = _source_table(source, source_key(seeds, i), seen)
        parts.append(table)
        reports.append(report)
    table = interleave(pa.concat_tables(parts))
    if seeds.sources and seeds.limit is not None:
        table = table.slice(0, seeds.limit)
    shard_layout(table["domain"].to_pylist(), seeds.shards, seeds.mix_domains)  # refuses a layout that cannot be
    if seen.duplicates:
        where = ", ".join(r["path"] for r in reports)
        log.warning(f"seeds: dropped {seen.duplicates} duplicate question(s), up to case and whitespace, from {where}")
    domains = table["domain"].to_pylist()
    stats = {
        "seeds": table.num_rows,
        "duplicates_dropped": seen.duplicates,
        "questions_stripped": seen.stripped,
        "per_domain": {d: domains.count(d) for d in DOMAINS if d in domains},
    }
    if any("filtered_out" in r for r in reports):
        stats["filtered_out"] = sum(r.get("filtered_out", 0) for r in reports)
    if seeds.sources:
        stats["sources"] = reports
    return table, {**stats, "rows_read": sum(r["rows_read"] for r in reports), "format": reports[0]["format"]}


def interleave(table: pa.Table) -> pa.Table:
    """The questions in one order where each domain keeps its own order and every prefix holds each
    domain in its share of the whole (to within one question).

    The j-th of a domain's c questions sits at (j + 0.5) / c of the way through; ties go in DOMAINS
    order. One domain: the order is unchanged.
    """
    domains = np.array(table["domain"].to_pylist(), dtype=object)
    if len(set(domains.tolist())) < 2:
        return table
    position = np.zeros(len(domains))
    rank = np.zeros(len(domains), np.int64)
    for r, domain in enumerate(DOMAINS):
        members = np.flatnonzero(domains == domain)
        position[members] = (np.arange(len(members)) + 0.5) / max(len(members), 1)
        rank[members] = r
    return table.take(pa.array(np.lexsort((rank, position))))


def shard_layout(domains: list[str], shards: int, mix_domains: bool) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """The row order and the [start, stop) slice of each shard, for rows of these domains in interleaved order.

    mix_domains: the order as it is, cut in shard_bounds slices. Otherwise rows grouped by domain
    (DOMAINS order, each keeping its order), and each domain gets shards in proportion to its rows
    (largest remainder, at least one each); ValueError when there are fewer shards than domains.
    """
    n = len(domains)
    if mix_domains:
        return np.arange(n), shard_bounds(n, shards)
    present = [d for d in DOMAINS if d in set(domains)]
    if len(present) > shards:
        raise ValueError(
            f"seeds.mix_domains is false and the seeds hold {len(present)} domains ({', '.join(present)}) "
            f"but seeds.shards is {shards}; set seeds.shards to at least {len(present)}, or seeds.mix_domains to true."
        )
    counts = [domains.count(d) for d in present]
    quota = [shards * c / n for c in counts]
    given = [max(1, int(q)) for q in quota]
    while sum(given) > shards:  # the ones raised to 1 took shards: return them from the most over quota
        i = max((i for i in range(len(given)) if given[i] > 1), key=lambda i: given[i] - quota[i])
        given[i] -= 1
    while sum(given) < shards:
        i = max(range(len(given)), key=lambda i: quota[i] - given[i])
        given[i] += 1
    column = np.array(domains, dtype=object)
    order = np.concatenate([np.flatnonzero(column == d) for d in present]) if present else np.arange(0)
    bounds, offset = [], 0
    for count, parts in zip(counts, given):
        bounds += [(offset + a, offset + b) for a, b in shard_bounds(count, parts)]
        offset += count
    if not present:
        bounds = shard_bounds(0, shards)
    return order, bounds


def write_shards(run: RunDir, table: pa.Table, seeds: SeedsConfig) -> list[int]:
    """Write `table` (in interleaved order) as the run's seed shards, laid out by seeds.mix_domains; their sizes."""
    order, bounds = shard_layout(table["domain"].to_pylist(), seeds.shards, seeds.mix_domains)
    table = table.take(pa.array(order, pa.int64()))
    sizes = []
    for i, (start, stop) in enumerate(bounds):
        with atomic_path(run.shard_path("seeds", i)) as tmp:
            pq.write_table(table.slice(start, stop - start), tmp)
        sizes.append(stop - start)
    return sizes


def load(seeds: SeedsConfig) -> pa.Table:
    """The checked seed table (SEED schema); raises ValueError naming the file, line and field."""
    return load_with_report(seeds)[0]


def shard_bounds(n: int, shards: int) -> list[tuple[int, int]]:
    """Contiguous [start, stop) slices of n rows over `shards` shards, sizes differing by at most one."""
    return [(i * n // shards, (i + 1) * n // shards) for i in range(shards)]


def drop_contaminated(table: pa.Table, index: Index) -> tuple[pa.Table, list[dict]]:
    """The seeds that overlap no eval question, and one record per (dropped seed, eval question) it overlaps."""
    keep, listed = [], []
    for qid, question, domain in zip(*(table[c].to_pylist() for c in ("question_id", "question", "domain"))):
        found = index.matches(question)
        keep.append(not found)
        listed += [{"seed_id": qid, "domain": domain, **m.as_json(), "question": question} for m in found]
    return table.filter(pa.array(keep, pa.bool_())), listed


def contaminated_path(run: RunDir):
    return run.stage_dir("seeds") / "contaminated.jsonl"


def prepare(cfg: RunConfig, run: RunDir, index: Index | None = None) -> dict:
    """Split the seeds into cfg.seeds.shards shard files in the run directory, once.

    index: the eval questions (eval.benchmarks.contamination_index); seeds that overlap one are dropped
    and listed in seeds/contaminated.jsonl. The stats file is written last; once it exists with the same
    shard count, later calls (resume) return it without reading the seed source again.
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
    if index is not None:
        table, listed = drop_contaminated(table, index)
        dropped = len({r["seed_id"] for r in listed})
        domains = table["domain"].to_pylist()
        stats.update(
            seeds=table.num_rows,
            contaminated_dropped=dropped,
            per_domain={d: domains.count(d) for d in DOMAINS if d in domains},
            decontaminate={"ngram": index.n, "eval_questions": index.questions},
        )
        atomic_write_text(contaminated_path(run), "".join(json.dumps(r) + "\n" for r in listed))
        if dropped:
            log.warning(f"seeds: dropped {dropped} seed(s) that overlap an eval question; see {contaminated_path(run)}")
    if table.num_rows < shards:
        log.warning(f"seeds: {table.num_rows} questions over {shards} shards; some shards are empty")
    sizes = write_shards(run, table, cfg.seeds)
    stats.update(shards=shards, shard_sizes=sizes, path=describe(cfg.seeds), mix_domains=cfg.seeds.mix_domains)
    atomic_write_json(stats_path, stats)
    # the launcher prints these stats as a table; at INFO the same numbers would show twice
    log.debug(
        f"seeds: {stats['seeds']} questions in {shards} shard(s), {stats['duplicates_dropped']} duplicates dropped"
    )
    return stats


def describe(seeds: SeedsConfig) -> str:
    """The seed source(s) in a few words, for messages and stats."""
    if not seeds.sources:
        return seeds.path
    return ", ".join(f"{s.path} ({s.domain_field or s.domain})" for s in seeds.sources)


def reads_hub(seeds: SeedsConfig) -> bool:
    """Whether some seed source is a hub dataset (a dry run does not download it)."""
    return any(is_hub_dataset(source) for source in seeds.source_list())
