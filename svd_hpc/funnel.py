"""The merge funnel: counts per domain, stats.json, a rich table and a PNG chart.

Counts, overall and per domain:
  seeds                distinct question_ids in the readable verify shards
  duplicate_questions  seeds merged into an identical earlier question (whitespace and case ignored)
  candidates           verify records
  filtered             candidates the static filter rejected (status "filtered")
  passed_<stage>       candidates that met the threshold of this and every earlier enabled stage
  valid                candidates that passed every enabled stage
  selected             valid candidates picked by the selection rule
  duplicate_solutions  selected candidates dropped because an identical solution was kept
  kept                 rows written: train + validation
"""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .config import RunConfig
from .selection import enabled_stages


class Counts:
    """Per-domain counters, added to shard by shard."""

    def __init__(self):
        self.by_domain: dict[str, Counter] = defaultdict(Counter)

    def add_rows(self, domain: pa.Array | pa.ChunkedArray, masks: dict[str, np.ndarray]) -> None:
        encoded = pc.dictionary_encode(domain)
        chunks = encoded.chunks if isinstance(encoded, pa.ChunkedArray) else [encoded]
        for name, mask in masks.items():
            offset = 0
            for chunk in chunks:
                part = mask[offset : offset + len(chunk)]
                offset += len(chunk)
                per_code = np.bincount(
                    chunk.indices.to_numpy(zero_copy_only=False)[part], minlength=len(chunk.dictionary)
                )
                for label, count in zip(chunk.dictionary.to_pylist(), per_code.tolist()):
                    self.by_domain[label][name] += count

    def add_questions(self, questions: pa.Table, question_ids: pa.Array, duplicate: np.ndarray) -> None:
        """Seeds and duplicate questions, by the domain of each distinct question."""
        if not len(question_ids):
            return
        first_row = pc.index_in(question_ids, value_set=questions["question_id"])
        domain = questions["domain"].take(first_row)
        self.add_rows(domain, {"seeds": np.ones(len(question_ids), bool), "duplicate_questions": duplicate})


def metric_names(cfg: RunConfig) -> list[str]:
    stages = [f"passed_{s}" for s in enabled_stages(cfg.merge, cfg.verify.stages)]
    return [
        "seeds",
        "duplicate_questions",
        "candidates",
        "filtered",
        *stages,
        "valid",
        "selected",
        "duplicate_solutions",
        "kept",
        "train",
        "validation",
    ]


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
    fig = Figure(figsize=(8, 0.5 * len(rows) + 1.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
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
    fig.tight_layout()
    fig.savefig(path, dpi=100)
