"""Pass@k: the unbiased estimator of Chen et al. (2021) and confidence intervals. Pure numpy."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np


def pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of k samples out of n (c correct) passes: 1 - C(n-c, k) / C(n, k)."""
    if not 0 <= c <= n or k < 1:
        raise ValueError(f"need 0 <= c <= n and k >= 1, got n={n} c={c} k={k}")
    if k > n:
        raise ValueError(f"k={k} needs at least k samples per problem, got n={n}")
    if n - c < k:
        return 1.0
    # Product form of the binomial ratio: numerically stable for large n.
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def mean_confidence_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high): normal approximation over per-problem scores, clipped to [0, 1]."""
    array = np.asarray(values, dtype=np.float64)
    if array.size == 0:
        return 0.0, 0.0, 0.0
    mean = float(array.mean())
    if array.size == 1:
        return mean, 0.0, 1.0
    z = _z(level)
    half = z * float(array.std(ddof=1)) / math.sqrt(array.size)
    return mean, max(0.0, mean - half), min(1.0, mean + half)


def wilson_interval(successes: int, total: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a proportion; sensible even at 0 or total successes."""
    if total <= 0:
        return 0.0, 1.0
    z = _z(level)
    p = successes / total
    denominator = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / denominator
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def _z(level: float) -> float:
    if not 0 < level < 1:
        raise ValueError("level must be in (0, 1)")
    # Inverse normal CDF by bisection on erf: no scipy dependency for one number.
    target, low, high = (1 + level) / 2, 0.0, 10.0
    for _ in range(80):
        mid = (low + high) / 2
        if 0.5 * (1 + math.erf(mid / math.sqrt(2))) < target:
            low = mid
        else:
            high = mid
    return (low + high) / 2


@dataclass(frozen=True)
class PassAtK:
    k: int
    value: float
    low: float
    high: float


def summarize(samples: Sequence[int], correct: Sequence[int], ks: Sequence[int] = (1, 5, 10),
              level: float = 0.95) -> dict[int, PassAtK]:
    """Pass@k over problems (``samples[i]`` drawn, ``correct[i]`` passed) for each k the samples allow."""
    out: dict[int, PassAtK] = {}
    for k in ks:
        if not samples or min(samples) < k:
            continue
        scores = [pass_at_k(n, c, k) for n, c in zip(samples, correct)]
        mean, low, high = mean_confidence_interval(scores, level)
        if all(n == 1 for n in samples):
            low, high = wilson_interval(int(sum(correct)), len(samples), level)
        out[k] = PassAtK(k, mean, low, high)
    return out
