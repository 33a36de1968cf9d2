"""The eval scores from the records: pass@1 per benchmark and domain (mean over seeds ± standard
error), paired deltas against the base model with a bootstrap interval, and pass@k.

A domain's delta comes two ways: pooled (the mean over all its questions) and summed (Σ over its
benchmarks of each one's delta, which is how the paper reports a domain). With two benchmarks the
sum is near twice the pooled figure, so the two always carry their names (SUMMED, POOLED).

pass@k (Chen et al., 2021): with n samples of a question of which c are correct, the chance that
at least one of k samples drawn without replacement is correct is 1 - C(n-c, k) / C(n, k). It
is unbiased for every k <= n, unlike 1 - (1 - c/n)^k; pass@1 reduces to c / n.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq

from ..config import RunConfig
from ..records import EVAL, check_schema
from ..rundir.layout import RunDir
from . import benchmarks

# (model, mode) of each column, in report order
VARIANTS = {"base": ("base", "direct"), "SVD": ("trained", "direct"), "UQ-TTC": ("base", "uq_ttc")}
Score = tuple[float, "float | None"]  # mean, standard error (None with a single seed)
CLEAN = ".clean"  # a benchmark's clean subset is the group "<benchmark>.clean" (decontaminate)
# the two domain deltas, named alike wherever they are shown so that neither is read as the other
SUMMED = "Σ Δ over benchmarks (the paper's domain figure)"
POOLED = "pooled Δ (every question of the domain weighs once)"


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one question with `c` correct out of `n` samples (k <= n)."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got {n=} {c=} {k=}")
    if n - c < k:
        return 1.0
    # the product form of C(n-c, k) / C(n, k) stays exact enough without huge binomials
    return 1.0 - math.prod((n - c - i) / (n - i) for i in range(k))


def mean_pass_at_k(counts: Sequence[tuple[int, int]], k: int) -> float:
    """pass@k averaged over questions, each given as (n samples, c correct)."""
    if not counts:
        raise ValueError("pass@k of an empty benchmark")
    return sum(pass_at_k(n, c, k) for n, c in counts) / len(counts)


def ks_for(n: int) -> list[int]:
    """The k worth reporting for n samples per question: 1, 2, 4, ... up to n, and n itself."""
    ks, k = [], 1
    while k <= n:
        ks.append(k)
        k *= 2
    if ks[-1] != n:
        ks.append(n)
    return ks


def mean_stderr(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and standard error of the mean (sample std with n-1 / sqrt(n)); None for one value."""
    if not values:
        raise ValueError("mean of no values")
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, None
    variance = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(variance / n)


def delta(a: tuple[float, float | None], b: tuple[float, float | None]) -> tuple[float, float | None]:
    """b - a for two (mean, stderr) pairs; the errors of independent runs add in quadrature."""
    err = None if a[1] is None or b[1] is None else math.hypot(a[1], b[1])
    return b[0] - a[0], err


def paired_bootstrap_ci(
    differences: Sequence[float], level: float = 0.95, resamples: int = 10_000, seed: int = 0
) -> tuple[float, float]:
    """Percentile interval of the mean paired difference, resampling questions with replacement.

    `differences` holds one value per question: the mean over its seeds of (variant − base) on the
    same question and seed (both sampled with the same request seed). The question is the unit
    resampled: each (question, seed) request has its own seed, so seeds share nothing across
    questions, and a question's seed-to-seed spread is already in its mean. A fixed `seed` makes
    the interval the same on every rebuild of the report.
    """
    low, high, _ = paired_bootstrap(differences, level, resamples, seed)
    return low, high


def paired_bootstrap(
    differences: Sequence[float], level: float = 0.95, resamples: int = 10_000, seed: int = 0
) -> tuple[float, float, float]:
    """The interval of paired_bootstrap_ci and, from the same resampled means, a two-sided p-value.

    p = 2 × min(share of resampled means ≤ 0, share ≥ 0), at most 1: how often the resampling puts
    the difference on the other side of zero, both sides counted. With 10,000 resamples a p of 0
    means below 0.0001, not none.
    """
    return summed_bootstrap([differences], level, resamples, seed)


def summed_bootstrap_ci(
    benchmarks: Sequence[Sequence[float]], level: float = 0.95, resamples: int = 10_000, seed: int = 0
) -> tuple[float, float]:
    """Percentile interval of the sum over benchmarks of each one's mean paired difference.

    Each entry of `benchmarks` holds one benchmark's per-question paired differences (as in
    paired_bootstrap_ci). A resample draws each benchmark's questions with replacement from that
    benchmark alone, so every benchmark keeps its size and its mean weighs one in the sum, as in a
    domain figure that adds its benchmarks' deltas. One benchmark gives paired_bootstrap_ci's interval.
    """
    low, high, _ = summed_bootstrap(benchmarks, level, resamples, seed)
    return low, high


def summed_bootstrap(
    benchmarks: Sequence[Sequence[float]], level: float = 0.95, resamples: int = 10_000, seed: int = 0
) -> tuple[float, float, float]:
    """summed_bootstrap_ci's interval and its two-sided p-value (as paired_bootstrap's), in one pass."""
    import numpy as np

    if not benchmarks or any(len(d) == 0 for d in benchmarks):
        raise ValueError("a bootstrap interval of no paired questions")
    rng = np.random.default_rng(seed)
    sums = np.zeros(resamples)
    for differences in benchmarks:
        values = np.asarray(differences, dtype=float)
        block = max(1, 2_000_000 // values.size)  # bounded memory: questions × resamples per block
        for start in range(0, resamples, block):
            stop = min(resamples, start + block)
            draws = rng.integers(0, values.size, size=(stop - start, values.size))
            sums[start:stop] += values[draws].mean(axis=1)
    tail = (1 - level) / 2
    low, high = np.quantile(sums, [tail, 1 - tail])
    p_value = min(1.0, 2 * min(float(np.mean(sums <= 0)), float(np.mean(sums >= 0))))
    return float(low), float(high), p_value


def read_eval(run: RunDir) -> pa.Table | None:
    """Every finished eval record of the run (EVAL schema), or None when there is none yet."""
    paths = sorted(run.stage_dir("eval").glob("*/*/seed-*.parquet"))
    tables = []
    for path in paths:
        table = pq.read_table(path)
        check_schema(table, EVAL, str(path))
        tables.append(table.select(EVAL.names).cast(EVAL))
    return pa.concat_tables(tables) if tables else None


def overlapped(run: RunDir) -> dict[str, set[str]] | None:
    """Benchmark -> the eval questions a kept training row overlaps (merge/stats.json); None when the merge
    did not test for contamination (decontaminate.enabled false, or no merge yet)."""
    stats = run.load_json(run.stage_dir("merge") / "stats.json")
    block = stats.get("decontamination") if isinstance(stats, dict) else None
    if not isinstance(block, dict):
        return None
    return {bench: set(qids) for bench, qids in (block.get("overlapped") or {}).items()}


def domains_of(cfg: RunConfig, run: RunDir) -> dict[str, str]:
    """Benchmark -> domain, from the config (presets resolved) and the eval summaries."""
    out = {}
    for path in run.stage_dir("eval").glob("*/*/seed-*.json"):
        try:
            summary = json.loads(path.read_text())
            out[summary["benchmark"]] = summary["domain"]
        except (OSError, ValueError, KeyError):
            continue
    for spec in cfg.eval.benchmarks:
        try:
            out[spec.name] = benchmarks.resolve(spec).domain
        except ValueError:
            out.setdefault(spec.name, "unknown")
    return out


@dataclass(frozen=True)
class PairedDelta:
    """variant − base over the (question, seed) pairs both answered, with its bootstrap interval."""

    mean: float
    low: float
    high: float
    questions: int
    pairs: int
    p_value: float | None = None  # two-sided, from the same resampled means (paired_bootstrap)


@dataclass(frozen=True)
class SummedDelta:
    """A domain's Σ over its benchmarks of each benchmark's paired delta (the paper's domain figure),
    with a bootstrap interval that resamples questions within each benchmark."""

    mean: float
    low: float
    high: float
    benchmarks: dict[str, float]  # benchmark -> its paired delta, the terms of the sum


@dataclass
class EvalScores:
    pass1: dict[tuple[str, str], Score]  # (variant, benchmark or "domain:<d>") -> score
    seeds: dict[tuple[str, str], int]  # 0: a domain whose benchmarks repeat a different number of times
    questions: dict[str, int]  # benchmark or "domain:<d>" -> distinct questions
    pass_k: dict[tuple[str, str], dict[int, float]]  # (variant, benchmark) -> {k: pass@k}
    deltas: dict[tuple[str, str], PairedDelta] = field(default_factory=dict)  # (SVD | UQ-TTC, group): pooled
    summed: dict[tuple[str, str], SummedDelta] = field(default_factory=dict)  # (SVD | UQ-TTC, "domain:<d>")


def _paired_differences(records: dict[tuple[str, str, str, int], bool], variant: str) -> dict[str, dict[str, float]]:
    """benchmark -> question -> the mean over the seeds both answered of (variant − base).

    A question pairs only on the seeds both answered: UQ-TTC run on seed 0 alone meets base's seed-0
    answers, not the mean of base's other seeds.
    """
    diffs: dict[tuple[str, str], list[float]] = defaultdict(list)
    for (name, bench, qid, seed), correct in records.items():
        if name == variant and ("base", bench, qid, seed) in records:
            diffs[(bench, qid)].append(float(correct) - float(records[("base", bench, qid, seed)]))
    out: dict[str, dict[str, float]] = defaultdict(dict)
    for (bench, qid), values in diffs.items():
        out[bench][qid] = sum(values) / len(values)
    return out


def paired_deltas(records: dict[tuple[str, str, str, int], bool], groups_of) -> dict[tuple[str, str], PairedDelta]:
    """SVD − base and UQ-TTC − base per group: per question, the mean over the seeds both answered of
    the paired difference; its mean over questions and a 95% paired bootstrap interval.

    A domain group pools its benchmarks' questions, each weighing once (the pooled Δ)."""
    out = {}
    for variant in ("SVD", "UQ-TTC"):
        per_bench = _paired_differences(records, variant)
        pairs: dict[tuple[str, str], int] = defaultdict(int)
        for name, bench, qid, seed in records:
            if name == variant and ("base", bench, qid, seed) in records:
                pairs[(bench, qid)] += 1
        per_group: dict[str, list[tuple[float, int]]] = defaultdict(list)
        for bench in sorted(per_bench):
            for qid, mean in sorted(per_bench[bench].items()):
                for group in groups_of(bench, qid):
                    per_group[group].append((mean, pairs[(bench, qid)]))
        for group, values in per_group.items():
            means = [m for m, _ in values]
            low, high, p_value = paired_bootstrap(means)
            out[(variant, group)] = PairedDelta(
                sum(means) / len(means), low, high, len(means), sum(n for _, n in values), p_value
            )
    return out


def summed_deltas(
    records: dict[tuple[str, str, str, int], bool], domain_of: dict[str, str]
) -> dict[tuple[str, str], SummedDelta]:
    """SVD − base and UQ-TTC − base per domain as the paper reports a domain: Σ over the domain's
    benchmarks of each benchmark's paired delta, with summed_bootstrap_ci's interval.

    Only benchmarks the variant answered are summed; SummedDelta.benchmarks names them.
    """
    out = {}
    for variant in ("SVD", "UQ-TTC"):
        per_bench = _paired_differences(records, variant)
        by_domain: dict[str, list[str]] = defaultdict(list)
        for bench in sorted(per_bench):
            by_domain[f"domain:{domain_of.get(bench, 'unknown')}"].append(bench)
        for domain, benches in by_domain.items():
            diffs = [[per_bench[b][q] for q in sorted(per_bench[b])] for b in benches]
            terms = {b: sum(d) / len(d) for b, d in zip(benches, diffs)}
            low, high = summed_bootstrap_ci(diffs)
            out[(variant, domain)] = SummedDelta(sum(terms.values()), low, high, terms)
    return out


def score(table: pa.Table, domain_of: dict[str, str], overlapped: dict[str, set[str]] | None = None) -> EvalScores:
    """pass@1 per seed, then mean ± stderr over seeds; domains pool their benchmarks' questions.

    overlapped (decontamination, from `overlapped`): each benchmark also scores as "<benchmark>.clean" over
    its questions outside overlapped[benchmark]; None: no clean subsets.

    A domain whose benchmarks repeat a different number of times (AIME26 once, HMMT ten times)
    weighs every question once: the mean over questions of each question's mean over its seeds,
    without a seed-level error (its seeds do not pool into one set).
    """
    correct: dict[tuple[str, str, int], list[bool]] = defaultdict(list)
    per_question: dict[tuple[str, str, str], list[bool]] = defaultdict(list)
    questions: dict[str, set] = defaultdict(set)
    records: dict[tuple[str, str, str, int], bool] = {}
    names = {v: k for k, v in VARIANTS.items()}

    def groups_of(bench: str, qid: str) -> tuple[str, ...]:
        groups = (bench, f"domain:{domain_of.get(bench, 'unknown')}")
        if overlapped is not None and qid not in overlapped.get(bench, ()):
            groups += (bench + CLEAN,)
        return groups

    for row in table.select(["benchmark", "model", "mode", "seed", "question_id", "correct"]).to_pylist():
        variant = names.get((row["model"], row["mode"]))
        if variant is None:
            continue
        bench = row["benchmark"]
        for group in groups_of(bench, row["question_id"]):
            correct[(variant, group, row["seed"])].append(bool(row["correct"]))
            questions[group].add((bench, row["question_id"]))
        per_question[(variant, bench, row["question_id"])].append(bool(row["correct"]))
        records[(variant, bench, row["question_id"], row["seed"])] = bool(row["correct"])
    by_group: dict[tuple[str, str], list[float]] = defaultdict(list)
    for (variant, group, _seed), values in sorted(correct.items()):
        by_group[(variant, group)].append(sum(values) / len(values))
    pass1 = {key: mean_stderr(values) for key, values in by_group.items()}
    seeds = {key: len(values) for key, values in by_group.items()}
    seed_sets: dict[tuple[str, str], set] = defaultdict(set)  # (variant, domain) -> each benchmark's seeds
    for variant, group, seed in correct:
        if not group.startswith("domain:") and not group.endswith(CLEAN):
            seed_sets[(variant, f"domain:{domain_of.get(group, 'unknown')}", group)].add(seed)
    for variant, domain in list(pass1):
        if not domain.startswith("domain:"):
            continue
        sets = {frozenset(v) for (var, dom, _b), v in seed_sets.items() if (var, dom) == (variant, domain)}
        if len(sets) > 1:
            means = [
                sum(v) / len(v)
                for (var, b, _q), v in per_question.items()
                if var == variant and f"domain:{domain_of.get(b, 'unknown')}" == domain
            ]
            pass1[(variant, domain)], seeds[(variant, domain)] = (sum(means) / len(means), None), 0
    counts: dict[tuple[str, str], list[tuple[int, int]]] = defaultdict(list)
    for (variant, bench, _q), values in per_question.items():
        counts[(variant, bench)].append((len(values), sum(values)))
    pass_k = {}
    for key, nc in counts.items():
        n = min(n for n, _ in nc)
        if n >= 2:
            pass_k[key] = {k: mean_pass_at_k(nc, k) for k in ks_for(n)}
    return EvalScores(
        pass1=pass1,
        seeds=seeds,
        questions={group: len(qs) for group, qs in questions.items()},
        pass_k=pass_k,
        deltas=paired_deltas(records, groups_of),
        summed=summed_deltas(records, domain_of),
    )


def scores_json(scores: EvalScores) -> dict:
    """The scores for programs: eval/summary.json."""
    out: dict = defaultdict(dict)
    for (variant, group), (mean, err) in scores.pass1.items():
        out[group][variant] = {
            "pass_at_1": mean,
            "stderr": err,
            "seeds": scores.seeds[(variant, group)],
            "pass_at_k": {str(k): v for k, v in scores.pass_k.get((variant, group), {}).items()},
        }
    for (variant, group), d in scores.deltas.items():
        out[group].setdefault("delta", {})[variant] = {
            "vs": "base",
            "mean": d.mean,
            "stderr": delta(scores.pass1[("base", group)], scores.pass1[(variant, group)])[1],
            "ci95": [d.low, d.high],
            "ci_method": "paired bootstrap over questions, 10000 resamples",
            "p_value": d.p_value,
            "p_method": "two-sided, the same resamples: 2 × min(share of means ≤ 0, share ≥ 0)",
            "paired_questions": d.questions,
            "paired_samples": d.pairs,
        }
        if group.startswith("domain:"):
            out[group]["delta"][variant]["aggregate"] = POOLED
    for (variant, group), d in scores.summed.items():
        out[group].setdefault("delta_sum_over_benchmarks", {})[variant] = {
            "vs": "base",
            "aggregate": SUMMED,
            "mean": d.mean,
            "ci95": [d.low, d.high],
            "ci_method": "paired bootstrap over questions within each benchmark, 10000 resamples",
            "benchmarks": d.benchmarks,
        }
    return {group: {"questions": scores.questions[group], **variants} for group, variants in out.items()}
