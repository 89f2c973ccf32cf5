"""``llmd`` against llm-d's standard scheduling profile, computed by hand.

llm-d/llm-d-inference-scheduler ``config/charts/epplib/templates/_config.yaml`` (profile ``default``):
prefix-cache-scorer weight 3, queue-scorer 2, kv-cache-utilization-scorer 2, max-score picker, with

    prefix = matched / total blocks (total capped at maxPrefixBlocksToMatch = 256)
    queue  = (q_max - q) / (q_max - q_min), 1 when all equal        (q: requests the router has outstanding)
    kv     = 1 - usage                                              (usage: the router's KV-block estimate)
"""

import numpy as np
import pytest

from kvbench.errors import KvbenchError
from kvbench.routing import Completion, RouterConfig, RouteRequest, make_router
from kvbench.routing.llmd import queue_score

BS = 16


def rq(rid, hashes, output=4, tokens=None):
    hashes = np.asarray(hashes, dtype=np.int64)
    return RouteRequest(rid, len(hashes) * BS if tokens is None else tokens, output, hashes)


def llmd(workers=2, cache_blocks=200, seed=0, **params):
    return make_router("llmd", RouterConfig(workers=workers, block_size=BS, seed=seed, cache_blocks=cache_blocks,
                                             params=params))


def place(r, q, w):
    r.outstanding[w] += 1
    r.outstanding_tokens[w] += q.input_tokens + q.output_tokens
    r.on_routed(q, w, 0.0)


def test_standard_weights_3_2_2_decide_where_equal_weights_do_not():
    shared = list(range(100, 112))  # 12 blocks
    q = rq("q", shared + list(range(500, 504)))  # 16 blocks, the first 12 cached on worker 0
    r = llmd()
    place(r, rq("a", shared), 0)  # still running on worker 0: 12 prompt blocks + 1 block for tail/answer
    # w0: 3 * 12/16 + 2 * (1 - 1)/(1 - 0) + 2 * (1 - 13/200) = 2.25 + 0 + 1.87 = 4.12
    # w1: 3 * 0     + 2 * 1                + 2 * (1 - 0)      = 0 + 2 + 2       = 4.0
    assert r.scores(q, [0, 1]) == pytest.approx([4.12, 4.0])
    assert r.choose(q, 0.0) == 0
    old = llmd(preset="kvbench-0.1")
    place(old, rq("a", shared), 0)
    # w0: 0.75 + 0 + (1 - ceil(196/16)/200) = 0.75 + 0.935 = 1.685;  w1: 0 + 1 + 1 = 2
    assert old.scores(q, [0, 1]) == pytest.approx([1.685, 2.0])
    assert old.choose(q, 0.0) == 1


def test_queue_scorer_formula():
    assert queue_score([3, 1, 0]) == [0.0, 2 / 3, 1.0]
    assert queue_score([2, 2]) == [1.0, 1.0]


def test_queue_counts_requests_not_tokens():
    r = llmd(cache_blocks=None)
    place(r, rq("big", range(100), output=100), 0)  # 1 request, 1,700 tokens
    place(r, rq("s1", range(200, 202)), 1)  # 2 requests, 72 tokens
    place(r, rq("s2", range(300, 302)), 1)
    q = rq("q", range(900, 904))
    # queue over requests (1, 2): w0 = 2 * 1 + 2 = 4;  w1 = 2 * 0 + 2 = 2
    assert r.scores(q, [0, 1]) == pytest.approx([4.0, 2.0])
    assert r.choose(q, 0.0) == 0


def test_kv_usage_counts_shared_prompt_blocks_once():
    r = llmd(cache_blocks=100)
    p = list(range(10))
    place(r, rq("a", p, output=40, tokens=160), 0)
    place(r, rq("b", p, output=40, tokens=160), 0)
    # 10 shared prompt blocks + 2 * (ceil(200/16) - 10 = 3) tail/answer blocks = 16 of 100
    assert r.kv_usage(0) == pytest.approx(0.16)
    q = rq("q", range(900, 904))
    # w0: 3 * 0 + 2 * 0 + 2 * 0.84 = 1.68;  w1: 0 + 2 + 2 = 4
    assert r.scores(q, [0, 1]) == pytest.approx([1.68, 4.0])
    r.complete(rq("a", p, output=40, tokens=160), 0, 1.0, Completion(0.1, 0.2, 0, 40))
    assert r.kv_usage(0) == pytest.approx(0.13)  # b still holds the 10 shared blocks and its own 3
    r.complete(rq("b", p, output=40, tokens=160), 0, 1.0, Completion(0.1, 0.2, 0, 40))
    assert r.kv_usage(0) == 0.0


def test_prefix_score_is_capped_at_256_blocks():
    r = llmd(cache_blocks=None)
    head = list(range(256))
    place(r, rq("a", head), 0)
    r.complete(rq("a", head), 0, 1.0, Completion(0.1, 0.2, 0, 4))
    q = rq("q", head + list(range(10_000, 10_044)))  # 300 blocks, the first 256 held by worker 0
    # capped: prefix 256/256 = 1 -> w0 = 3 + 2 + 2 = 7;  w1 = 0 + 2 + 2 = 4 (no capacity: kv neutral)
    assert r.scores(q, [0, 1]) == pytest.approx([7.0, 4.0])
    uncapped = llmd(cache_blocks=None, max_prefix_blocks="0")
    place(uncapped, rq("a", head), 0)
    uncapped.complete(rq("a", head), 0, 1.0, Completion(0.1, 0.2, 0, 4))
    assert uncapped.scores(q, [0, 1]) == pytest.approx([3 * 256 / 300 + 4, 4.0])


def test_without_a_known_capacity_the_kv_scorer_is_neutral():
    r = llmd(cache_blocks=None)
    place(r, rq("a", range(50), output=500), 0)
    q = rq("q", range(900, 904))
    # kv = 1 for both (usage unknown, taken as 0): w0 = 0 + 2 * 0 + 2 * 1 = 2;  w1 = 0 + 2 + 2 = 4
    assert r.scores(q, [0, 1]) == pytest.approx([2.0, 4.0])
    # kvbench-0.1 normalised outstanding tokens instead: w0 = 0 + 0 + 0 = 0;  w1 = 0 + 1 + 1 = 2
    old = llmd(cache_blocks=None, preset="kvbench-0.1")
    place(old, rq("a", range(50), output=500), 0)
    assert old.scores(q, [0, 1]) == pytest.approx([0.0, 2.0])


def test_ties_are_seeded_random():
    picks = {llmd(workers=3, seed=s).choose(rq("q", range(4)), 0.0) for s in range(20)}
    assert picks == {0, 1, 2}
    assert len({llmd(workers=3, seed=7).choose(rq("q", range(4)), 0.0) for _ in range(3)}) == 1
    # kvbench-0.1 breaks ties to the lowest index
    assert {llmd(workers=3, seed=s, preset="kvbench-0.1").choose(rq("q", range(4)), 0.0) for s in range(5)} == {0}


def test_presets_and_overrides():
    r = llmd()
    assert (r.params["prefix_weight"], r.params["queue_weight"], r.params["kv_weight"],
            r.params["max_prefix_blocks"]) == (3.0, 2.0, 2.0, 256)
    old = llmd(preset="kvbench-0.1")
    assert (old.params["prefix_weight"], old.params["queue_weight"], old.params["kv_weight"],
            old.params["max_prefix_blocks"]) == (1.0, 1.0, 1.0, 0)
    over = llmd(prefix_weight="2.5")
    assert over.params["prefix_weight"] == 2.5 and over.params["queue_weight"] == 2.0
    with pytest.raises(KvbenchError, match="preset=bogus"):
        llmd(preset="bogus")
    # the earlier behaviour under its preset: a prefix weight of 2 keeps the cached worker
    cfg = RouterConfig(workers=2, block_size=16, cache_blocks=1000,
                       params={"preset": "kvbench-0.1", "prefix_weight": 2.0})
    v = make_router("llmd", cfg)
    h = np.arange(32, dtype=np.int64)
    w = v.route(RouteRequest("a", 512, 4, h), 0)
    assert v.choose(RouteRequest("b", 512, 4, h), 0) == w
