"""Re-read a finished run's eval answers with another grader, beside the grader they were scored with.

Run as: python -m svd_hpc.launch regrade RUN_DIR --grader authors_aime [--benchmark B] [--json]

No model is called and nothing is written: each eval file (eval/<model>/<benchmark>/seed-K*.parquet)
keeps its recorded verdicts; this reads its responses and references again and prints pass@1
both ways, so a figure can be compared with the authors' readers (docs/PROTOCOL.md) on the very
same answers. Only the readers that need nothing but the response and its reference can re-read:
code needs its tests, and our choice reader the problem's option count.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq

from ..config.evaluation import GRADER_KINDS
from ..records import EVAL, check_schema
from ..rundir.layout import RunDir
from .grade import grade
from .problems import Problem

REGRADERS = ("math", "math_last_number", "authors_aime", "authors_gpqa", "authors_hle")


@dataclass(frozen=True)
class Regraded:
    """One (model, benchmark, mode): pass@1 (the mean over its seeds) as recorded and as `grader` reads it."""

    model: str
    benchmark: str
    mode: str
    recorded_grader: str
    grader: str
    seeds: int
    answers: int
    recorded_pass_at_1: float
    pass_at_1: float
    gained: int  # answers the new grader marks correct and the recorded one did not
    lost: int


def regrade(run: RunDir, grader: str, benchmark: str | None = None) -> list[Regraded]:
    """pass@1 of every eval file of the run (or of `benchmark`) as recorded and as `grader` reads it.

    ValueError (one sentence) for an unknown grader, a run without eval records, or a benchmark
    whose answers `grader` cannot read.
    """
    if grader not in REGRADERS:
        raise ValueError(f"regrade --grader {grader!r}: choose one of {', '.join(REGRADERS)}.")
    paths = sorted(run.stage_dir("eval").glob("*/*/seed-*.parquet"))
    if benchmark is not None:
        paths = [p for p in paths if p.parent.name == benchmark]
    if not paths:
        which = f"benchmark '{benchmark}'" if benchmark else "any benchmark"
        raise ValueError(f"{run.root}: no finished eval records of {which} (eval/<model>/<benchmark>/seed-*.parquet).")
    groups: dict[tuple[str, str, str, str], list[tuple[list[bool], list[bool]]]] = defaultdict(list)
    skipped_kinds = set()
    for path in paths:
        recorded = _recorded_grader(path)
        if GRADER_KINDS.get(recorded) != GRADER_KINDS[grader]:
            skipped_kinds.add((path.parent.name, recorded))
            continue
        table = pq.read_table(path)
        check_schema(table, EVAL, str(path))
        rows = table.to_pylist()
        problem = Problem("", "", "", grader)
        # a question the engine never ran stays incorrect, as it was recorded
        new = [not r["skip_reason"] and grade(problem, r["reference"], r["response"], 0.0).correct for r in rows]
        for mode in sorted({r["mode"] for r in rows}):
            picked = [i for i, r in enumerate(rows) if r["mode"] == mode]
            key = (rows[picked[0]]["model"], path.parent.name, mode, recorded)
            groups[key].append(([rows[i]["correct"] for i in picked], [new[i] for i in picked]))
    if not groups:
        found = ", ".join(f"{b} ({g})" for b, g in sorted(skipped_kinds))
        raise ValueError(
            f"regrade --grader {grader}: it reads {GRADER_KINDS[grader]} answers, and the run has: {found}."
        )
    return [_summarise(key, grader, seeds) for key, seeds in sorted(groups.items())]


def _recorded_grader(parquet: Path) -> str | None:
    summary = parquet.with_suffix(".json")
    if not summary.is_file():
        return None
    return json.loads(summary.read_text()).get("grader")


def _summarise(key: tuple[str, str, str, str], grader: str, seeds: list[tuple[list[bool], list[bool]]]) -> Regraded:
    model, benchmark, mode, recorded = key
    pairs = [(old, new) for olds, news in seeds for old, new in zip(olds, news)]
    return Regraded(
        model=model,
        benchmark=benchmark,
        mode=mode,
        recorded_grader=recorded,
        grader=grader,
        seeds=len(seeds),
        answers=len(pairs),
        recorded_pass_at_1=sum(sum(olds) / len(olds) for olds, _ in seeds) / len(seeds),
        pass_at_1=sum(sum(news) / len(news) for _, news in seeds) / len(seeds),
        gained=sum(new and not old for old, new in pairs),
        lost=sum(old and not new for old, new in pairs),
    )


def table_text(results: list[Regraded]) -> str:
    """The comparison as aligned text, one line per (model, benchmark, mode)."""
    header = ("model", "benchmark", "mode", "seeds", "answers", "recorded", "pass@1", "regraded", "pass@1", "+", "-")
    lines = [header] + [
        (
            r.model,
            r.benchmark,
            r.mode,
            str(r.seeds),
            str(r.answers),
            r.recorded_grader,
            f"{r.recorded_pass_at_1:.3f}",
            r.grader,
            f"{r.pass_at_1:.3f}",
            str(r.gained),
            str(r.lost),
        )
        for r in results
    ]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in lines) + "\n"
