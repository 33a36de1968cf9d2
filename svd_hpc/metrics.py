"""Scores of the eval stage: pass@k with the unbiased estimator, and means with standard errors.

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
