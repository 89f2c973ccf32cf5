"""Means over seeds with 95% confidence intervals: seeds are independent replicates of one configuration, so a
difference between two combinations means something only when it is larger than their intervals.

The interval is Student's t on the sample standard deviation (n - 1), as a two-sided 95% interval of the
mean; with one seed there is no interval (None), never a zero-width one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

LEVEL = 0.95


@dataclass(frozen=True)
class SeedStats:
    n: int
    mean: float | None
    std: float | None  # sample standard deviation; None below two values
    ci95: float | None  # half-width of the 95% t-interval of the mean; None below two values

    @property
    def low(self) -> float | None:
        return None if self.mean is None or self.ci95 is None else self.mean - self.ci95

    @property
    def high(self) -> float | None:
        return None if self.mean is None or self.ci95 is None else self.mean + self.ci95


def seed_stats(values: Sequence[float | None]) -> SeedStats:
    """Statistics of the finite values (a seed without the metric is left out)."""
    xs = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    n = len(xs)
    if n == 0:
        return SeedStats(0, None, None, None)
    mean = math.fsum(xs) / n
    if n == 1:
        return SeedStats(1, mean, None, None)
    from scipy.stats import t

    std = math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (n - 1))
    return SeedStats(n, mean, std, float(t.ppf(0.5 + LEVEL / 2, n - 1)) * std / math.sqrt(n))


def paired_ratios(values: dict[int, float | None], base: dict[int, float | None]) -> list[float]:
    """Per-seed ratios value / baseline over the seeds both have (same seed, same trace: paired)."""
    out = []
    for seed, v in values.items():
        b = base.get(seed)
        if v is not None and b is not None and math.isfinite(v) and math.isfinite(b) and b != 0:
            out.append(v / b)
    return out
