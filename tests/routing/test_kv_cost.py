"""``kv_cost`` against Dynamo's cost, computed by hand.

Dynamo (ai-dynamo/dynamo lib/llm/src/kv_router/scheduler.rs ``DefaultWorkerSelector`` over
``sequence.rs`` ``ActiveSequences``), in blocks of 16 tokens with the default weight 1::

    cost(w) = (pending_prefill_tokens(w) + input - 16 * overlap(w)) / 16 + unique_active_blocks(w) + new_blocks(w)

Each scenario is one where that formula and kvbench's earlier formula (``preset=kvbench-0.1``:
``uncached_blocks + ceil((outstanding_tokens + input + output) / 16)``) pick different workers.
"""

import math

import numpy as np
import pytest

from kvbench.errors import KvbenchError
from kvbench.routing import Completion, RouterConfig, RouteRequest, make_router
from kvbench.routing.kv_cost import softmax_pick

BS = 16


def rq(rid, first_hash, blocks, output=4, tokens=None):
    hashes = np.arange(first_hash, first_hash + blocks, dtype=np.int64)
    return RouteRequest(rid, blocks * BS if tokens is None else tokens, output, hashes)


def kv_cost(preset="dynamo", workers=2, seed=0, **params):
    return make_router("kv_cost", RouterConfig(workers=workers, block_size=BS, seed=seed,
                                                params={"preset": preset, **params}))


def place(r, q, w):
    """Route ``q`` to worker ``w`` as if the router had chosen it (what ``route`` does after ``choose``)."""
    r.outstanding[w] += 1
    r.outstanding_tokens[w] += q.input_tokens + q.output_tokens
    r.on_routed(q, w, 0.0)


def done(r, q, w):
    r.complete(q, w, 1.0, Completion(ttft_s=0.1, e2e_s=0.2, cached_tokens=0, output_tokens=q.output_tokens))


def build(preset, scenario):
    r = kv_cost(preset)
    for q, w in scenario():
        place(r, q, w)
    return r


def queued_prefill():
    # worker 0: a 25-block prompt nobody had cached: its 400 prefill tokens are still pending
    yield rq("p", 1000, 25), 0
    # worker 1: served a 40-block prompt, then the same prompt again while it is cached: 0 pending tokens
    c = rq("c", 2000, 40)
    yield c, 1
    yield rq("d", 2000, 40), 1


def test_queued_prefill_tokens_count_on_their_worker():
    r = build("dynamo", queued_prefill)
    done(r, rq("c", 2000, 40), 1)  # the first 40-block request finished; its blocks stay cached
    q = rq("q", 9000, 4)  # 64 new tokens, cached nowhere
    # w0: (400 + 64) / 16 + (25 + 4) = 29 + 29 = 58;  w1: (0 + 64) / 16 + (40 + 4) = 4 + 44 = 48
    assert r.costs(q, [0, 1]) == [58.0, 48.0]
    assert r.choose(q, 0.0) == 1
    old = build("kvbench-0.1", queued_prefill)
    done(old, rq("c", 2000, 40), 1)
    # old: w0 = 4 + ceil((404 + 68) / 16) = 4 + 30 = 34;  w1 = 4 + ceil((644 + 68) / 16) = 4 + 45 = 49
    assert old.costs(q, [0, 1]) == [34, 49]
    assert old.choose(q, 0.0) == 0


def shared_blocks():
    # worker 0: two active requests with the same 30-block prompt (the second found it cached)
    yield rq("a1", 3000, 30), 0
    yield rq("a2", 3000, 30), 0
    # worker 1: one active request with a 40-block prompt of its own
    yield rq("b", 4000, 40), 1


def test_blocks_shared_by_active_requests_count_once():
    r = build("dynamo", shared_blocks)
    assert r.active[0].active_blocks() == 30 and r.active[0].prefill_tokens == 480
    q = rq("q", 9000, 4)
    # w0: (480 + 64) / 16 + (30 + 4) = 34 + 34 = 68;  w1: (640 + 64) / 16 + (40 + 4) = 44 + 44 = 88
    assert r.costs(q, [0, 1]) == [68.0, 88.0]
    assert r.choose(q, 0.0) == 0
    old = build("kvbench-0.1", shared_blocks)
    # old: w0 = 4 + ceil((2 * 484 + 68) / 16) = 4 + 65 = 69;  w1 = 4 + ceil((644 + 68) / 16) = 4 + 45 = 49
    assert old.costs(q, [0, 1]) == [69, 49]
    assert old.choose(q, 0.0) == 1


def long_answers():
    yield rq("p", 1000, 20), 0  # 320 prompt tokens pending, a short answer
    yield rq("g", 5000, 4, output=2000), 1  # a short prompt with a 2,000-token answer


def test_output_tokens_are_not_counted_up_front():
    r = build("dynamo", long_answers)
    q = rq("q", 9000, 4)
    # w0: (320 + 64) / 16 + (20 + 4) = 24 + 24 = 48;  w1: (64 + 64) / 16 + (4 + 4) = 8 + 8 = 16
    assert r.costs(q, [0, 1]) == [48.0, 16.0]
    assert r.choose(q, 0.0) == 1
    old = build("kvbench-0.1", long_answers)
    # old: w0 = 4 + ceil((324 + 68) / 16) = 4 + 25 = 29;  w1 = 4 + ceil((2064 + 68) / 16) = 4 + 134 = 138
    assert old.costs(q, [0, 1]) == [29, 138]
    assert old.choose(q, 0.0) == 0


def test_overlap_and_partial_prefill_use_the_worker_match():
    r = kv_cost()
    place(r, rq("warm", 6000, 10), 0)
    done(r, rq("warm", 6000, 10), 0)
    assert r.active[0].active_blocks() == 0 and r.active[0].prefill_tokens == 0
    # 10 of 12 blocks cached on w0; 200 tokens (a partial 13th block is not hashed)
    q = RouteRequest("q", 200, 4, np.arange(6000, 6012, dtype=np.int64))
    # w0: (200 - 160) / 16 + (0 + 12) = 2.5 + 12 = 14.5;  w1: 200 / 16 + 12 = 12.5 + 12 = 24.5
    assert r.costs(q, [0, 1]) == [14.5, 24.5]
    w = r.route(q, 0.0)
    assert w == 0 and r.active[0].prefill_tokens == 40  # pending: what was not cached when it was routed


def test_pending_prefill_hides_the_cache_until_completion_then_tree_size_breaks_ties():
    r = kv_cost()
    h = np.arange(64, dtype=np.int64)
    a = RouteRequest("a", 1024, 4, h)
    place(r, a, 0)
    b = RouteRequest("b", 1024, 4, h)
    # while a's prefill is pending: w0 = (1024 + 0) / 16 + (64 + 0) = 128;  w1 = 1024 / 16 + 64 = 128
    assert r.costs(b, [0, 1]) == [128.0, 128.0]
    assert r.choose(b, 0.0) == 1  # tie: w1 matched nothing (tree size 0) beats w0's 64 blocks
    done(r, a, 0)
    # a finished: w0 = 0 / 16 + (0 + 64) = 64;  w1 = 128
    assert r.costs(b, [0, 1]) == [64.0, 128.0]
    assert r.choose(b, 0.0) == 0


def test_tree_size_tie_break_counts_only_workers_that_matched():
    r = kv_cost()
    place(r, rq("a", 100, 4), 0)  # active on w0: 4 blocks, 64 tokens pending
    place(r, rq("old", 700, 10), 1)
    done(r, rq("old", 700, 10), 1)  # w1's index holds 10 unrelated blocks
    q = rq("q", 100, 4)
    # w0: (64 + 0) / 16 + (4 + 0) = 8;  w1: 64 / 16 + (0 + 4) = 8: tied
    assert r.costs(q, [0, 1]) == [8.0, 8.0]
    # Dynamo's overlap scores carry tree sizes only for workers that matched: w0 4 blocks, w1 absent (0)
    assert r.choose(q, 0.0) == 1


def test_ties_with_equal_tree_sizes_are_seeded_random():
    picks = set()
    for seed in range(20):
        r = make_router("kv_cost", RouterConfig(workers=3, block_size=BS, seed=seed))
        picks.add(r.choose(rq("q", 0, 4), 0.0))
    assert picks == {0, 1, 2}
    again = [make_router("kv_cost", RouterConfig(workers=3, block_size=BS, seed=5)).choose(rq("q", 0, 4), 0.0)
             for _ in range(3)]
    assert len(set(again)) == 1


def test_completion_frees_shared_blocks_by_reference():
    r = build("dynamo", shared_blocks)
    done(r, rq("a1", 3000, 30), 0)
    assert r.active[0].active_blocks() == 30 and r.active[0].prefill_tokens == 0  # a2 still holds them
    done(r, rq("a2", 3000, 30), 0)
    assert r.active[0].active_blocks() == 0 and r.active[0].requests == {}


def test_softmax_sampling_follows_dynamo_probabilities():
    rng = np.random.default_rng(0)
    # costs 10 and 20, temperature 1: p ~ exp(-c / (20 - 10)) -> p0 = e^-1 / (e^-1 + e^-2) = 0.7311
    n = 20000
    p0 = sum(softmax_pick([10.0, 20.0], 1.0, rng) == 0 for _ in range(n)) / n
    assert p0 == pytest.approx(1 / (1 + math.exp(-1)), abs=0.015)
    # all equal: uniform
    counts = np.bincount([softmax_pick([3.0, 3.0, 3.0], 0.5, rng) for _ in range(3000)], minlength=3)
    assert counts.min() > 900
    r = kv_cost(temperature="1.0")
    assert {r.choose(rq(f"q{i}", 0, 4), 0.0) for i in range(50)} == {0, 1}


def test_presets_and_parameters():
    assert kv_cost().describe() == {"name": "kv_cost", "preset": "dynamo", "overlap_weight": 1.0,
                                    "temperature": 0.0}
    with pytest.raises(KvbenchError, match="preset=bogus"):
        kv_cost("bogus")
    # the earlier formula, kept as a preset: the cached worker wins until decode load dominates
    r = kv_cost("kvbench-0.1")
    h = np.arange(64, dtype=np.int64)
    first = r.route(RouteRequest("a", 1024, 4, h), 0)
    assert r.choose(RouteRequest("b", 1024, 4, h), 0) == first
    r.outstanding_tokens[first] += 10 * 1024
    assert r.choose(RouteRequest("c", 1024, 4, h), 0) != first
    # overlap_weight scales the prefill term: with weight 0 only decode blocks count
    z = build("dynamo", queued_prefill)
    z.weight = 0.0
    q = rq("q", 9000, 4)
    assert z.costs(q, [0, 1]) == [29.0, 44.0]  # w0: 25 + 4 blocks; w1: c and d share 40 blocks, + 4
