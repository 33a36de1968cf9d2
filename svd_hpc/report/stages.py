"""What the stages kept and could not run: skipped requests, the merge funnel, the judges' votes."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..config import VERIFY_STAGES
from ..merge.funnel import count_names
from ..records import skip_kind
from ..rundir.layout import RunDir
from .section import Section

FUNNEL_ORDER = count_names(VERIFY_STAGES)
VOTE_KINDS = ("votes_", "no_verdict_", "cut_off_")


def _skipped_rows(paths: list[Path], columns: list[str], keep) -> list[dict]:
    """Rows of the shards at `paths` that `keep` picks (an Arrow mask of a table); unreadable shards are passed over."""
    rows = []
    for path in paths:
        try:
            table = pq.read_table(path, columns=columns)
        except (OSError, KeyError, pa.ArrowInvalid):
            continue
        rows += table.filter(keep(table)).to_pylist()
    return rows


def skipped_section(run: RunDir, table: pa.Table | None) -> Section:
    """Items the engine could not run (a prompt too long, a template or vLLM refusing it), per
    stage and reason, from the records: skipped, never silently dropped."""
    section = Section("Skipped requests", ["stage", "item", "reason", "count", "first example"])
    has_reason = lambda t: pc.invert(pc.is_null(t["skip_reason"]))  # noqa: E731
    generated = _skipped_rows(
        sorted(run.stage_dir("generate").glob("shard-*.parquet")),
        ["question_id", "candidate_index", "skip_reason"],
        lambda t: pc.and_(has_reason(t), pc.equal(t["candidate_index"], 0)),
    )
    judged = _skipped_rows(
        sorted(run.stage_dir("verify").glob("shard-*.parquet")),
        ["question_id", "candidate_index", "status", "failed_stage", "skip_reason"],
        lambda t: pc.and_(pc.equal(t["status"], "skipped"), pc.invert(pc.is_null(t["failed_stage"]))),
    )
    groups: dict[tuple[str, str], list[tuple[str, str]]] = defaultdict(list)
    for row in generated:
        groups[("generate", "question")].append((row["question_id"], row["skip_reason"]))
    for row in judged:
        groups[(f"verify ({row['failed_stage']})", "candidate")].append(
            (f"{row['question_id']}/{row['candidate_index']}", row["skip_reason"])
        )
    if table is not None:
        for row in (
            table.filter(has_reason(table))
            .select(["model", "mode", "benchmark", "question_id", "skip_reason"])
            .to_pylist()
        ):
            groups[(f"eval {row['model']} {row['mode']} {row['benchmark']}", "question")].append(
                (row["question_id"], row["skip_reason"])
            )
    for (stage, item), skips in groups.items():
        by_kind: dict[str, list[tuple[str, str]]] = defaultdict(list)
        for key, reason in skips:
            by_kind[skip_kind(reason)].append((key, reason))
        for kind, found in sorted(by_kind.items()):
            key, reason = found[0]
            example = f"`{key}`: {reason[:160]}".replace("|", "\\|").replace("\n", " ")
            section.rows.append([stage, item, kind, f"{len(found):,}", example])
    section.note = (
        "Requests the engine could not run are recorded with their reason and never pass the cascade; "
        "a skipped eval question counts as incorrect (it stays in pass@1's denominator, so every "
        "model is scored on the same questions)."
        if section.rows
        else "Every request ran: none was skipped."
    )
    return section


def funnel_section(run: RunDir) -> Section:
    """The merge funnel from merge/stats.json, read defensively: any mapping of counts is shown."""
    path = run.stage_dir("merge") / "stats.json"
    section = Section("Merge funnel", ["count", "all"])
    try:
        stats = json.loads(path.read_text())
    except (OSError, ValueError):
        section.note = f"No merge statistics ({path.name} is missing or unreadable)."
        return section
    overall = stats.get("overall") if isinstance(stats.get("overall"), dict) else stats
    per_domain = stats.get("per_domain") if isinstance(stats.get("per_domain"), dict) else {}
    section.headers += list(per_domain) + ["% of candidates"]
    candidates = overall.get("candidates")
    # stats.json is written with sorted keys: put the known counts back in funnel order
    order = {name: i for i, name in enumerate(FUNNEL_ORDER)}
    for name in sorted(overall, key=lambda n: order.get(n, len(order))):
        value = overall[name]
        if not isinstance(value, (int, float)) or isinstance(value, bool) or name.startswith(VOTE_KINDS):
            continue
        counts_candidates = name not in ("seeds", "duplicate_questions") and isinstance(candidates, (int, float))
        share = f"{100 * value / candidates:.1f}" if counts_candidates and candidates else "—"
        cells = [f"{per_domain[d].get(name, 0):,}" if isinstance(per_domain[d], dict) else "—" for d in per_domain]
        section.rows.append([name, f"{value:,}", *cells, share])
    skipped = stats.get("skipped_shards") or []
    if skipped:
        section.note = f"Skipped verify shards: {len(skipped)} (merge.allow_missing)."
    return section


def votes_section(run: RunDir) -> Section:
    """Judge votes per stage from merge/stats.json: how many held no verdict or were cut off."""
    path = run.stage_dir("merge") / "stats.json"
    section = Section("Judge votes per stage", ["stage", "votes", "no verdict", "% no verdict", "cut off", "% cut off"])
    try:
        overall = json.loads(path.read_text()).get("overall") or {}
    except (OSError, ValueError, AttributeError):
        overall = {}
    stages = [name[len("votes_") :] for name in overall if name.startswith("votes_")]
    order = {s: i for i, s in enumerate(VERIFY_STAGES)}  # stats.json keys are sorted: cascade order again
    for stage in sorted(stages, key=lambda s: order.get(s, len(order))):
        cast = overall[f"votes_{stage}"]
        if not isinstance(cast, int):
            continue
        none, cut = overall.get(f"no_verdict_{stage}", 0), overall.get(f"cut_off_{stage}", 0)
        shares = [f"{100 * n / cast:.1f}" if cast else "—" for n in (none, cut)]
        section.rows.append([stage, f"{cast:,}", f"{none:,}", shares[0], f"{cut:,}", shares[1]])
    if not section.rows:
        section.note = "No judge vote counts (merge/stats.json is missing, or older than these counts)."
    elif any(overall.get(f"cut_off_{row[0]}", 0) for row in section.rows):
        section.note = (
            "Judges cut off by verify.max_tokens: a reply that ends before its verdict counts as a no. "
            "Raise verify.max_tokens (the authors allow 32768) if this share is large."
        )
    return section
