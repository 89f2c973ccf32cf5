"""Fitting a profile to whole replays: the search recovers a known profile from its own simulated replays."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from kvbench.cli import app
from kvbench.errors import KvbenchError
from kvbench.spec import ReplaySpec
from kvbench.sim.latency import LatencyProfile
from kvbench.sim.refine import ReplayPoint, loss, percentiles, refine, scaled, start_point
from kvbench.sim.run import run_sim
from kvbench.trace import read_trace
from tests.sim.sim_traces import request_trace

TRUE = LatencyProfile(name="true", source="test", step_base_s=0.004, prefill_token_s=3e-5, prefill_attn_s=0.0,
                      decode_seq_s=5e-4, decode_ctx_s=1e-7, request_s=0.006)


def _trace(tmp_path):
    rng = np.random.default_rng(0)
    shared = rng.integers(0, 30000, 256)
    reqs = [(f"r{k}", 0.05 * k, np.concatenate([shared[: 64 * (k % 4)], rng.integers(0, 30000, 64 + 32 * (k % 5))]),
             4 + k % 7) for k in range(40)]
    return request_trace(tmp_path / "t.parquet", reqs)


def _simulator(path: Path):
    trace = read_trace(path)
    spec = ReplaySpec(trace=path, output=Path("-"), target="sim", eviction="lru", workers=2, cache_tokens=4096,
                      progress=False)

    def simulate(profile, point):
        return percentiles(run_sim(replace(spec, time_scale=point.time_scale), trace, profile=profile).rows)

    return simulate


def test_refine_reproduces_the_replays_of_a_known_profile(tmp_path):
    """From a start 2-3x off in every term group, the fitted profile's simulated percentiles come within 10%
    of the replays at every rate. (The four numbers are not identifiable one by one: a larger per-step base
    trades against smaller decode terms at these batch sizes, so percentiles are what is checked.)"""
    simulate = _simulator(_trace(tmp_path))
    scales = (0.5, 2.0, 8.0)  # light load to queueing
    measured = [ReplayPoint(s, 1 / s, simulate(TRUE, ReplayPoint(s, 1 / s, {}, 0, 0)), 40, 0) for s in scales]
    start = replace(TRUE, step_base_s=0.0015, request_s=0.0, prefill_token_s=6e-5, decode_seq_s=2e-4,
                    decode_ctx_s=4e-8)
    result = refine(start, measured, simulate, max_evaluations=300)
    assert result.loss_before > 0.1 and result.loss_after < 0.005
    for r in result.per_rate:
        for key, real in r["measured"].items():
            assert r["simulated"][key] == pytest.approx(real, rel=0.1), (r["rate_scale"], key)
    got = result.profile
    assert got.request_s > 0.001  # the front-end term the isolated fit missed is found
    # the isolated fit's ratio inside a group is kept
    assert got.decode_ctx_s / got.decode_seq_s == pytest.approx(start.decode_ctx_s / start.decode_seq_s)
    assert [r["rate_scale"] for r in result.per_rate] == list(scales)


def test_refine_keeps_the_isolated_fit_when_it_is_already_exact(tmp_path):
    simulate = _simulator(_trace(tmp_path))
    measured = [ReplayPoint(1.0, 1.0, simulate(TRUE, ReplayPoint(1.0, 1.0, {}, 0, 0)), 40, 0)]
    result = refine(TRUE, measured, simulate, max_evaluations=20)
    assert result.loss_before == 0.0 and result.profile is TRUE


def test_loss_is_relative_and_infinite_when_the_simulator_lost_a_percentile():
    real = [ReplayPoint(1.0, 1.0, {"ttft_s p50": 0.1, "e2e_s p99": 2.0}, 1, 0)]
    assert loss([{"ttft_s p50": 0.2, "e2e_s p99": 4.0}], real) == pytest.approx(math.log(2) ** 2)
    assert loss([{"ttft_s p50": 0.2}], real) == math.inf


def test_search_point_maps_onto_the_profile():
    x = start_point(TRUE)
    back = scaled(TRUE, x)
    assert [getattr(back, k) for k in ("step_base_s", "request_s", "prefill_token_s", "decode_ctx_s")] == \
        pytest.approx([TRUE.step_base_s, TRUE.request_s, TRUE.prefill_token_s, TRUE.decode_ctx_s], rel=1e-12)
    y = x + np.append(np.log([2.0, 1.0, 3.0, 0.5]), -0.25)
    p = scaled(TRUE, y)
    assert (p.step_base_s, p.prefill_token_s, p.decode_seq_s) == pytest.approx((0.008, 9e-5, 2.5e-4))
    assert p.request_sigma == pytest.approx(0.25)  # the spread is searched on a linear scale, folded at 0
    zero = scaled(TRUE, start_point(replace(TRUE, step_base_s=0.0, request_s=0.0)))
    assert (zero.step_base_s, zero.request_s) == pytest.approx((1e-3, 1e-3))  # zero terms start where they count


def test_replay_rate_scale_needs_a_trace(tmp_path):
    res = CliRunner().invoke(app, ["calibrate", "--target", "http://127.0.0.1:9", "-o", str(tmp_path / "p.toml"),
                                   "--replay-rate-scale", "1,2"])
    assert isinstance(res.exception, KvbenchError) and "--replay-rate-scale: needs --trace" in str(res.exception)


def test_refine_finds_the_front_end_spread_of_a_wide_tailed_server(tmp_path):
    """A server whose front-end time varies (request_sigma 0.8) has a TTFT p99 far above its p50, which no
    constant request_s reproduces: the search, started with no spread, finds one and matches both."""
    wide = replace(TRUE, request_s=0.01, request_sigma=0.8)
    simulate = _simulator(_trace(tmp_path))
    scales = (0.5, 2.0)
    measured = [ReplayPoint(s, 1 / s, simulate(wide, ReplayPoint(s, 1 / s, {}, 0, 0)), 40, 0) for s in scales]
    without = refine(replace(wide, request_sigma=0.0), measured, _without_spread(simulate), max_evaluations=200)
    result = refine(replace(wide, request_sigma=0.0), measured, simulate, max_evaluations=300)
    assert result.profile.request_sigma == pytest.approx(0.8, abs=0.2)
    assert result.loss_after < 0.01 < without.loss_after
    for r in result.per_rate:
        for key in ("ttft_s p50", "ttft_s p99"):
            assert r["simulated"][key] == pytest.approx(r["measured"][key], rel=0.1), (r["rate_scale"], key)


def _without_spread(simulate):
    """The simulator with every profile's spread forced to 0: what the search could reach before the term."""
    return lambda profile, point: simulate(replace(profile, request_sigma=0.0), point)
