"""``kv_cost`` beyond the default decision: temperature sampling (both presets) with its draws fixed by a stub
generator, the tree-size tie-break, pinned placements, and a request id routed twice. Blocks of 16 tokens,
overlap weight 1; costs worked out by hand as in tests/routing/test_kv_cost.py."""

from __future__ import annotations

import math

import numpy as np
import pytest

from kvbench.routing import RouteRequest
from kvbench.routing.kv_cost import ActiveSequences, softmax_pick
from tests.routing.test_kv_cost import done, kv_cost, place

BS = 16


def rq(rid, first_hash, blocks, output=4):
    return RouteRequest(rid, blocks * BS, output, np.arange(first_hash, first_hash + blocks, dtype=np.int64))


class Draw:
    """A stand-in for the router's generator: ``random()`` returns ``u``; ``choice`` records ``p`` and
    returns ``pick``."""

    def __init__(self, u=0.0, pick=0):
        self.u, self.pick, self.p = u, pick, None

    def random(self):
        return self.u

    def choice(self, n, p):
        self.p = list(p)
        return self.pick


# --- softmax_pick (preset dynamo) -----------------------------------------------------------------------
@pytest.mark.parametrize("temperature, u, expect", [
    # costs 10 and 20, span 10: scaled = -(c / 10) / T
    (0.5, 0.80, 0),  # scaled -2, -4: p0 = 1 / (1 + e^-2) = 0.8808 >= 0.80
    (0.5, 0.90, 1),  # 0.90 > 0.8808
    (2.0, 0.60, 0),  # scaled -0.5, -1: p0 = 1 / (1 + e^-0.5) = 0.6225 >= 0.60
    (2.0, 0.70, 1),  # 0.70 > 0.6225
])
def test_softmax_divides_by_the_temperature(temperature, u, expect):
    assert softmax_pick([10.0, 20.0], temperature, Draw(u)) == expect


def test_a_draw_beyond_the_rounded_cumulative_sum_takes_the_last_worker():
    """Seven equal costs: each p is 1/7 and the running sum in floating point ends at 0.9999999999999998,
    below the largest draw random() can return (1 - 2**-53 = 0.9999999999999999): the last index, not past
    it."""
    acc = 0.0
    for _ in range(7):
        acc += 1 / 7
    u = math.nextafter(1.0, 0.0)
    assert acc < u
    assert softmax_pick([5.0] * 7, 1.0, Draw(u)) == 6


def test_a_temperature_below_one_samples_too():
    """Worker 0 holds the 10-block prompt (a finished request): costs w0 = 0 / 16 + (0 + 10) = 10,
    w1 = 160 / 16 + 10 = 20. At temperature 0.5, p0 = 0.8808 (above): a draw of 0.95 takes worker 1."""
    r = kv_cost(temperature="0.5")
    warm = rq("warm", 6000, 10)
    place(r, warm, 0)
    done(r, warm, 0)
    q = rq("q", 6000, 10)
    assert r.costs(q, [0, 1]) == [10.0, 20.0]
    r.rng = Draw(0.95)
    assert r.choose(q, 0.0) == 1
    r.rng = Draw(0.5)
    assert r.choose(q, 0.0) == 0


# --- preset kvbench-0.1 ----------------------------------------------------------------------------------
def old_costs_2001_2002():
    """A 1,000-block prompt cached nowhere: cost = (1000 - 0) + ceil((outstanding + 16000 + 4) / 16);
    w0: 1000 + ceil(1000.25) = 2001; w1 with 16 tokens outstanding: 1000 + ceil(1001.25) = 2002."""
    r = kv_cost("kvbench-0.1", temperature="1.0")
    r.outstanding_tokens[1] = 16
    q = RouteRequest("q", 16000, 4, np.arange(1000, dtype=np.int64))
    assert r.costs(q, [0, 1]) == [2001, 2002]
    return r, q


def test_old_preset_samples_costs_normalised_to_their_span():
    # p ~ exp(-(c - 2001) / 1 / T): at T = 1, [1, e^-1] / (1 + e^-1)
    r, q = old_costs_2001_2002()
    r.rng = Draw(pick=1)
    assert r.choose(q, 0.0) == 1
    assert r.rng.p == pytest.approx([1 / (1 + math.exp(-1)), math.exp(-1) / (1 + math.exp(-1))], rel=1e-12)


def test_old_preset_sampling_is_stable_at_large_costs_and_small_temperatures():
    # at T = 0.001 the exponents are 0 and -1000 (never positive, whatever the costs): p = [1, 0]
    r, q = old_costs_2001_2002()
    r.temperature = 0.001
    r.rng = Draw(pick=0)
    assert r.choose(q, 0.0) == 0
    assert r.rng.p == [1.0, 0.0]


def test_old_preset_breaks_ties_by_the_lowest_index():
    r = kv_cost("kvbench-0.1", workers=3)
    q = rq("q", 0, 4)  # every worker idle: 4 + ceil(68 / 16) = 9 each
    assert r.costs(q, [0, 1, 2]) == [9, 9, 9]
    assert r.choose(q, 0.0) == 0
    r.outstanding_tokens[0] = 100  # w0: 4 + ceil(168 / 16) = 15; w1 and w2 tie at 9
    assert r.choose(q, 0.0) == 1


# --- tie-break by tree size (preset dynamo) -------------------------------------------------------------
@pytest.mark.parametrize("seed", range(8))
def test_tree_size_decides_ties_before_the_seeded_draw(seed):
    """w0: one active 1-block request (16 tokens pending, its index holds block 100); w1: idle, its index
    holds 10 unrelated blocks. q = blocks 100..103 (64 tokens) matches 1 block on w0, none on w1:
    w0 = (16 + 64 - 16) / 16 + (1 + 3) = 8;  w1 = 64 / 16 + (0 + 4) = 8: tied. Tree sizes: w0 matched a
    block, so 1; w1 matched none, so 0 (not its 10): w1 wins with every seed."""
    r = kv_cost(seed=seed)
    place(r, rq("a", 100, 1), 0)
    old = rq("old", 700, 10)
    place(r, old, 1)
    done(r, old, 1)
    q = rq("q", 100, 4)
    assert r.costs(q, [0, 1]) == [8.0, 8.0]
    assert (r.tree_size(0), r.tree_size(1)) == (1, 0)
    assert r.choose(q, 0.0) == 1


def test_a_worker_not_scored_for_the_request_has_tree_size_zero():
    # worker 1 is down: it is not among the overlap scores of q, even though its index holds all of q
    r = kv_cost()
    place(r, rq("a", 100, 4), 1)
    r.set_alive(1, False)
    q = rq("q", 100, 4)
    assert r.costs(q, [0]) == [8.0]  # w0: 64 / 16 + 4
    assert (r.tree_size(0), r.tree_size(1)) == (0, 0)
    assert r.choose(q, 0.0) == 0


# --- bookkeeping ----------------------------------------------------------------------------------------
def test_a_pinned_placement_after_a_routed_one_prices_its_own_overlap():
    """a is routed (choose scores both workers: 0 blocks matched anywhere); b, the same 4 blocks, is then
    placed on a's worker without choose: its overlap is that worker's match now, 4 blocks, so it adds no
    pending prefill (64 - 4 * 16 = 0), not the 64 tokens of the overlap a's scoring found."""
    r = kv_cost()
    a = rq("a", 100, 4)
    w = r.route(a, 0.0)
    assert r.active[w].prefill_tokens == 64
    place(r, rq("b", 100, 4), w)
    assert r.active[w].prefill_tokens == 64 and r.active[w].active_blocks() == 4


def test_a_request_id_routed_twice_is_freed_in_routing_order():
    # a retry routed again before the first attempt completed: the first completion frees the first entry
    seqs = ActiveSequences()
    seqs.add("r", [1, 2], 32)
    seqs.add("r", [3], 16)
    seqs.free("r")
    assert (seqs.prefill_tokens, seqs.refs) == (16, {3: 1})
    seqs.free("r")
    assert (seqs.prefill_tokens, seqs.refs, seqs.requests) == (0, {}, {})
