"""Scores of the eval stage: pass@k with the unbiased estimator, means with standard errors, and
paired bootstrap intervals of deltas.

pass@k (Chen et al., 2021): with n samples of a question of which c are correct, the chance that
at least one of k samples drawn without replacement is correct is 1 - C(n-c, k) / C(n, k). It
is unbiased for every k <= n, unlike 1 - (1 - c/n)^k; pass@1 reduces to c / n.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


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
    import numpy as np

    values = np.asarray(differences, dtype=float)
    if values.size == 0:
        raise ValueError("a bootstrap interval of no paired questions")
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    block = max(1, 2_000_000 // values.size)  # bounded memory: questions × resamples per block
    for start in range(0, resamples, block):
        stop = min(resamples, start + block)
        means[start:stop] = values[rng.integers(0, values.size, size=(stop - start, values.size))].mean(axis=1)
    tail = (1 - level) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return float(low), float(high)
