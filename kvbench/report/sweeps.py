"""Find runs that differ in exactly one parameter, so a chart can draw a line per combination across it.

Runs of one workload are split into lines by everything that is *not* the swept parameter: the
combination, the other sweepable parameters and the remaining settings (block size, latency profile,
seed, policy parameters...). A line with at least two distinct values of the parameter becomes a sweep.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kvbench.report.model import Combination, ReportRun

# Settings that must match for two runs to sit on one line (besides the combination and target kind).
FIXED_SETTINGS = ("block_size", "profile", "max_batched_tokens", "max_num_seqs", "seed", "router_params",
                  "eviction_params", "history", "api", "model", "max_concurrency")


@dataclass(frozen=True)
class SweepParam:
    key: str
    label: str
    value: Callable[[ReportRun], float | None]
    log_x: bool = False


SWEEP_PARAMS = (
    SweepParam("cache_tokens", "cache size (tokens per worker)", lambda r: r.cache_tokens, log_x=True),
    SweepParam("request_rate", "request rate (req/s)", lambda r: r.request_rate),
    # Without a rate in the trace metadata, the time scale is the rate knob: shown as offered load, the
    # trace's arrival rate times 1 / time scale (what `replay --rate-scale` sets), so load grows to the right.
    SweepParam("time_scale", "offered load (x the trace arrival rate)",
               lambda r: 1.0 / r.time_scale if r.request_rate is None and r.time_scale else None),
    SweepParam("workers", "workers", lambda r: r.n_workers),
)


@dataclass
class SweepLine:
    combination: Combination
    suffix: str  # what tells this line apart from others of the same combination ("" if nothing)
    points: list[tuple[float, list[ReportRun]]]  # sorted by x; replicates share one x


@dataclass
class Sweep:
    param: SweepParam
    lines: list[SweepLine]


def _fixed(run: ReportRun) -> str:
    cfg = run.config
    return json.dumps({k: cfg.get(k) for k in FIXED_SETTINGS}, sort_keys=True, default=str)


def _fmt(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return f"{value:g}" if isinstance(value, float) else str(value)


def find_sweeps(runs: list[ReportRun]) -> list[Sweep]:
    sweeps = []
    for param in SWEEP_PARAMS:
        others = [p for p in SWEEP_PARAMS if p.key != param.key]
        groups: dict[tuple, dict[float, list[ReportRun]]] = defaultdict(lambda: defaultdict(list))
        for run in runs:
            x = param.value(run)
            if x is None:
                continue
            key = (run.combination, run.target_kind, tuple(p.value(run) for p in others), _fixed(run))
            groups[key][float(x)].append(run)
        kept = [(key, pts) for key, pts in groups.items() if len(pts) >= 2]
        if not kept:
            continue
        lines = []
        varying = [i for i, p in enumerate(others) if len({key[2][i] for key, _ in kept}) > 1]
        seen: dict[tuple[Combination, str], int] = defaultdict(int)
        for key, pts in kept:
            combination, target, other_values, _ = key
            parts = [f"{others[i].key}={_fmt(other_values[i])}" for i in varying]
            if len({k[1] for k, _ in kept}) > 1:
                parts.insert(0, target)
            suffix = ", ".join(parts)
            seen[(combination, suffix)] += 1
            if seen[(combination, suffix)] > 1:  # differs only in fixed settings (seed, profile, ...)
                suffix = (suffix + ", " if suffix else "") + f"#{seen[(combination, suffix)]}"
            lines.append(SweepLine(combination, suffix, sorted(pts.items())))
        sweeps.append(Sweep(param, lines))
    return sweeps
