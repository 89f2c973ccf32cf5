"""``lbgr_ext`` and its recursive least squares, term by term with numbers worked out by hand.

predicted(w) = 4e-3 * (uncached(w) + load(w, now)) + 0.02 + residual_w(x),  x = (1, uncached/1000, load/1000)
"""

from __future__ import annotations

import numpy as np
import pytest

from kvbench.errors import KvbenchError
from kvbench.routing import Completion, RouterConfig, RouteRequest, make_router
from kvbench.routing.rls import RecursiveLeastSquares

DEFAULTS = {"service_s_per_token": 4e-3, "service_base_s": 0.02, "load_decay": 31 / 32, "decay_interval_s": 0.02,
            "forgetting": 0.992, "rls_delta": 100.0, "features": "full", "target": "ttft", "monotone": True}


def router(workers=2, cache_blocks=None, **params):
    return make_router("lbgr_ext", RouterConfig(workers=workers, block_size=16, cache_blocks=cache_blocks,
                                                params=params))


def req(name, tokens, first=0):
    return RouteRequest(name, tokens, 4, np.arange(first, first + tokens // 16, dtype=np.int64))


def done(ttft=None, e2e=None, ok=True):
    return Completion(ttft_s=ttft, e2e_s=e2e, cached_tokens=0, output_tokens=4, ok=ok)


def test_defaults_are_recorded_and_used():
    r = router()
    d = r.describe()
    assert {k: d[k] for k in DEFAULTS} == DEFAULTS
    assert d["residual_theta"] == [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]
    assert r.models[0].lam == 0.992 and (r.models[1].P == 100.0 * np.eye(3)).all()


@pytest.mark.parametrize("params, message", [
    ({"features": "quadratic"}, "features=quadratic"),
    ({"target": "tpot"}, "target=tpot"),
    ({"load_decay": 0.0}, "load_decay must be in"),
    ({"load_decay": 1.5}, "load_decay must be in"),
    ({"decay_interval_s": 0.0}, "decay_interval_s > 0"),
    ({"forgetting": 0.0}, "forgetting=0.0"),
    ({"forgetting": 1.01}, "forgetting=1.01"),
])
def test_bad_parameters_are_refused(params, message):
    with pytest.raises(KvbenchError, match=message):
        router(**params)


def test_edge_parameters_are_accepted():
    r = router(load_decay=1.0, forgetting=1.0, decay_interval_s=1e-9)
    r.route(req("a", 100), 0.0)
    assert r.load_at(0, 50.0) == 100.0  # no decay at all


def test_prediction_on_an_empty_router():
    r = router()
    pred, x, base, uncached = r.predict(req("a", 100), 0, 0.0)
    assert uncached == 100 and base == pytest.approx(4e-3 * 100 + 0.02) and pred == base
    assert x.tolist() == [1.0, 0.1, 0.0]


def test_prediction_counts_the_blocks_routed_there_and_the_load():
    r = router()
    assert r.route(req("a", 100), 0.0) == 0  # both 0.42: the first wins
    assert r.load == [100.0, 0.0]
    # worker 0 holds the 6 blocks: 96 tokens cached, 4 to compute, plus a load of 100
    pred0, x0, _, uncached0 = r.predict(req("b", 100), 0, 0.0)
    assert uncached0 == 4 and pred0 == pytest.approx(4e-3 * (4 + 100) + 0.02)
    assert x0.tolist() == pytest.approx([1.0, 0.004, 0.1])
    assert r.predict(req("b", 100), 1, 0.0)[0] == pytest.approx(0.42)
    assert r.choose(req("b", 100), 0.0) == 1  # 0.42 < 0.436
    # a prompt of exactly 6 blocks recomputes its last token: 95 cached, 1 to compute
    assert r.predict(req("c", 96), 0, 0.0)[3] == 1


def test_the_router_picks_the_lowest_prediction_not_the_first():
    r = router(workers=3)
    r.load = [500.0, 20.0, 300.0]
    assert r.choose(req("a", 64), 0.0) == 1


def test_block_view_is_bounded_by_the_cache_size():
    r = router(cache_blocks=4)
    r.route(req("a", 160), 0.0)  # 10 blocks, the view keeps the 4 most recently touched: the first 4
    assert r.predict(req("b", 160), 0, 0.0)[3] == 160 - 64


def test_load_decays_continuously_from_the_last_reading():
    r = router()
    r.route(req("a", 320), 1.0)
    assert r.load_at(0, 1.0) == 320.0
    assert r.load_at(0, 1.02) == pytest.approx(320 * 31 / 32, rel=1e-12)
    assert r.load_at(0, 1.04) == pytest.approx(320 * (31 / 32) ** 2, rel=1e-12)
    assert r.load_at(0, 1.03) == pytest.approx(320 * (31 / 32) ** 2, rel=1e-12)  # never grows back


def test_features_scale_by_a_thousand_tokens():
    assert router().features(250, 4000.0).tolist() == [1.0, 0.25, 4.0]
    assert router(features="const").features(250, 4000.0).tolist() == [1.0]


def test_one_completion_updates_the_residual_by_the_rls_gain():
    r = router()
    a = req("a", 100)
    r.route(a, 0.0)
    x = np.array([1.0, 0.1, 0.0])
    base = 0.42
    r.complete(a, 0, 0.5, done(ttft=0.5, e2e=0.9))
    # first update from theta = 0, P = 100 I: theta = 100 x / (0.992 + 100 x.x) * (observed - base)
    expect = 100 * x / (0.992 + 100 * x @ x) * (0.5 - base)
    assert r.models[0].theta == pytest.approx(expect, rel=1e-12)
    assert r.models[1].updates == 0 and r.load[0] == 0.0


@pytest.mark.parametrize("target, result, observed", [
    ("e2e", done(ttft=0.5, e2e=0.9), 0.9),
    ("ttft", done(ttft=None, e2e=0.9), 0.9),  # no TTFT reported: learn from e2e
])
def test_the_target_chooses_what_is_learned(target, result, observed):
    r = router(target=target)
    a = req("a", 100)
    r.route(a, 0.0)
    r.complete(a, 0, 1.0, result)
    x = np.array([1.0, 0.1, 0.0])
    assert r.models[0].theta == pytest.approx(100 * x / (0.992 + 100 * x @ x) * (observed - 0.42), rel=1e-12)


@pytest.mark.parametrize("result", [done(ttft=0.5, e2e=0.9, ok=False), done()])
def test_failures_and_empty_results_teach_nothing_but_free_the_load(result):
    r = router()
    a = req("a", 100)
    r.route(a, 0.0)
    r.complete(a, 0, 0.04, result)
    assert r.models[0].updates == 0 and r.load[0] == 0.0


def test_a_finished_request_takes_away_what_is_left_of_its_increment():
    r = router()
    a, b = req("a", 320), req("b", 640, first=1000)
    assert r.route(a, 0.0) == 0
    r.on_routed(b, 0, 0.01)  # b lands on the same worker 10 ms later
    assert r.load[0] == pytest.approx(320 * (31 / 32) ** 0.5 + 640, rel=1e-12)
    # at 20 ms a ends: of the load (320 (31/32) + 640 (31/32)^0.5) a's share is what is left of its 320
    r.complete(a, 0, 0.02, done(ttft=0.1, e2e=0.2))
    assert r.load[0] == pytest.approx(640 * (31 / 32) ** 0.5, rel=1e-9)
    r.complete(b, 0, 0.05, done(ttft=0.1, e2e=0.2))
    assert r.load[0] == pytest.approx(0.0, abs=1e-9)


def test_pinned_routing_computes_the_prediction_itself():
    r = router()
    q = req("a", 100)
    r.on_routed(q, 1, 0.0)  # routed without choose (a pinned session)
    x, base, uncached, at = r.pending["a"]
    assert x.tolist() == [1.0, 0.1, 0.0] and base == pytest.approx(0.42) and (uncached, at) == (100, 0.0)
    assert r.load[1] == 100.0 and r.view.size(1) == 6


def test_monotone_clips_negative_slopes_only_when_asked():
    r = router(features="const")
    r.models[0].theta = np.array([0.25])
    assert r.residual(0, np.array([1.0])) == 0.25
    r = router()
    r.models[0].theta = np.array([0.1, -2.0, 3.0])
    assert r.residual(0, np.array([1.0, 0.5, 0.5])) == pytest.approx(0.1 + 1.5)
    r = router(monotone=False)
    r.models[0].theta = np.array([0.1, -2.0, 3.0])
    assert r.residual(0, np.array([1.0, 0.5, 0.5])) == pytest.approx(0.1 - 1.0 + 1.5)


# --------------------------------------------------------------------------------------------------- RLS
def test_rls_update_is_the_textbook_recursion():
    m = RecursiveLeastSquares(2, forgetting=0.9, delta=10.0)
    x, y = np.array([1.0, 2.0]), 3.0
    P = 10.0 * np.eye(2)
    gain = P @ x / (0.9 + x @ P @ x)
    m.update(x, y)
    assert m.theta == pytest.approx(gain * y, rel=1e-12)
    assert m.P == pytest.approx((P - np.outer(gain, P @ x)) / 0.9, rel=1e-12)
    assert m.predict(x) == pytest.approx(float(gain @ x) * y, rel=1e-12) and m.updates == 1
    x2 = np.array([0.5, -1.0])
    P2, th = m.P.copy(), m.theta.copy()
    g2 = P2 @ x2 / (0.9 + x2 @ P2 @ x2)
    m.update(x2, 1.0)
    assert m.theta == pytest.approx(th + g2 * (1.0 - th @ x2), rel=1e-12) and m.updates == 2


def test_rls_learns_a_line_exactly_without_forgetting():
    m = RecursiveLeastSquares(2, forgetting=1.0, delta=1e6)
    for t in range(20):
        x = np.array([1.0, float(t)])
        m.update(x, 2.0 + 0.5 * t)
    assert m.theta == pytest.approx([2.0, 0.5], abs=1e-4)


def test_rls_caps_the_covariance_trace():
    m = RecursiveLeastSquares(2, forgetting=0.5, delta=100.0, max_trace=1000.0)
    for _ in range(10):
        m.update(np.array([1.0, 0.0]), 1.0)  # the second feature never varies: its variance winds up
    assert np.trace(m.P) == pytest.approx(1000.0, rel=1e-9)
    free = RecursiveLeastSquares(2, forgetting=0.5, delta=100.0, max_trace=1e12)
    for _ in range(10):
        free.update(np.array([1.0, 0.0]), 1.0)
    assert np.trace(free.P) > 1000.0


@pytest.mark.parametrize("forgetting", [0.0, -0.5, 1.5])
def test_rls_refuses_a_forgetting_factor_outside_0_1(forgetting):
    with pytest.raises(ValueError, match="forgetting must be in"):
        RecursiveLeastSquares(1, forgetting=forgetting)
    RecursiveLeastSquares(1, forgetting=1.0)  # the upper bound is allowed


def test_const_features_learn_a_bias_only():
    r = router(features="const")
    a = req("a", 100)
    r.route(a, 0.0)
    r.complete(a, 0, 0.5, done(ttft=0.5, e2e=0.9))
    # one feature, x = (1,): theta = 100 / (0.992 + 100) * (0.5 - 0.42)
    assert r.models[0].theta.tolist() == pytest.approx([100 / 100.992 * (0.5 - 0.42)], rel=1e-12)
    assert r.predict(req("b", 100, first=9000), 0, 0.5)[0] == pytest.approx(0.42 + r.models[0].theta[0], rel=1e-9)


def test_describe_records_the_learned_residuals_to_six_decimals():
    r = router(features="const")
    a = req("a", 100)
    r.route(a, 0.0)
    r.complete(a, 0, 0.5, done(ttft=0.5, e2e=0.9))
    theta = 100 / 100.992 * (0.5 - 0.42)  # 0.07921419...
    assert r.describe()["residual_theta"] == [[round(theta, 6)], [0.0]]
