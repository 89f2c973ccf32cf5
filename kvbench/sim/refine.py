"""Fit a profile to whole replays, not only to isolated requests (``kvbench calibrate --replay-rate-scale``).

Isolated measurements pin each step term, but what a benchmark sees is queueing: requests waiting for a busy
engine, batches that grow with load. So after the isolated fit, the trace to be simulated is replayed on the
real servers at several multiples of its arrival rate, and the profile is adjusted until the simulator,
configured like the servers (workers, KV size, block size, scheduler limits: the same resolution
``kvbench validate`` uses), gives the same TTFT and end-to-end percentiles at every rate.

Five numbers are searched (Nelder-Mead, from the isolated fit): on a log scale the per-step base, the
per-request front-end time, and one multiplier for each of the prefill and the decode terms (keeping the
isolated fit's ratios inside a group, which a few percentiles cannot resolve); and, on a linear scale, the
spread of the front-end time (``request_sigma``), which no isolated measurement sees but the distance
between a replay's TTFT p50 and p99 does. The loss is the mean squared
log ratio of simulated to measured TTFT p50/p90/p99 and e2e p50/p99 over the rates: relative errors, so a
30 ms and a 3 s percentile count alike.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from kvbench.errors import fail
from kvbench.sim.latency import LatencyProfile

QUANTILES = (("ttft_s", 50), ("ttft_s", 90), ("ttft_s", 99), ("e2e_s", 50), ("e2e_s", 99))
PREFILL_TERMS = ("prefill_token_s", "prefill_attn_s")
DECODE_TERMS = ("decode_seq_s", "decode_ctx_s")
RESTARTS = 4
START_S = 1e-3


@dataclass
class ReplayPoint:
    """Measured percentiles of one real replay at ``rate_scale`` times the trace's arrival rate."""

    rate_scale: float
    time_scale: float
    values: dict[str, float]  # "ttft_s p50" -> seconds
    completed: int
    failed: int


@dataclass
class RefineResult:
    profile: LatencyProfile
    loss_before: float
    loss_after: float
    evaluations: int
    per_rate: list[dict[str, Any]] = field(default_factory=list)


def percentiles(rows) -> dict[str, float]:
    """The fitted percentiles of the completed requests of a result table."""
    ok = rows[rows["status"] == "ok"]
    out = {}
    for column, q in QUANTILES:
        values = ok[column].to_numpy(dtype=float)
        values = values[np.isfinite(values)]
        if len(values):
            out[f"{column} p{q}"] = float(np.percentile(values, q))
    return out


def loss(simulated: list[dict[str, float]], measured: list[ReplayPoint]) -> float:
    """Mean squared log ratio over every rate and percentile both sides have (inf if the simulator lost any)."""
    terms = []
    for sim, real in zip(simulated, measured, strict=True):
        for key, value in real.values.items():
            s = sim.get(key)
            if s is None or s <= 0 or value <= 0:
                return math.inf
            terms.append(math.log(s / value) ** 2)
    return float(np.mean(terms)) if terms else math.inf


def scaled(base: LatencyProfile, x: np.ndarray) -> LatencyProfile:
    """The profile at search point ``x`` (natural logs of: step base, request time, prefill and decode
    multipliers; then the front-end spread itself, folded at 0)."""
    step, request, prefill, decode = (float(math.exp(v)) for v in x[:4])
    changes: dict[str, float] = {"step_base_s": step, "request_s": request, "request_sigma": abs(float(x[4]))}
    changes.update({k: getattr(base, k) * prefill for k in PREFILL_TERMS})
    changes.update({k: getattr(base, k) * decode for k in DECODE_TERMS})
    return replace(base, **changes)


def start_point(base: LatencyProfile) -> np.ndarray:
    """Where the search starts: the isolated fit, with its zero terms moved to where they can matter.

    A term the isolated fit left at zero (noise can put a small step base into the front-end term) starts
    at a millisecond, the order of an engine step's fixed cost, and a zero front-end term at the step base:
    far below its real size a term moves no percentile, and a search finds no direction on a flat loss."""
    step = base.step_base_s if base.step_base_s > 0 else START_S
    return np.append(np.log([step, max(base.request_s, step), 1.0, 1.0]), base.request_sigma)


def refine(base: LatencyProfile, measured: list[ReplayPoint],
           simulate: Callable[[LatencyProfile, ReplayPoint], dict[str, float]],
           max_evaluations: int = 300) -> RefineResult:
    """Search the five numbers that make ``simulate`` match ``measured`` (``simulate`` runs the trace on
    the simulator configured like the servers, at the point's time scale, and returns its percentiles)."""
    from scipy.optimize import minimize

    cache: dict[tuple, float] = {}

    def f(x: np.ndarray) -> float:
        key = tuple(np.round(x, 9))
        if key not in cache:
            profile = scaled(base, x)
            cache[key] = loss([simulate(profile, p) for p in measured], measured)
        return cache[key]

    x = start_point(base)
    before = loss([simulate(base, p) for p in measured], measured)
    # Percentiles of a discrete-event run move in steps, so a simplex can stall on a plateau: restart it
    # around the best point with a smaller one until the budget is spent or a restart gains nothing.
    step = math.log(2.0)
    for _ in range(RESTARTS):
        budget = max_evaluations - len(cache)
        if budget <= len(x) + 1:
            break
        res = minimize(f, x, method="Nelder-Mead", options={
            "maxfev": budget, "xatol": 1e-4, "fatol": 1e-7, "initial_simplex": _simplex(x, step)})
        gained = f(x) - res.fun
        x = res.x
        step /= 2
        if gained <= 1e-9 and step < math.log(2.0) / 2:
            break
    best = scaled(base, x)
    after = f(x)
    if not after < before:  # the isolated fit was already the best found: keep it
        best, after = base, before
    per_rate = []
    for p in measured:
        sim = simulate(best, p)
        per_rate.append({"rate_scale": p.rate_scale, "completed": p.completed, "failed": p.failed,
                         "measured": p.values, "simulated": {k: sim.get(k) for k in p.values}})
    return RefineResult(best, before, after, len(cache), per_rate)


def _simplex(x0: np.ndarray, step: float) -> np.ndarray:
    """A simplex that moves each number by a factor of exp(step) (the default 5% starts too small for terms
    that may be off by several times)."""
    points = [x0]
    for i in range(len(x0)):
        p = x0.copy()
        p[i] += step
        points.append(p)
    return np.asarray(points)


def measure_replays(target: str, trace_path: Path, scales: list[float], max_requests: int | None,
                    timeout_s: float, model: str | None, progress: bool) -> tuple[list[ReplayPoint], Any]:
    """Replay the trace on the real servers at each rate scale (round robin, caches reset before each)."""
    from kvbench.http.replay import run_http
    from kvbench.resolve import SERVER_EVICTION
    from kvbench.spec import ReplaySpec
    from kvbench.trace import read_trace

    trace = read_trace(trace_path)
    points = []
    with tempfile.TemporaryDirectory(prefix="kvbench-calibrate-") as tmp:
        for scale in scales:
            spec = ReplaySpec(trace=trace_path, output=Path(tmp) / f"x{scale:g}", target=target,
                              eviction=SERVER_EVICTION, router="round_robin", time_scale=1.0 / scale, max_requests=max_requests,
                              timeout_s=timeout_s, model=model, progress=progress, reset_cache=True)
            rows = run_http(spec, trace).rows  # resolved (every flag checked) there
            pts = percentiles(rows)
            if not pts:
                raise fail(f"--replay-rate-scale {scale:g}: no request of {trace_path} completed on {target}; "
                           f"see the servers' logs")
            points.append(ReplayPoint(scale, 1.0 / scale, pts, int((rows["status"] == "ok").sum()),
                                      int((rows["status"] == "error").sum())))
    return points, trace


def simulator_for(target: str, trace, trace_path: Path, max_requests: int | None,
                  model: str | None) -> Callable[[LatencyProfile, ReplayPoint], dict[str, float]]:
    """A function running the trace on the simulator configured like ``target``'s servers."""
    from kvbench.sim.run import run_sim
    from kvbench.spec import ReplaySpec
    from kvbench.validate.targets import Flags, resolve_targets

    (resolved,) = resolve_targets(target, Flags(model=model))
    cfg = resolved.config
    base = ReplaySpec(trace=trace_path, output=Path("-"), target="sim", router="round_robin",
                      eviction=cfg.sim_eviction, eviction_params=dict(cfg.eviction_params), workers=cfg.workers,
                      block_size=int(cfg.block_size.value), cache_tokens=int(cfg.cache_tokens.value),
                      max_num_seqs=int(cfg.max_num_seqs.value), max_batched_tokens=int(cfg.max_batched_tokens.value),
                      chunked_prefill=bool(cfg.chunked_prefill.value), max_requests=max_requests, progress=False)

    def simulate(profile: LatencyProfile, point: ReplayPoint) -> dict[str, float]:
        return percentiles(run_sim(replace(base, time_scale=point.time_scale), trace, profile=profile).rows)

    return simulate
