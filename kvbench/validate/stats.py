"""The numbers `kvbench validate` judges the simulator by: spreads of repeated real runs, Kendall's tau-b,
and pairwise order agreement. Pure functions of plain numbers, so each can be checked by hand.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

# A simulated hit rate within this absolute distance of the real mean is close enough even when the real
# repeats agree exactly (one repeat, or a deterministic workload): two points of hit rate.
HIT_RATE_FLOOR = 0.02


def _finite(values: Sequence[float | None]) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(float(v))]


@dataclass(frozen=True)
class SpreadStats:
    """Mean, extremes and sample standard deviation (n - 1 in the denominator; 0 for one value)."""

    n: int
    mean: float | None
    min: float | None
    max: float | None
    std: float | None

    @property
    def range(self) -> float | None:
        return None if self.min is None or self.max is None else self.max - self.min


def spread(values: Sequence[float | None]) -> SpreadStats:
    """Statistics of the finite values; missing or NaN values (a run without that metric) are left out."""
    xs = _finite(values)
    n = len(xs)
    if not n:
        return SpreadStats(0, None, None, None, None)
    mean = math.fsum(xs) / n
    std = math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (n - 1)) if n > 1 else 0.0
    return SpreadStats(n, mean, min(xs), max(xs), std)


def hit_rate_tolerance(real: SpreadStats, floor: float = HIT_RATE_FLOOR) -> float:
    """How far the simulated hit rate may sit from the real mean: the real repeats' range (max - min), but
    never less than ``floor``."""
    return max(floor, real.range or 0.0)


def within(sim: float | None, real_mean: float | None, tolerance: float) -> bool | None:
    if sim is None or real_mean is None:
        return None
    # the small epsilon keeps a difference of exactly the tolerance inside despite float rounding
    return abs(sim - real_mean) <= tolerance + 1e-12


def ratio(sim: float | None, real: float | None) -> float | None:
    """sim / real; None when either is missing or the real value is 0."""
    if sim is None or real is None or real == 0:
        return None
    return sim / real


def difference(sim: float | None, real: float | None) -> float | None:
    return None if sim is None or real is None else sim - real


def _sign(x: float) -> int:
    return (x > 0) - (x < 0)


@dataclass(frozen=True)
class PairCounts:
    concordant: int
    discordant: int
    ties_x: int  # pairs tied in x only
    ties_y: int  # pairs tied in y only
    ties_both: int


def pair_counts(x: Sequence[float], y: Sequence[float]) -> PairCounts:
    """Classify every pair (i < j) of two equally long sequences."""
    if len(x) != len(y):
        raise ValueError(f"pair_counts: lengths differ ({len(x)} and {len(y)})")
    c = d = tx = ty = tb = 0
    for i in range(len(x)):
        for j in range(i + 1, len(x)):
            sx, sy = _sign(x[i] - x[j]), _sign(y[i] - y[j])
            if sx == 0 and sy == 0:
                tb += 1
            elif sx == 0:
                tx += 1
            elif sy == 0:
                ty += 1
            elif sx == sy:
                c += 1
            else:
                d += 1
    return PairCounts(c, d, tx, ty, tb)


def kendall_tau_b(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Kendall's tau-b, which corrects for ties:

        tau_b = (C - D) / sqrt((n0 - n1) * (n0 - n2))

    with C / D the concordant / discordant pairs, n0 = n (n - 1) / 2 all pairs, n1 the pairs tied in x and
    n2 the pairs tied in y (a pair tied in both counts in n1 and in n2). None when it is undefined: fewer
    than two values, or every value of one side equal.
    """
    p = pair_counts(x, y)
    n = len(x)
    n0 = n * (n - 1) // 2
    n1 = p.ties_x + p.ties_both
    n2 = p.ties_y + p.ties_both
    denom = (n0 - n1) * (n0 - n2)
    if denom <= 0:
        return None
    return (p.concordant - p.discordant) / math.sqrt(denom)


def resolved_discordant(real_lo: Sequence[float], real_hi: Sequence[float], real_mean: Sequence[float],
                        sim: Sequence[float]) -> tuple[int, int]:
    """(pairs the real repeats order consistently, of those the ones the simulator orders the other way).

    A pair (i, j) is ordered consistently when the real ranges do not overlap (``real_lo[i] > real_hi[j]``
    or the reverse): every repeat put the two in the same order. Pairs whose ranges overlap are noise at this
    number of repeats, and the simulator is not blamed for ordering them either way. A simulated tie of a
    resolved pair counts as disagreement.
    """
    resolved = wrong = 0
    for i in range(len(real_mean)):
        for j in range(i + 1, len(real_mean)):
            if real_lo[i] > real_hi[j] or real_lo[j] > real_hi[i]:
                resolved += 1
                if _sign(real_mean[i] - real_mean[j]) != _sign(sim[i] - sim[j]):
                    wrong += 1
    return resolved, wrong
