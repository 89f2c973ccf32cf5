"""The load-only routers, the router base class and the prefix structures, decision by decision."""

from __future__ import annotations

import numpy as np
import pytest

from kvbench.errors import KvbenchError
from kvbench.routing import RouterConfig, RouteRequest, make_router
from kvbench.routing.block_view import BlockView
from kvbench.routing.radix import RadixTree, common_prefix, symbols


def req(i, tokens=64):
    return RouteRequest(f"r{i}", tokens, 4, np.arange(i * 1000, i * 1000 + tokens // 16, dtype=np.int64))


# ------------------------------------------------------------------------------------------ base, registry
def test_a_router_needs_a_worker():
    with pytest.raises(KvbenchError, match="--workers 0: need at least one worker"):
        make_router("round_robin", RouterConfig(workers=0))
    assert make_router("round_robin", RouterConfig(workers=1)).route(req(0), 0.0) == 0


def test_router_config_defaults():
    cfg = RouterConfig(workers=3)
    assert (cfg.block_size, cfg.seed, cfg.params, cfg.cache_blocks) == (16, 0, {}, None)


@pytest.mark.parametrize("name", ["round_robin", "least_load", "power_of_two", "random"])
def test_no_live_worker_is_an_error(name):
    r = make_router(name, RouterConfig(workers=2))
    r.set_alive(0, False)
    r.set_alive(1, False)
    with pytest.raises(RuntimeError, match="no live workers left to route to"):
        r.route(req(0), 0.0)
    assert r.outstanding == [0, 0]


# ---------------------------------------------------------------------------------------------- load-only
def test_round_robin_order_skips_dead_workers_and_resumes():
    r = make_router("round_robin", RouterConfig(workers=3))
    assert [r.route(req(i), 0.0) for i in range(4)] == [0, 1, 2, 0]
    r.set_alive(2, False)
    assert [r.route(req(i), 0.0) for i in range(4)] == [1, 0, 1, 0]
    r.set_alive(2, True)
    assert [r.route(req(i), 0.0) for i in range(3)] == [1, 2, 0]


def test_least_load_counts_requests_by_default_and_tokens_when_asked():
    by_requests = make_router("least_load", RouterConfig(workers=2))
    by_tokens = make_router("least_load", RouterConfig(workers=2, params={"by": "tokens"}))
    for r in (by_requests, by_tokens):
        assert r.route(req(0, tokens=1600), 0.0) == 0
        assert r.route(req(1, tokens=16), 0.0) == 1
    assert by_requests.route(req(2, tokens=16), 0.0) == 0  # one request each: the lower index
    assert by_tokens.route(req(2, tokens=16), 0.0) == 1  # 1604 tokens against 20
    with pytest.raises(KvbenchError, match="--router-param by=bytes: router 'least_load' counts load by"):
        make_router("least_load", RouterConfig(workers=2, params={"by": "bytes"}))
    with pytest.raises(KvbenchError, match="router 'power_of_two' counts load by"):
        make_router("power_of_two", RouterConfig(workers=2, params={"by": "bytes"}))


def _two_choices(seed, loads, live, draws):
    """The rule: two distinct live workers drawn by the seeded generator; the less loaded, ties lower."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(draws):
        a, b = rng.choice(len(live), size=2, replace=False)
        wa, wb = live[int(a)], live[int(b)]
        out.append(min(wa, wb) if loads[wa] == loads[wb] else (wa if loads[wa] < loads[wb] else wb))
    return out


@pytest.mark.parametrize("by", ["requests", "tokens"])
def test_power_of_two_probes_two_seeded_workers(by):
    r = make_router("power_of_two", RouterConfig(workers=5, seed=11, params={"by": by}))
    if by == "requests":
        r.outstanding = [3, 0, 3, 1, 2]
    else:
        r.outstanding_tokens = [3, 0, 3, 1, 2]
    r.set_alive(1, False)
    got = [r.choose(req(i), 0.0) for i in range(40)]
    assert got == _two_choices(11, [3, 0, 3, 1, 2], [0, 2, 3, 4], 40)
    assert set(got) >= {0, 3, 4}  # every pair came up, ties included (0 and 2 load 3: 0 wins)


def test_power_of_two_with_one_or_two_live_workers():
    r = make_router("power_of_two", RouterConfig(workers=3, seed=0))
    r.set_alive(0, False)
    r.set_alive(2, False)
    assert [r.choose(req(i), 0.0) for i in range(5)] == [1] * 5
    r = make_router("power_of_two", RouterConfig(workers=2, seed=0))
    r.outstanding = [4, 1]
    assert [r.choose(req(i), 0.0) for i in range(5)] == [1] * 5  # both probed every time


def test_random_is_seeded_uniform_over_live_workers():
    r = make_router("random", RouterConfig(workers=4, seed=5))
    r.set_alive(2, False)
    rng = np.random.default_rng(5)
    assert [r.choose(req(i), 0.0) for i in range(30)] == [[0, 1, 3][int(rng.integers(3))] for _ in range(30)]
    assert make_router("random", RouterConfig(workers=4)).rng.integers(1000) == \
        np.random.default_rng(0).integers(1000)  # the default seed is 0


# ---------------------------------------------------------------------------------------------- BlockView
def test_block_view_match_finds_every_prefix_length():
    hs = list(range(100, 108))
    for held in range(len(hs) + 1):
        view = BlockView(1, None)
        if held:
            view.insert(0, hs[:held])
        assert view.match(0, hs) == held
        assert view.match(0, np.asarray(hs)) == held
    assert view.match(0, []) == 0
    assert BlockView(2, None).match(1, hs) == 0


def test_block_view_list_or_array_inserts():
    view = BlockView(3, None)
    view.insert(0, [1, 2, 3])
    view.insert(2, np.array([1, 2]))
    assert [view.match(w, np.array([1, 2, 3, 4])) for w in range(3)] == [3, 0, 2]
    assert view.size(0) == 3 and view.size(1) == 0


def test_block_view_forgets_least_recently_routed_tails_first():
    view = BlockView(1, 8)
    a, b, c = [1, 2, 3, 4], [11, 12, 13, 14], [21, 22]
    view.insert(0, a)
    view.insert(0, b)
    view.insert(0, a)  # a is touched again: b is now the oldest
    view.insert(0, c)  # 10 blocks > 8: b's two tail blocks go
    assert view.size(0) == 8
    assert list(view.blocks[0]) == [12, 11, 4, 3, 2, 1, 22, 21]
    assert view.match(0, b) == 2 and view.match(0, a) == 4 and view.match(0, c) == 2


# ---------------------------------------------------------------------------------------------- radix
def test_common_prefix_edges():
    e = np.array([], dtype=np.int64)
    assert common_prefix(e, np.array([1, 2])) == 0 and common_prefix(np.array([1]), e) == 0
    assert common_prefix(np.array([1, 2, 3]), np.array([1, 2, 3, 4])) == 3
    assert common_prefix(np.array([1, 2, 3]), np.array([1, 5, 3])) == 1
    assert common_prefix(np.array([7]), np.array([8])) == 0


def test_symbols_prefer_text_then_token_ids_then_hashes():
    h = np.array([9, 8])
    assert symbols("ab", [5, 6], h).tolist() == [ord("a"), ord("b")]
    assert symbols(None, [5, 6], h).tolist() == [5, 6]
    assert symbols("", [], h).tolist() == [9, 8]


def test_radix_match_stops_inside_an_edge():
    t = RadixTree()
    t.insert(np.array([1, 2, 3]), 1.0)
    t.insert(np.array([5, 6]), 1.0)
    assert t.match(np.array([1, 2, 5, 6])) == 2  # not 4: after the split point nothing else matches
    assert t.size == 5


def test_radix_match_touches_the_path_only_when_given_a_time():
    t = RadixTree()
    t.insert(np.array([1, 2, 3]), 1.0)
    t.insert(np.array([4]), 2.0)
    t.match(np.array([1, 2, 3]))
    t.prune(3)  # [1, 2, 3] is older (1.0) than [4] (2.0): it goes
    assert t.match(np.array([1, 2, 3])) == 0 and t.match(np.array([4])) == 1
    t = RadixTree()
    t.insert(np.array([1, 2, 3]), 1.0)
    t.insert(np.array([4]), 2.0)
    t.match(np.array([1, 2, 3]), now=3.0)
    t.prune(3)  # now [4] is the older leaf
    assert t.match(np.array([1, 2, 3])) == 3 and t.match(np.array([4])) == 0


def test_radix_insert_refreshes_the_path_it_walks():
    t = RadixTree()
    t.insert(np.array([1, 2]), 1.0)
    t.insert(np.array([3, 4]), 2.0)
    t.insert(np.array([1, 2]), 3.0)  # walked again: now the newest
    assert t.prune(2) == 2
    assert t.match(np.array([1, 2])) == 2 and t.match(np.array([3, 4])) == 0


def test_radix_prune_reaches_parents_that_become_leaves():
    t = RadixTree()
    t.insert(np.array([1, 2, 3]), 1.0)
    t.insert(np.array([1, 2, 4]), 2.0)  # root -> [1, 2] -> {[3], [4]}
    t.insert(np.array([9]), 5.0)
    assert t.prune(1) == 4  # [3], [4], then [1, 2] (a leaf once its children are gone); [9] stays
    assert t.size == 1 and t.match(np.array([1, 2])) == 0 and t.match(np.array([9])) == 1
    assert t.prune(0) == 1 and t.size == 0 and not t.root.children


def test_radix_prune_within_the_limit_removes_nothing():
    t = RadixTree()
    t.insert(np.array([1, 2, 3]), 1.0)
    assert t.prune(3) == 0 and t.prune(10) == 0 and t.size == 3
    assert t.prune(2) == 3 and t.size == 0  # a single edge goes whole


def test_worker_trees_prune_every_interval_of_the_callers_clock():
    from kvbench.routing.radix import WorkerTrees

    trees = WorkerTrees(2, interval_s=1.0)
    for w in (0, 1):
        trees[w].insert(np.array([w, 1, 2, 3]), 0.0)
    trees.maybe_prune(10.0, max_size=0)  # the first call only starts the clock
    assert trees[0].size == trees[1].size == 4
    trees.maybe_prune(10.5, max_size=0)
    assert trees[0].size == 4
    trees.maybe_prune(11.0, max_size=0)  # a full interval later: both pruned
    assert trees[0].size == trees[1].size == 0
    trees[0].insert(np.array([7, 7]), 11.1)
    trees.maybe_prune(11.5, max_size=0)  # the interval restarts at the last prune
    assert trees[0].size == 2
    trees.maybe_prune(12.0, max_size=0)
    assert trees[0].size == 0


def test_rls_defaults():
    from kvbench.routing.rls import RecursiveLeastSquares

    m = RecursiveLeastSquares(2)
    assert (m.lam, m.delta, m.max_trace, m.updates) == (0.992, 100.0, 1e6, 0)
    assert (m.P == 100.0 * np.eye(2)).all() and (m.theta == 0).all()


def test_radix_prune_takes_several_parents_touched_at_the_same_time():
    t = RadixTree()
    for seq in ([1, 2, 3], [1, 2, 4], [5, 6, 7], [5, 6, 8]):
        t.insert(np.array(seq), 1.0)  # two inner nodes, [1, 2] and [5, 6], both last touched at 1.0
    assert t.size == 8 and t.prune(0) == 8 and t.size == 0 and not t.root.children
