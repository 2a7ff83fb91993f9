"""Statistics of result cells: Wilson intervals of a proportion and exact McNemar tests of paired outcomes."""

from __future__ import annotations

import math


def wilson_interval(correct: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson score 95% interval for a proportion, in percent."""
    if n == 0:
        return (float("nan"), float("nan"))
    p = correct / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (100 * max(0.0, centre - half), 100 * min(1.0, centre + half))


def mean_interval(values, z: float = 1.959963984540054) -> tuple[float, float]:
    """Normal-approximation 95% interval of the mean of ``values`` (sample standard deviation); a mean of per-image
    figures that are not successes and failures (a KL divergence, a share of the top-5) has no Wilson interval."""
    n = len(values)
    if n == 0:
        return (float("nan"), float("nan"))
    mean = math.fsum(values) / n
    if n == 1:
        return (mean, mean)
    var = math.fsum((v - mean) ** 2 for v in values) / (n - 1)
    half = z * math.sqrt(var / n)
    return (mean - half, mean + half)


def format_ci(correct: int, n: int) -> str:
    lo, hi = wilson_interval(correct, n)
    return f"{lo:.2f}-{hi:.2f}"


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value: the binomial test of ``b`` against ``b + c`` discordant pairs at 1/2.

    ``b``: images only the first model gets right; ``c``: only the second. Summed in log space, so 50,000
    discordant pairs cost no big integers.
    """
    n = b + c
    if n == 0:
        return 1.0
    k = min(b, c)
    log_half_n = n * math.log(0.5)
    terms = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + log_half_n for i in range(k + 1)]
    top = max(terms)
    tail = math.exp(top) * sum(math.exp(t - top) for t in terms)
    return min(1.0, 2.0 * tail)
