"""``lbgr`` at its edges: recorded defaults, the boundaries of its parameters, a placement the caller pinned,
and the re-insertion of a prompt at completion. Units as in tests/routing/test_lbgr.py: an uncached token
costs 4 ms (4 characters per token, 1 ms per character), loads are integer milliseconds."""

from __future__ import annotations

import numpy as np
import pytest

from kvbench.errors import KvbenchError
from kvbench.routing import Completion, RouterConfig, RouteRequest, make_router

K1 = 1e6 / (0.992 + 1e6)  # the RLS gain of a worker's first update (P = 1e6)
A = list(range(100))
D = list(range(2000, 2100))


def lbgr(workers=2, **params):
    return make_router("lbgr", RouterConfig(workers=workers, params=params))


def req(name: str, ids: list[int]) -> RouteRequest:
    arr = np.asarray(ids, dtype=np.int64)
    return RouteRequest(name, len(ids), 4, arr[: len(ids) // 16], prompt_token_ids=ids)


def done(e2e_s: float, ok: bool = True) -> Completion:
    return Completion(ttft_s=e2e_s / 2, e2e_s=e2e_s, cached_tokens=0, output_tokens=4, ok=ok)


def test_defaults_and_the_learned_bias_are_recorded():
    r = lbgr()
    assert r.describe() == {
        "name": "lbgr", "chars_per_token": 4.0, "ms_per_uncached_char": 1.0, "queue_weight": 1.0,
        "load_decay": 31 / 32, "decay_interval_ms": 20, "rls_lambda": 0.992, "rls_p0": 1e6,
        "tie_margin_ms": 1.0, "max_tree_tokens": 4_194_304,  # 2**24 characters / 4 per token
        "eviction_interval_s": 60.0, "bias_ms": [0.0, 0.0]}
    q = req("q", list(range(10)))  # base 40 ms on worker 0 (the tie keeps the first)
    assert r.route(q, 0.0) == 0
    # e2e 140.123456 ms: residual 100.123456 ms, bias K1 * 100.123456 = 100.1233567..., kept to 3 decimals
    r.complete(q, 0, 0.140123456, done(0.140123456))
    assert r.describe()["bias_ms"] == [100.123, 0.0]


@pytest.mark.parametrize("params, message", [
    ({"ms_per_uncached_char": -0.1}, "ms_per_uncached_char >= 0"),
    ({"chars_per_token": 0}, "chars_per_token must be > 0"),
    ({"load_decay": 0.0}, "load_decay must be in"),
    ({"load_decay": 1.5}, "load_decay must be in"),
    ({"decay_interval_ms": 0}, "decay_interval_ms >= 1"),
    ({"rls_lambda": 0.0}, "rls_lambda=0.0"),
    ({"rls_lambda": 1.01}, "rls_lambda=1.01"),
    ({"rls_p0": 0.0}, "rls_p0 > 0"),
])
def test_bad_parameters_are_refused(params, message):
    with pytest.raises(KvbenchError, match=message):
        lbgr(**params)


def test_edge_parameters_are_accepted_and_used():
    # uncached work free: every base is max(1, 0) = 1 ms
    free = lbgr(ms_per_uncached_char=0.0)
    assert free.route(req("a", A), 0.0) == 0 and free.load == [1, 0]
    # half a millisecond per character: 100 tokens * 4 * 0.5 = 200 ms
    half = lbgr(ms_per_uncached_char=0.5)
    assert half.route(req("a", A), 0.0) == 0 and half.load == [200, 0]
    # a 1 ms tick: two ticks by 2 ms, 400 -> 387 -> 374
    fast = lbgr(decay_interval_ms=1)
    fast.route(req("a", A), 0.0)
    assert fast.load_at(0, 0.002) == 374
    # no decay at all, and no forgetting in the bias
    flat = lbgr(load_decay=1.0, rls_lambda=1.0)
    flat.route(req("a", A), 0.0)
    assert flat.load_at(0, 10.0) == 400 and flat.models[0].lam == 1.0


def test_a_placement_the_caller_pinned_is_priced_at_routing():
    """D is routed first (worker 0 by the tie, load 400; that choice priced both workers at base 400,
    load 0). Then the first 50 tokens of A are given to worker 0 without choose: they are priced then,
    base 4 * 50 = 200 ms and load 400, not with what D's choice found; 200 is reserved and remembered for
    the completion, and the prompt enters worker 0's tree."""
    r = lbgr()
    assert r.route(req("first", D), 0.0) == 0 and r.load == [400, 0]
    a = req("a", A[:50])
    r.on_routed(a, 0, 0.0)
    base, load, inc, at, seq, per = r.pending["a"]
    assert (base, load, inc, at, per) == (200.0, 400.0, 200, 0.0, 1) and seq.tolist() == A[:50]
    assert r.load == [600, 0] and r.trees[0].match(np.asarray(A)) == 50
    r.complete(a, 0, 0.7, done(0.7))  # residual 700 - (200 + 400) = 100 ms
    assert r.bias(0) == pytest.approx(K1 * 100, rel=1e-12)


def test_completion_puts_back_a_prompt_that_pruning_removed():
    """One worker, trees pruned to 100 tokens every second. A (t=0) and D (t=0.5) fill 200 tokens; at t=1
    the pruning drops A, the least recently used. A's completion at t=1.2 inserts it again: a prompt A
    then costs max(1, 4 * 0) = 1 ms of base, not 400."""
    r = lbgr(workers=1, max_tree_tokens=100, eviction_interval_s=1.0)
    a = req("a", A)
    r.route(a, 0.0)
    r.route(req("d", D), 0.5)
    assert r.trees[0].size == 200
    r.route(req("d2", D), 1.0)  # prunes first, then D again (already stored)
    assert r.trees[0].size == 100 and r.trees[0].match(np.asarray(A)) == 0
    r.complete(a, 0, 1.2, done(1.2))
    assert r.trees[0].match(np.asarray(A)) == 100
    _, base, _ = r.predict(req("again", A), 0, 1.2)
    assert base == 1.0


def test_block_hashes_count_block_size_tokens_against_the_tree_limit():
    """Without token ids a symbol is a 16-token block, so max_tree_tokens=160 keeps 10 blocks. a (blocks
    0..7, t=0) and d (100..107, t=0.5) hold 16 blocks; the pruning at t=1 drops a, the least recently used,
    leaving 8 (a limit of 160 symbols would keep both)."""
    r = lbgr(workers=1, max_tree_tokens=160, eviction_interval_s=1.0)
    a = RouteRequest("a", 128, 4, np.arange(8, dtype=np.int64))
    d = RouteRequest("d", 128, 4, np.arange(100, 108, dtype=np.int64))
    r.route(a, 0.0)
    r.route(d, 0.5)
    assert r.trees[0].size == 16
    r.route(RouteRequest("d2", 128, 4, d.hash_ids), 1.0)  # prunes first, then d's blocks again
    assert r.trees[0].size == 8 and r.trees[0].match(a.hash_ids) == 0 and r.trees[0].match(d.hash_ids) == 8
