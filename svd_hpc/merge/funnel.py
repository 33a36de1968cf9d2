"""The merge funnel: counts per domain, stats.json, a rich table and a PNG chart.

Counts, overall and per domain:
  contaminated_seeds   seeds the launch dropped: they overlap an eval question (decontaminate; seeds/contaminated.jsonl)
  seeds                distinct question_ids in the readable verify shards
  duplicate_questions  seeds merged into an identical earlier question (whitespace and case ignored)
  candidates           verify records
  filtered             candidates the static filter rejected (status "filtered")
  skipped              candidates the engine could not run, at generate or as judged (status "skipped");
                       skipped_<kind> splits them by reason (records.SKIP_KINDS); none of them passes
  passed_<stage>       candidates that met the threshold of this and every earlier enabled stage
  valid                candidates that passed every enabled stage
  contaminated_solutions valid candidates whose question or solution overlaps an eval question
                       (merge/contaminated.jsonl); dropped before selection with decontaminate.solutions
  selected             valid candidates picked by the selection rule
  duplicate_solutions  selected candidates dropped because an identical solution was kept
  weighted_out         rows merge.domain_weights left out of the SFT set
  kept                 rows written: train + validation
Judge votes, per verify stage (they show when judges are starved of tokens):
  votes_<stage>        votes cast at this stage
  no_verdict_<stage>   votes whose reply held no verdict (they count as "no")
  cut_off_<stage>      votes whose reply hit verify.max_tokens before it ended
"""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .. import records
from ..config import RunConfig
from ..records import SKIP_KINDS
from .selection import enabled_stages


class Counts:
    """Per-domain counters, added to shard by shard."""

    def __init__(self):
        self.by_domain: dict[str, Counter] = defaultdict(Counter)

    def add_rows(self, domain: pa.Array | pa.ChunkedArray, masks: dict[str, np.ndarray]) -> None:
        """Add per-row values (masks, or counts per row) to each row's domain."""
        encoded = pc.dictionary_encode(domain)
        chunks = encoded.chunks if isinstance(encoded, pa.ChunkedArray) else [encoded]
        for name, mask in masks.items():
            offset = 0
            for chunk in chunks:
                part = mask[offset : offset + len(chunk)]
                offset += len(chunk)
                per_code = np.bincount(
                    chunk.indices.to_numpy(zero_copy_only=False),
                    weights=part.astype(np.float64),
                    minlength=len(chunk.dictionary),
                ).astype(np.int64)
                for label, count in zip(chunk.dictionary.to_pylist(), per_code.tolist()):
                    self.by_domain[label][name] += count

    def add_questions(self, questions: pa.Table, question_ids: pa.Array, duplicate: np.ndarray) -> None:
        """Seeds and duplicate questions, by the domain of each distinct question."""
        if not len(question_ids):
            return
        first_row = pc.index_in(question_ids, value_set=questions["question_id"])
        domain = questions["domain"].take(first_row)
        self.add_rows(domain, {"seeds": np.ones(len(question_ids), bool), "duplicate_questions": duplicate})


def skip_stats(table: pa.Table) -> dict[str, np.ndarray]:
    """Per row: whether it was skipped for each kind of reason (the reason's first word)."""
    skipped = pc.equal(pc.fill_null(table["status"], ""), "skipped")
    reason = pc.fill_null(table["skip_reason"], "")
    return {
        f"skipped_{k}": pc.and_(skipped, pc.starts_with(reason, f"{k}:")).to_numpy(zero_copy_only=False)
        for k in SKIP_KINDS
    }


def vote_stats(table: pa.Table, stages: list[str]) -> dict[str, np.ndarray]:
    """Per row: votes cast, votes without a verdict and votes cut off, for each stage."""
    out = {}
    for stage in stages:
        votes = table[f"{stage}_votes"].combine_chunks()
        cut = table[f"{stage}_cut_off"].combine_chunks()
        out[f"votes_{stage}"] = pc.fill_null(pc.list_value_length(votes), 0).to_numpy().astype(np.int64)
        out[f"no_verdict_{stage}"] = _per_row(votes, pc.equal(pc.list_flatten(votes), records.VOTE_NONE))
        out[f"cut_off_{stage}"] = _per_row(cut, pc.list_flatten(cut))
    return out


def _per_row(lists: pa.ListArray, flags: pa.Array) -> np.ndarray:
    """How many true flags (one per list element) each row's list holds."""
    parents = pc.list_parent_indices(lists).to_numpy()
    hit = pc.fill_null(flags, False).to_numpy(zero_copy_only=False).astype(bool)
    return np.bincount(parents[hit], minlength=len(lists)).astype(np.int64)


def vote_names(cfg: RunConfig) -> list[str]:
    return [f"{kind}_{s}" for s in cfg.verify.stages for kind in ("votes", "no_verdict", "cut_off")]


def count_names(stages: list[str], decontaminated: bool = False) -> list[str]:
    """The funnel's counts in funnel order, with passed_<stage> for each of `stages` (and the contamination
    counts when decontaminate.enabled)."""
    return [
        *(["contaminated_seeds"] if decontaminated else []),
        "seeds",
        "duplicate_questions",
        "candidates",
        "filtered",
        "skipped",
        *(f"skipped_{kind}" for kind in SKIP_KINDS),
        *(f"passed_{s}" for s in stages),
        "valid",
        *(["contaminated_solutions"] if decontaminated else []),
        "selected",
        "duplicate_solutions",
        "weighted_out",
        "kept",
        "train",
        "validation",
    ]


def metric_names(cfg: RunConfig) -> list[str]:
    return count_names(enabled_stages(cfg.merge, cfg.verify.stages), cfg.decontaminate.enabled) + vote_names(cfg)


def summary(counts: Counts, cfg: RunConfig, skipped: list[dict], written: dict[str, int]) -> dict:
    """The stats.json content: rules, counts overall and per domain, skipped shards, files."""
    names = metric_names(cfg)
    per_domain = {d: {n: int(c[n]) for n in names} for d, c in sorted(counts.by_domain.items())}
    overall = {n: sum(d[n] for d in per_domain.values()) for n in names}
    if overall["kept"] != sum(written.values()):
        raise RuntimeError(f"merge wrote {sum(written.values())} rows but counted {overall['kept']} as kept.")
    return {
        "rules": {
            "aggregation": cfg.merge.aggregation,
            "k": cfg.merge.k,
            "stages": enabled_stages(cfg.merge, cfg.verify.stages),
            "disabled_stages": list(cfg.merge.disabled_stages),
            "selection": cfg.merge.selection,
            "max_per_question": cfg.merge.max_per_question,
            "validation_fraction": cfg.merge.validation_fraction,
            "domain_weights": dict(cfg.merge.domain_weights),
        },
        "overall": overall,
        "per_domain": per_domain,
        "skipped_shards": skipped,
        "files": {split: f"sft/{split}.parquet" for split in written},
    }


def table(stats: dict):
    from rich.table import Table

    domains = list(stats["per_domain"])
    out = Table(title="merge funnel")
    out.add_column("")
    out.add_column("all", justify="right")
    for domain in domains:
        out.add_column(domain, justify="right")
    for name, value in stats["overall"].items():
        out.add_row(name, f"{value:,}", *(f"{stats['per_domain'][d][name]:,}" for d in domains))
    if stats["skipped_shards"]:
        out.caption = f"skipped shards: {', '.join(s['shard'] for s in stats['skipped_shards'])}"
    return out


def print_table(stats: dict) -> None:
    from rich.console import Console

    Console().print(table(stats))


def chart(stats: dict, path: Path) -> None:
    """Horizontal funnel of candidate counts, stacked by domain."""
    # the object API draws without pyplot, so no global backend is switched in the caller's process
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    overall = stats["overall"]
    rows = ["candidates"] + [n for n in overall if n.startswith("passed_")] + ["valid", "selected", "kept"]
    stages = [n[len("votes_") :] for n in overall if n.startswith("votes_")]
    fig = Figure(figsize=(8, 0.5 * len(rows) + 1.5 + (2.5 if stages else 0)))
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(2 if stages else 1, 1, height_ratios=[len(rows) + 2, 5] if stages else [1])
    ax = fig.add_subplot(grid[0])
    left = np.zeros(len(rows))
    for domain, values in stats["per_domain"].items():
        widths = np.array([values[r] for r in rows], float)
        ax.barh(rows, widths, left=left, label=domain)
        left += widths
    for y, total in enumerate(left):
        ax.text(total, y, f" {int(total):,}", va="center", fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("candidates")
    ax.set_title("merge funnel")
    ax.legend(loc="lower right", fontsize=8)
    if stages:
        votes_chart(fig.add_subplot(grid[1]), overall, stages)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def votes_chart(ax, overall: dict, stages: list[str]) -> None:
    """Per stage: votes without a verdict and votes cut off, as a share of the votes cast."""
    x = np.arange(len(stages))
    cast = np.array([max(1, overall[f"votes_{s}"]) for s in stages], float)
    for offset, kind, label in ((-0.2, "no_verdict", "no verdict"), (0.2, "cut_off", "cut off (max_tokens)")):
        counts = np.array([overall[f"{kind}_{s}"] for s in stages], float)
        bars = ax.bar(x + offset, 100 * counts / cast, width=0.4, label=label)
        for bar, count in zip(bars, counts):
            ax.text(
                bar.get_x() + bar.get_width() / 2,
                bar.get_height(),
                f"{int(count):,}",
                ha="center",
                va="bottom",
                fontsize=8,
            )
    ax.set_xticks(x, [f"{s}\n({overall[f'votes_{s}']:,} votes)" for s in stages])
    ax.set_ylabel("% of votes")
    ax.set_title("judge votes without a verdict / cut off")
    ax.legend(fontsize=8)
