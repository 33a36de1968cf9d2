"""The eval tables: pass@1 with deltas, pass@k, and what each benchmark asked and left out."""

from __future__ import annotations

import json

from ..eval import scores as scoring
from ..eval.scores import POOLED, SUMMED, VARIANTS, EvalScores, PairedDelta, Score, SummedDelta
from ..rundir.layout import RunDir
from .section import Section


def _pct(value: Score | None, signed: bool = False) -> str:
    if value is None:
        return "—"
    mean, err = value
    text = f"{100 * mean:+.1f}" if signed else f"{100 * mean:.1f}"
    return text + (f" ± {100 * err:.1f}" if err is not None else "")


def _ci(delta: PairedDelta | SummedDelta | None) -> str:
    return "—" if delta is None else f"[{100 * delta.low:+.1f}, {100 * delta.high:+.1f}]"


def _delta(scores: EvalScores, variant: str, group: str) -> Score | None:
    """Δ variant − base of a group: the difference of the means with their errors in quadrature, or,
    when the variant ran on other seeds than base (UQ-TTC once per benchmark), the paired mean over
    the (question, seed) both answered, the figure its interval is about."""
    base, other = scores.pass1.get(("base", group)), scores.pass1.get((variant, group))
    if base is None or other is None:
        return None
    paired = scores.deltas.get((variant, group))
    if paired is not None and scores.seeds.get((variant, group)) != scores.seeds.get(("base", group)):
        return paired.mean, None
    return scoring.delta(base, other)


def pass1_section(scores: EvalScores, domain_of: dict[str, str]) -> Section:
    section = Section(
        "pass@1 (%)",
        [
            "benchmark",
            "domain",
            "questions",
            "seeds",
            "base",
            "SVD",
            "Δ SVD",
            "Δ SVD 95% CI",
            "UQ-TTC",
            "Δ UQ-TTC",
            "Δ UQ-TTC 95% CI",
        ],
    )
    bench_of = lambda g: g.removesuffix(scoring.CLEAN)  # noqa: E731  a clean subset sits under its benchmark
    groups = sorted(
        {g for _, g in scores.pass1}, key=lambda g: (g.startswith("domain:"), domain_of.get(bench_of(g), ""), g)
    )
    for group in groups:
        base, svd, ttc = (scores.pass1.get((v, group)) for v in VARIANTS)
        seeds = sorted({scores.seeds[(v, group)] for v in VARIANTS if (v, group) in scores.seeds})
        is_domain = group.startswith("domain:")
        section.rows.append(
            [
                f"all {group[7:]}" if is_domain else _label(group),
                group[7:] if is_domain else domain_of.get(bench_of(group), "unknown"),
                str(scores.questions[group]),
                "/".join(str(s) if s else "mixed" for s in seeds),
                _pct(base),
                _pct(svd),
                _pct(_delta(scores, "SVD", group), True),
                _ci(scores.deltas.get(("SVD", group))),
                _pct(ttc),
                _pct(_delta(scores, "UQ-TTC", group), True),
                _ci(scores.deltas.get(("UQ-TTC", group))),
            ]
        )
    section.note = (
        "Mean over eval seeds ± standard error of that mean (none with one seed); a domain row pools "
        "the questions of its benchmarks (seeds 'mixed': each question weighs once, no seed-level "
        "error); deltas are against the base model, errors added in quadrature. 95% CI: paired "
        "bootstrap over questions of (variant − base) on the same question and seed, 10,000 resamples. "
        "A variant run on fewer seeds than base (UQ-TTC once per benchmark, eval.uq_ttc_seeds: one) is "
        "paired with base's answers on its own seeds, and its Δ is that paired mean. A domain row's Δ is "
        "the pooled Δ; the paper's domain figure is the Σ Δ in the next table."
    )
    if any(g.endswith(scoring.CLEAN) for g in groups):
        section.note += (
            " A row 'B, clean subset' scores benchmark B on the clean subset: its questions that no kept training "
            "row overlaps (decontaminate: the same text, or a shared run of decontaminate.ngram words; "
            "merge/contaminated.jsonl lists the overlaps)."
        )
    return section


def _label(group: str) -> str:
    return f"{group.removesuffix(scoring.CLEAN)}, clean subset" if group.endswith(scoring.CLEAN) else group


def domain_gains_section(scores: EvalScores) -> Section | None:
    """Per domain and variant, the paper's domain figure (Σ Δ over benchmarks) beside the pooled Δ;
    None when no domain has a delta."""
    section = Section(
        "Domain gains: Σ over benchmarks and pooled (pp)",
        ["domain", "variant", "benchmarks (Δ each)", SUMMED, "Σ Δ 95% CI", "pooled Δ", "pooled Δ 95% CI"],
    )
    for (variant, group), summed in sorted(
        scores.summed.items(), key=lambda kv: (kv[0][1], list(VARIANTS).index(kv[0][0]))
    ):
        pooled = scores.deltas.get((variant, group))
        section.rows.append(
            [
                group[len("domain:") :],
                variant,
                ", ".join(f"{b} {100 * d:+.1f}" for b, d in summed.benchmarks.items()),
                f"{100 * summed.mean:+.1f}",
                _ci(summed),
                f"{100 * pooled.mean:+.1f}" if pooled else "—",
                _ci(pooled),
            ]
        )
    if not section.rows:
        return None
    section.note = (
        "The paper's per-domain gains (its table of results) are Σ Δ: the sum of the domain's "
        "benchmarks' deltas (math: AIME26 Δ + HMMT Δ), so compare the paper's figures with the Σ Δ "
        f"column, never with the pooled Δ. Σ Δ: {SUMMED}, its 95% CI a paired bootstrap resampling "
        f"questions within each benchmark, 10,000 resamples. Pooled Δ: {POOLED}, as the pass@1 table's "
        "domain row; with two benchmarks it comes out near half of Σ Δ."
    )
    return section


def pass_k_section(scores: EvalScores) -> Section:
    ks = sorted({k for values in scores.pass_k.values() for k in values})
    section = Section("pass@k (%), one sample per seed", ["benchmark", "model"] + [f"pass@{k}" for k in ks])
    for (variant, bench), values in sorted(
        scores.pass_k.items(), key=lambda kv: (kv[0][1], list(VARIANTS).index(kv[0][0]))
    ):
        section.rows.append([bench, variant] + [f"{100 * values[k]:.1f}" if k in values else "—" for k in ks])
    section.note = "Unbiased estimator 1 - C(n-c, k) / C(n, k) per question, averaged over questions."
    return section


def benchmarks_section(run: RunDir) -> Section:
    """Per benchmark, from the eval summaries: its prompt, its questions, the dataset rows it left out
    (by reason) and the choice questions whose options could not be split off (shown verbatim)."""
    section = Section("Benchmarks", ["benchmark", "prompt", "questions", "rows left out", "options not parsed"])
    seen: dict[str, dict] = {}
    for path in sorted(run.stage_dir("eval").glob("*/*/seed-*.json")):
        try:
            summary = json.loads(path.read_text())
            seen.setdefault(summary["benchmark"], summary)
        except (OSError, ValueError, KeyError):
            continue
    for name, summary in sorted(seen.items()):
        left = dict(summary.get("rows_left_out") or {})
        unparsed = left.pop("options_unparsed", 0)
        section.rows.append(
            [
                name,
                summary.get("prompt", "—"),
                str(summary.get("questions", "—")),
                ", ".join(f"{reason}: {n:,}" for reason, n in left.items()) or "0",
                f"{unparsed:,}",
            ]
        )
    section.note = (
        "The prompt each benchmark was asked with (docs/PROTOCOL.md); rows left out are those the "
        "benchmark's filter excludes (an image, not multiple choice, outside the contest window); "
        "questions whose options were not parsed are asked verbatim and graded by their letter."
    )
    return section
