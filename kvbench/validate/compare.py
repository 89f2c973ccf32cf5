"""From run summaries (run.json) to the fidelity record's numbers: per combination, across combinations,
and the verdict. Only complete runs enter: an interrupted run is left out of every statistic."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from kvbench.validate import stats
from kvbench.validate.record import (
    METRICS,
    RANKED,
    CombinationFidelity,
    EvictionOrder,
    MetricFidelity,
    Ranking,
    RealStats,
    Verdict,
)


@dataclass
class CombinationRuns:
    """What was gathered for one combination: (run directory, run.json summary) of each complete run."""

    label: str
    router: str
    eviction: str
    sim_eviction: str
    target: str
    real: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    sim: tuple[str, dict[str, Any]] | None = None


def metric_value(summary: dict[str, Any], key: str) -> float | None:
    primary, fallback, _, _ = METRICS[key]
    value = summary.get(primary)
    if value is None and fallback is not None:
        value = summary.get(fallback)
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def _per_worker(summary: dict[str, Any]) -> list[int] | None:
    counts = summary.get("requests_per_worker")
    return [int(n) for n in counts] if isinstance(counts, list) else None


def _metric(real_values: list[float | None], sim: float | None) -> MetricFidelity:
    s = stats.spread(real_values)
    in_range = None
    if sim is not None and s.min is not None and s.max is not None:
        in_range = s.min - 1e-12 <= sim <= s.max + 1e-12
    real = RealStats(values=real_values, n=s.n, mean=s.mean, min=s.min, max=s.max, std=s.std)
    return MetricFidelity(real=real, sim=sim, difference=stats.difference(sim, s.mean),
                          ratio=stats.ratio(sim, s.mean),
                          sim_in_real_range=in_range)


def combination_fidelity(runs: CombinationRuns) -> CombinationFidelity:
    sim_summary = runs.sim[1] if runs.sim is not None else None
    metrics = {}
    for key in METRICS:
        real_values = [metric_value(s, key) for _, s in runs.real]
        metrics[key] = _metric(real_values, None if sim_summary is None else metric_value(sim_summary, key))
    hit = metrics["hit_rate"]
    real_hit = stats.spread(hit.real.values)
    tolerance = stats.hit_rate_tolerance(real_hit) if real_hit.n else None
    return CombinationFidelity(
        label=runs.label, router=runs.router, eviction=runs.eviction, sim_eviction=runs.sim_eviction,
        target=runs.target, repeats=len(runs.real), real_runs=[p for p, _ in runs.real],
        sim_run=None if runs.sim is None else runs.sim[0],
        real_failed=[int(s.get("failed") or 0) for _, s in runs.real],
        sim_failed=None if sim_summary is None else int(sim_summary.get("failed") or 0),
        real_requests_per_worker=[_per_worker(s) or [] for _, s in runs.real],
        sim_requests_per_worker=None if sim_summary is None else _per_worker(sim_summary),
        metrics=metrics, hit_rate_tolerance=tolerance,
        hit_rate_within=None if tolerance is None else stats.within(hit.sim, hit.real.mean, tolerance))


def _compared(combos: Sequence[CombinationFidelity], metric: str):
    """Combinations with both a real mean and a simulated value of ``metric``, and those numbers."""
    keep = [c for c in combos
            if c.metrics[metric].real.mean is not None and c.metrics[metric].sim is not None]
    real = [c.metrics[metric].real.mean for c in keep]
    lo = [c.metrics[metric].real.min for c in keep]
    hi = [c.metrics[metric].real.max for c in keep]
    sim = [c.metrics[metric].sim for c in keep]
    return keep, real, lo, hi, sim


def ranking(combos: Sequence[CombinationFidelity], metric: str) -> Ranking:
    keep, real, lo, hi, sim = _compared(combos, metric)
    resolved, wrong = stats.resolved_discordant(lo, hi, real, sim)
    return Ranking(metric=metric, higher_is_better=METRICS[metric][3], combinations=[c.label for c in keep],
                   real_mean=real, sim=sim, kendall_tau_b=stats.kendall_tau_b(real, sim),
                   resolved_pairs=resolved, discordant_resolved_pairs=wrong,
                   agrees=None if not resolved else wrong == 0)


def _best_first(names: list[str], values: list[float], higher_is_better: bool) -> list[str]:
    order = sorted(range(len(names)), key=lambda i: (-values[i] if higher_is_better else values[i], names[i]))
    return [names[i] for i in order]


def order_text(names: Sequence[str], values: Sequence[float], higher_is_better: bool) -> str:
    """Best first, equal values joined by '=': "rlt > lru", "lru = rlt"."""
    ranked = _best_first(list(names), list(values), higher_is_better)
    value = dict(zip(names, values, strict=True))
    text = ranked[0] if ranked else ""
    for prev, name in zip(ranked, ranked[1:], strict=False):
        text += f" {'=' if value[name] == value[prev] else '>'} {name}"
    return text


def eviction_orders(combos: Sequence[CombinationFidelity]) -> list[EvictionOrder]:
    """For every router run under two or more eviction policies, on each ranked metric."""
    by_router: dict[str, list[CombinationFidelity]] = {}
    for c in combos:
        by_router.setdefault(c.router, []).append(c)
    out = []
    for router, members in by_router.items():
        if len({c.eviction for c in members}) < 2:
            continue
        for metric in RANKED:
            keep, real, lo, hi, sim = _compared(members, metric)
            names = [c.eviction for c in keep]
            higher = METRICS[metric][3]
            resolved, wrong = stats.resolved_discordant(lo, hi, real, sim)
            out.append(EvictionOrder(
                router=router, metric=metric, evictions=names, real_mean=real, sim=sim,
                real_order=_best_first(names, real, higher),
                sim_order=_best_first(names, sim, higher), kendall_tau_b=stats.kendall_tau_b(real, sim),
                resolved_pairs=resolved, discordant_resolved_pairs=wrong,
                agrees=None if not resolved else wrong == 0))
    return out


def _all(values: Sequence[bool | None]) -> bool | None:
    judged = [v for v in values if v is not None]
    return all(judged) if judged else None


def verdict(combos: Sequence[CombinationFidelity], rankings: Sequence[Ranking],
            orders: Sequence[EvictionOrder]) -> Verdict:
    by_metric = {r.metric: r.agrees for r in rankings}
    within = _all([c.hit_rate_within for c in combos])
    hit_order, ttft_order = by_metric.get("hit_rate"), by_metric.get("mean_ttft_ms")
    eviction = _all([o.agrees for o in orders])
    # nothing is trusted on rankings alone: the hit rates must have been judged
    trusted = None if within is None else _all([within, hit_order, ttft_order, eviction])
    return Verdict(hit_rates_within=within, hit_rate_ranking_agrees=hit_order, ttft_ranking_agrees=ttft_order,
                   eviction_order_agrees=eviction, trusted=trusted)
