"""``lbgr`` replays decisions worked out by hand from the RLT paper's router code (policy eta_online_3d).

Units: 4 characters per token and 1 ms per uncached character, so an uncached token costs 4 ms; loads are
integer milliseconds decayed by floor(x * 31 / 32) every 20 ms; a later worker wins only when its
prediction is more than 1 ms lower; the bias is scalar RLS (lambda 0.992, p0 1e6) on
max(1, e2e_ms - base - load_at_route).
"""

import numpy as np
import pytest

from kvbench.errors import KvbenchError
from kvbench.routing import Completion, RouterConfig, RouteRequest, make_router

K1 = 1e6 / (0.992 + 1e6)  # the RLS gain of a worker's first update (P = 1e6)


def req(name: str, ids: list[int]) -> RouteRequest:
    ids_arr = np.asarray(ids, dtype=np.int64)
    return RouteRequest(name, len(ids), 4, ids_arr[: len(ids) // 16], prompt_token_ids=ids)


def done(e2e_s: float, ok: bool = True) -> Completion:
    return Completion(ttft_s=e2e_s / 2, e2e_s=e2e_s, cached_tokens=0, output_tokens=4, ok=ok)


A = list(range(100))
B = A[:60] + list(range(1000, 1040))
C = A[:50]
D = list(range(2000, 2100))


def test_hand_computed_decision_sequence():
    r = make_router("lbgr", RouterConfig(workers=2))
    a, b, c, d = req("a", A), req("b", B), req("c", C), req("d", D)

    # t=0: both predict 4*100 = 400 ms; the tie keeps worker 0. It reserves round(400) = 400.
    assert r.route(a, 0.0) == 0
    assert r.load == [400, 0]
    # t=10 ms: worker 0 holds A's first 60 tokens: 4*40 + 400 = 560 against worker 1's 400.
    assert r.predict(b, 0, 0.010)[0] == 560 and r.predict(b, 1, 0.010)[0] == 400
    assert r.route(b, 0.010) == 1
    assert r.load == [400, 400]
    # t=50 ms: two ticks, 400 -> 387 -> 374 on both. C (A's first 50 tokens) is fully matched on both
    # trees (B shares A's first 60), so base = max(1, 0) = 1 and both predict 375: worker 0 by the tie.
    assert r.predict(c, 0, 0.050)[0] == 375 and r.predict(c, 1, 0.050)[0] == 375
    assert r.route(c, 0.050) == 0
    assert r.load == [375, 374]
    # t=70 ms: A ends after 70 ms. A third tick: 375 -> 363. Left of A's 400 after 3 ticks:
    # round(400 * (31/32)**3) = round(363.66) = 364, so the load saturates at 0. Residual
    # max(1, 70 - (400 + 0)) = 1 (clamped): the bias becomes K1 * 1.
    r.complete(a, 0, 0.070, done(0.070))
    assert r.load[0] == 0
    assert r.bias(0) == pytest.approx(K1, rel=1e-12)
    # t=72 ms: B fails. Worker 1 decays 374 -> 362 (its third tick); B's 400 after floor(62/20) = 3 ticks
    # is 364: saturates at 0. A failure teaches the bias nothing.
    r.complete(b, 1, 0.072, done(0.062, ok=False))
    assert r.load[1] == 0 and r.bias(1) == 0.0
    # t=75 ms: D is new everywhere. Worker 0: 400 + 0 + 0.999999 ; worker 1: 400. Worker 1 is lower by
    # less than the 1 ms margin, so worker 0 keeps it.
    p0, p1 = r.predict(d, 0, 0.075)[0], r.predict(d, 1, 0.075)[0]
    assert p0 == pytest.approx(400 + K1) and p1 == 400
    assert r.route(d, 0.075) == 0
    assert r.load == [400, 0]
    # t=80 ms: C ends after 30 ms. Tick 4: 400 -> 387; C's increment of 1 after one tick rounds to 1:
    # 386. Residual max(1, 30 - (1 + 375)) = 1 again, so the bias moves towards 1.
    r.complete(c, 0, 0.080, done(0.030))
    assert r.load[0] == 386
    p_after_first = 1e6 / (1e6 + 0.992)  # P after the first update: p0 * (1 - K1) / lambda
    k2 = p_after_first / (0.992 + p_after_first)
    assert r.bias(0) == pytest.approx(K1 + k2 * (1 - K1), rel=1e-12)


def test_completion_subtracts_the_decayed_increment_not_the_reserved_one():
    r = make_router("lbgr", RouterConfig(workers=1))
    one, two = req("one", A), req("two", list(range(500, 550)))
    r.route(one, 0.0)  # +400
    r.route(two, 0.0)  # +200
    # at 100 ms: five ticks 600 -> 581 -> 562 -> 544 -> 527 -> 510; left of 400: round(341.29) = 341
    r.complete(one, 0, 0.100, done(0.1))
    assert r.load[0] == 510 - 341  # subtracting the undecayed 400 would leave 110


def test_bias_learns_end_to_end_latency_minus_the_estimate():
    r = make_router("lbgr", RouterConfig(workers=1))
    q = req("q", list(range(10)))  # base 40 ms, load 0 at routing
    r.route(q, 0.0)
    r.complete(q, 0, 0.5, Completion(ttft_s=0.1, e2e_s=0.5, cached_tokens=0, output_tokens=4))
    assert r.bias(0) == pytest.approx(K1 * (500 - 40), rel=1e-12)  # e2e, not TTFT (which gives 60)


def test_decisions_follow_the_learned_bias():
    """A worker that measured slow is avoided once its bias exceeds the 1 ms margin."""
    r = make_router("lbgr", RouterConfig(workers=2))
    slow = req("slow", list(range(10)))
    r.route(slow, 0.0)
    r.complete(slow, 0, 1.0, done(1.0))  # bias(0) ~ 960 ms
    assert r.route(req("next", list(range(3000, 3010))), 1.0) == 1


def test_block_hashes_stand_for_block_size_tokens_without_token_ids():
    r = make_router("lbgr", RouterConfig(workers=2, block_size=16))
    h = np.arange(8, dtype=np.int64)
    r.route(RouteRequest("x", 128, 4, h), 0.0)
    # 6 of 8 blocks match: uncached = 130 - 96 = 34 tokens -> 136 ms + load 512
    assert r.predict(RouteRequest("y", 130, 4, np.r_[h[:6], [99, 98]]), 0, 0.0)[0] == 136 + 512


def test_parameters_are_checked():
    with pytest.raises(KvbenchError, match="rls_lambda"):
        make_router("lbgr", RouterConfig(workers=1, params={"rls_lambda": 1.5}))
    with pytest.raises(KvbenchError, match="chars_per_token"):
        make_router("lbgr", RouterConfig(workers=1, params={"chars_per_token": 0}))


def test_halves_round_away_from_zero_as_rust_does():
    r = make_router("lbgr", RouterConfig(workers=1))
    small, big = req("small", list(range(12))), req("big", D)
    r.route(small, 0.0)  # +48
    r.route(big, 0.0)  # +400
    # at 20 ms: 448 -> 434; left of 48 after one tick is 46.5, which Rust rounds to 47 (Python's round: 46)
    r.complete(small, 0, 0.020, done(0.02))
    assert r.load[0] == 434 - 47
