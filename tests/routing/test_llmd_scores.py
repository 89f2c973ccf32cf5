"""``llmd``'s scores at the edges, computed by hand: prompts of zero or one block, the kvbench-0.1 spread
normalisation when the lowest load is not 0, and seeded ties between exactly two workers."""

import numpy as np
import pytest

from kvbench.routing import Completion, RouterConfig, RouteRequest, make_router

BS = 16


def rq(rid, hashes, tokens=None):
    hashes = np.asarray(hashes, dtype=np.int64)
    return RouteRequest(rid, len(hashes) * BS if tokens is None else tokens, 4, hashes)


def llmd(workers=2, cache_blocks=200, seed=0, **params):
    return make_router("llmd", RouterConfig(workers=workers, block_size=BS, seed=seed, cache_blocks=cache_blocks,
                                             params=params))


def test_a_prompt_shorter_than_a_block_scores_no_prefix():
    short = rq("q", [], tokens=10)  # 10 tokens: no full block, so no hash id
    # llm-d: prefix 0 (no block to match), queue 1 (equal loads), kv 1 - 0/200 = 1 -> 0 + 2 + 2 = 4 each
    assert llmd().scores(short, [0, 1]) == [4.0, 4.0]
    # kvbench-0.1: matched / max(0, 1) = 0, queue 1, kv 1 -> 0 + 1 + 1 = 2 each (no division by zero)
    old = llmd(preset="kvbench-0.1")
    assert old.scores(short, [0, 1]) == [2.0, 2.0]
    assert old.choose(short, 0.0) == 0  # kvbench-0.1: ties to the lower index


def test_kvbench_0_1_one_block_prompt_matched_in_full():
    old = llmd(preset="kvbench-0.1", cache_blocks=None)
    a = rq("a", [7])
    old.route(a, 0.0)  # worker 0 (all tied: lower index)
    old.complete(a, 0, 1.0, Completion(0.1, 0.2, 0, 4))  # loads back to 0 everywhere
    # w0: prefix 1/1 = 1, queue 1, kv 1 -> 3;  w1: 0 + 1 + 1 = 2
    assert old.scores(rq("q", [7]), [0, 1]) == [3.0, 2.0]


def test_kvbench_0_1_spread_is_relative_to_the_lowest_load():
    old = llmd(workers=3, preset="kvbench-0.1", cache_blocks=None)
    old.outstanding = [1, 2, 3]
    old.outstanding_tokens = [100, 200, 500]
    # queue 1 - (q - 1) / (3 - 1)       = 1, 0.5, 0
    # kv    1 - (t - 100) / (500 - 100) = 1, 0.75, 0        (no capacity: spread over outstanding tokens)
    assert old.scores(rq("q", [900]), [0, 1, 2]) == [2.0, 1.25, 0.0]
    # only the live workers span the range: with worker 0 down, 2..3 and 200..500
    # w1: 1 + 1 = 2;  w2: 0 + 0 = 0
    assert old.scores(rq("q", [900]), [1, 2]) == [2.0, 0.0]


def test_a_tie_between_two_workers_is_seeded_random():
    picks = [llmd(seed=s).choose(rq("q", range(4)), 0.0) for s in range(20)]
    assert set(picks) == {0, 1}
    assert picks == [llmd(seed=s).choose(rq("q", range(4)), 0.0) for s in range(20)]  # same seeds, same picks


def test_a_single_best_worker_wins_whatever_the_seed():
    for s in range(10):
        r = llmd(seed=s)
        r.outstanding = [1, 0]  # queue: w0 0, w1 1 -> w0 2, w1 4
        assert r.choose(rq("q", range(4)), 0.0) == 1


@pytest.mark.parametrize("preset", ["llm-d", "kvbench-0.1"])
def test_scores_are_finite_for_every_prompt_length(preset):
    r = llmd(preset=preset)
    for n in (0, 1, 2, 300):
        assert all(np.isfinite(r.scores(rq("q", range(n)), [0, 1])))
