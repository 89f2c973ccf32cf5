"""Seeds as replicates: per configuration, the mean of each headline metric with its 95% confidence interval,
and ratios against the baseline's configuration paired seed by seed (the same seed replays the same trace, so
the per-seed ratio removes the trace-to-trace variation both share).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kvbench.report.model import ReportRun, _num
from kvbench.seed_stats import SeedStats, paired_ratios, seed_stats

# (summary metric, header, higher is better)
METRICS = (
    ("hit_rate", "hit rate", True),
    ("mean_ttft_ms", "TTFT mean (ms)", False),
    ("p99_ttft_ms", "TTFT p99 (ms)", False),
    ("request_throughput", "req/s", True),
    ("request_goodput", "goodput (req/s)", True),
)


@dataclass
class SeedGroup:
    """Runs that differ only in their seed."""

    label: str
    runs: list[ReportRun]
    stats: dict[str, SeedStats] = field(default_factory=dict)
    vs_baseline: dict[str, SeedStats] = field(default_factory=dict)  # paired per-seed ratios


def _setting(run: ReportRun) -> tuple:
    """Everything but the combination and the seed: runs only compare inside one setting."""
    return (run.workload_key, run.target_kind, run.n_workers, run.cache_tokens, run.time_scale)


_SHOWN = {2: "workers", 3: "cache", 4: "time scale"}  # _setting positions that can tell settings apart


def _varied(keys) -> set[int]:
    return {i for i in _SHOWN if len({k[i] for k in keys}) > 1}


def _setting_label(key: tuple, varied: set[int]) -> str:
    return ", ".join(f"{_SHOWN[i]} {key[i]}" for i in sorted(varied))


def setting_groups(runs: list[ReportRun]) -> list[tuple[str, list[ReportRun]]]:
    """Runs split by setting, each labelled by what varies between settings ("" when nothing does)."""
    by: dict[tuple, list[ReportRun]] = {}
    for run in runs:
        by.setdefault(_setting(run), []).append(run)
    varied = _varied(by)
    return [(_setting_label(k, varied), members) for k, members in by.items()]


def _seed(run: ReportRun) -> int | None:
    seed = run.config.get("seed")
    return seed if isinstance(seed, int) and not isinstance(seed, bool) else None


def _value(run: ReportRun, metric: str) -> float | None:
    return run.hit_rate() if metric == "hit_rate" else _num(run.summary.get(metric))


def seed_groups(runs: list[ReportRun], baseline: ReportRun | None = None) -> list[SeedGroup]:
    """Groups with at least two distinct seeds, in the runs' order."""
    by_key: dict[tuple, list[ReportRun]] = {}
    for run in runs:
        if _seed(run) is not None:
            by_key.setdefault((*_setting(run), run.combination), []).append(run)
    keys = [k for k, members in by_key.items() if len({_seed(r) for r in members}) >= 2]
    varied = _varied(keys)
    base_key = None if baseline is None else (*_setting(baseline), baseline.combination)
    base_runs = by_key.get(base_key, []) if base_key is not None else []
    groups = []
    for key in keys:
        members = by_key[key]
        group = SeedGroup(", ".join(filter(None, [key[-1].label, _setting_label(key, varied)])), members)
        for metric, _, _ in METRICS:
            group.stats[metric] = seed_stats([_value(r, metric) for r in members])
        if base_runs and key[:-1] == base_key[:-1] and key != base_key:
            for metric, _, _ in METRICS:
                mine = {_seed(r): _value(r, metric) for r in members}
                ref = {_seed(r): _value(r, metric) for r in base_runs}
                group.vs_baseline[metric] = seed_stats(paired_ratios(mine, ref))
        groups.append(group)
    return groups


def groups_json(groups: list[SeedGroup]) -> list[dict[str, Any]]:
    out = []
    for g in groups:
        row: dict[str, Any] = {"configuration": g.label, "seeds": len(g.runs)}
        for metric, _, _ in METRICS:
            st = g.stats[metric]
            row[f"{metric}_mean"], row[f"{metric}_ci95"] = st.mean, st.ci95
            if metric in g.vs_baseline:
                r = g.vs_baseline[metric]
                row[f"vs_baseline_{metric}_mean"], row[f"vs_baseline_{metric}_ci95"] = r.mean, r.ci95
        out.append(row)
    return out
