"""Curves derived from request rows, each cut to a few hundred points.

A run has thousands of requests and a report may hold dozens of runs; a browser draws a few hundred
points per line just as well, and the file stays small. Sampling is by position (quantiles, evenly spaced
indices or an even time grid), so the same run always gives the same curve.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

MAX_POINTS = 300


@dataclass
class Curve:
    x: np.ndarray
    y: np.ndarray


def _round(values: np.ndarray, digits: int = 4) -> np.ndarray:
    """Four significant digits: invisible on a chart, a large saving in the file."""
    values = np.asarray(values, dtype=float)
    out = values.copy()
    finite = np.isfinite(values) & (values != 0)
    mag = np.floor(np.log10(np.abs(values[finite])))
    scale = 10.0 ** (digits - 1 - mag)
    out[finite] = np.round(values[finite] * scale) / scale
    return out


def cdf(values: np.ndarray, max_points: int = MAX_POINTS) -> Curve | None:
    """Empirical CDF; beyond max_points, evenly spaced quantiles (which always include min and max)."""
    v = np.sort(np.asarray(values, dtype=float))
    v = v[np.isfinite(v)]
    n = len(v)
    if n == 0:
        return None
    if n <= max_points:
        return Curve(_round(v), _round(np.arange(1, n + 1) / n))
    probs = np.linspace(0.0, 1.0, max_points)
    idx = np.minimum(np.ceil(probs * n).astype(int) - 1, n - 1).clip(0)
    return Curve(_round(v[idx]), _round((idx + 1) / n))


def _time_origin(df: pd.DataFrame) -> float:
    t0 = df["arrival_s"].min()
    return float(t0) if pd.notna(t0) else 0.0


def rolling_hit_rate(df: pd.DataFrame, max_points: int = MAX_POINTS) -> Curve | None:
    """Token hit rate over a sliding window of requests, in the order they reached a worker.

    The window is about 1/40 of the run (at least 8 requests): short enough to show a cache warming up
    or thrashing, long enough that one long prompt does not dominate a point.
    """
    ok = df[(df["status"] == "ok") & df["cached_tokens"].notna() & df["input_tokens"].notna()]
    if ok.empty:
        return None
    t0 = _time_origin(df)
    when = ok["sent_s"].where(ok["sent_s"].notna(), ok["arrival_s"]).to_numpy(dtype=float)
    order = np.argsort(when, kind="stable")
    when = when[order]
    cached = ok["cached_tokens"].to_numpy(dtype=float)[order]
    inp = ok["input_tokens"].to_numpy(dtype=float)[order]
    n = len(when)
    window = min(n, max(8, n // 40))
    c_cum = np.concatenate([[0.0], np.cumsum(cached)])
    i_cum = np.concatenate([[0.0], np.cumsum(inp)])
    ends = np.arange(window, n + 1)
    denom = i_cum[ends] - i_cum[ends - window]
    with np.errstate(divide="ignore", invalid="ignore"):
        rate = np.where(denom > 0, (c_cum[ends] - c_cum[ends - window]) / denom, np.nan)
    x = when[ends - 1] - t0
    if len(ends) > max_points:
        pick = np.unique(np.linspace(0, len(ends) - 1, max_points).round().astype(int))
        x, rate = x[pick], rate[pick]
    return Curve(_round(x), _round(rate))


def outstanding_per_worker(df: pd.DataFrame, n_workers: int, max_points: int = 200) -> tuple[np.ndarray, list[np.ndarray]] | None:
    """Requests in flight on each worker (sent, not yet done), sampled on an even time grid."""
    sent_rows = df[df["sent_s"].notna() & df["worker"].notna() & (df["worker"] >= 0)]
    if sent_rows.empty or n_workers <= 0:
        return None
    t0 = _time_origin(df)
    sent = sent_rows["sent_s"].to_numpy(dtype=float)
    # A request that failed without a done time stops counting when it was sent.
    done = sent_rows["done_s"].to_numpy(dtype=float)
    done = np.where(np.isfinite(done), done, sent)
    t_end = float(np.nanmax(done))
    grid = np.linspace(t0, max(t_end, t0 + 1e-9), max_points)
    workers = sent_rows["worker"].to_numpy(dtype=int)
    out = []
    for w in range(n_workers):
        mask = workers == w
        s = np.sort(sent[mask])
        d = np.sort(done[mask])
        out.append(np.searchsorted(s, grid, side="right") - np.searchsorted(d, grid, side="right"))
    return _round(grid - t0), out
