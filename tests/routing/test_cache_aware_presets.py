"""``cache_aware``'s ``sglang-0.4.6`` preset: every value the RLT paper's baseline router ran with.

fzwark/KVRouting: gsp.sh, long.sh and multi_conv.sh start ``python -m sglang_router.launch_router
--worker-urls ... --host ... --port ... --policy cache_aware``; every other value is the default of
``sglang-0.4.6/sgl-router/py_src/sglang_router/launch_router.py`` ``RouterArgs`` (the same defaults as
``router.py`` and ``src/lib.rs``): cache_threshold 0.5, balance_abs_threshold 32, balance_rel_threshold
1.0001, eviction_interval 60 s, max_tree_size 2**24. ``src/router.rs`` routes a below-threshold request to
``tree.get_smallest_tenant()``: the worker with the fewest characters in ``tenant_char_count``
(``src/tree.rs``).
"""

import numpy as np
import pytest

from kvbench.routing import RouterConfig, RouteRequest, make_router
from kvbench.routing.cache_aware import DEFAULT_SETS
from kvbench.routing.radix import RadixTree


def chars(text):
    return np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.int64)


def ca(workers=2, **params):
    return make_router("cache_aware", RouterConfig(workers=workers, params=params))


def req(i, prompt):
    return RouteRequest(f"r{i}", len(prompt), 4, np.arange(1, dtype=np.int64), prompt=prompt)


def test_sglang_046_preset_sets_every_value_of_the_papers_router():
    r = ca(defaults="sglang-0.4.6")
    assert r.params["cache_threshold"] == 0.5
    assert r.params["balance_abs_threshold"] == 32
    assert r.params["balance_rel_threshold"] == 1.0001
    assert r.params["eviction_interval_s"] == 60.0
    assert r.params["max_tree_size"] == 2**24 == 16_777_216
    assert r.params["fallback"] == "smallest_tree"
    assert (r.cache_threshold, r.abs_threshold, r.rel_threshold, r.trees.interval, r.max_tree_size) == \
        (0.5, 32, 1.0001, 60.0, 2**24)
    assert r.describe() == {"name": "cache_aware", "defaults": "sglang-0.4.6", "cache_threshold": 0.5,
                            "balance_abs_threshold": 32, "balance_rel_threshold": 1.0001,
                            "fallback": "smallest_tree", "max_tree_size": 2**24, "eviction_interval_s": 60.0}


def test_every_set_names_every_value_and_explicit_values_override():
    keys = {"cache_threshold", "balance_abs_threshold", "balance_rel_threshold", "fallback", "max_tree_size",
            "eviction_interval_s"}
    assert all(set(v) == keys for v in DEFAULT_SETS.values())
    cli = ca()
    assert (cli.params["cache_threshold"], cli.params["balance_abs_threshold"], cli.params["balance_rel_threshold"],
            cli.params["fallback"], cli.params["max_tree_size"], cli.params["eviction_interval_s"]) == \
        (0.3, 64, 1.5, "least_load", 2**26, 60.0)
    over = ca(defaults="sglang-0.4.6", fallback="least_load", max_tree_size="1000", eviction_interval_s="5")
    assert (over.params["fallback"], over.max_tree_size, over.trees.interval) == ("least_load", 1000, 5.0)
    assert over.cache_threshold == 0.5


def test_preset_alone_falls_back_to_the_smallest_tree():
    # 10 fresh characters: no match, below the threshold. Worker 0 is busier but stores fewer characters.
    # Worker 0 has two short entries (4 characters), worker 1 one long one (50): characters, not entries.
    r = ca(defaults="sglang-0.4.6")
    r.trees[0].insert(chars("zz"), 0.0)
    r.trees[0].insert(chars("xx"), 0.0)
    r.trees[1].insert(chars("y" * 50), 0.0)
    r.outstanding = [3, 0]
    assert r.choose(req(0, "q" * 10), 1.0) == 0 and r.last_decision == "fallback"
    cli = ca()
    cli.trees[0].insert(chars("zzzz"), 0.0)
    cli.trees[1].insert(chars("y" * 50), 0.0)
    cli.outstanding = [3, 0]
    assert cli.choose(req(0, "q" * 10), 1.0) == 1  # current SGLang's CLI: least loaded


def test_preset_thresholds_decide_balance():
    doc = "d" * 100
    # loads 40 and 7: 33 > 32 and 40 > 7 * 1.0001 -> imbalanced, the idle worker despite the cache
    r = ca(defaults="sglang-0.4.6")
    r.trees[0].insert(chars(doc), 0.0)
    r.outstanding = [40, 7]
    assert r.choose(req(0, doc + "?"), 1.0) == 1 and r.last_decision == "imbalanced"
    # the same loads under the CLI thresholds (64): balanced, the cached worker
    c = ca()
    c.trees[0].insert(chars(doc), 0.0)
    c.outstanding = [40, 7]
    assert c.choose(req(0, doc + "?"), 1.0) == 0 and c.last_decision == "cache_hit"
    # 50 of 100 characters matched: 0.5 is not > 0.5 -> fallback; 51 -> cache hit
    r = ca(defaults="sglang-0.4.6")
    r.trees[0].insert(chars("a" * 50), 0.0)
    r.trees[1].insert(chars("zz"), 0.0)
    assert r.choose(req(1, "a" * 50 + "b" * 50), 1.0) == 1 and r.last_decision == "fallback"
    r = ca(defaults="sglang-0.4.6")
    r.trees[0].insert(chars("a" * 51), 0.0)
    r.trees[1].insert(chars("zz"), 0.0)
    assert r.choose(req(1, "a" * 51 + "b" * 49), 1.0) == 0 and r.last_decision == "cache_hit"


def test_tree_size_is_sglang_tenant_char_count():
    # tree.rs test_get_smallest_tenant: tenant1 inserts "ap" and "icot" (6 chars), tenant2 "cat" (3)
    t1, t2 = RadixTree(), RadixTree()
    t1.insert(chars("ap"), 0.0)
    t1.insert(chars("icot"), 0.0)
    t2.insert(chars("cat"), 0.0)
    assert (t1.size, t2.size) == (6, 3)
    # tree.rs test_tenant_char_count, phase 1: shared prefixes count once per tenant
    a, b = RadixTree(), RadixTree()
    for w in ("apple", "apricot", "banana"):
        a.insert(chars(w), 0.0)  # apple 5 + ricot 5 + banana 6
    for w in ("amplify", "application"):
        b.insert(chars(w), 0.0)  # amplify 7 + pplication 10
    assert (a.size, b.size) == (16, 17)
    # phase 3: the same word for two tenants counts for each
    a.insert(chars("zebra"), 0.0)
    b.insert(chars("zebra"), 0.0)
    assert (a.size, b.size) == (21, 22)
    # eviction keeps the count exact (evict_tenant_by_size decrements by the removed node's characters)
    removed = a.prune(10)
    assert a.size == 21 - removed <= 10


def test_matching_refreshes_the_matched_path_before_pruning():
    # SGLang's prefix_match refreshes the best match's path even when the request then goes elsewhere
    r = ca(defaults="sglang-0.4.6")
    r.trees[0].insert(chars("aaaa"), 0.0)
    r.trees[0].insert(chars("bbbbbbbb"), 1.0)
    r.trees[1].insert(chars("c"), 1.0)
    # 4 of 10 characters match worker 0: 0.4 is not > 0.5, so the smallest tree (worker 1) gets it
    assert r.choose(req(0, "aaaa" + "x" * 6), 2.0) == 1 and r.last_decision == "fallback"
    r.trees[0].prune(8)  # "aaaa" was used at t=2, "bbbbbbbb" at t=1: the latter goes
    assert r.trees[0].match(chars("aaaa")) == 4 and r.trees[0].match(chars("bbbbbbbb")) == 0


def test_eviction_runs_every_interval():
    r = ca(defaults="sglang-0.4.6", max_tree_size="3")
    r.route(req(0, "hello"), 0.0)
    w = 0 if r.trees[0].size else 1
    r.outstanding = [0, 0]
    r.choose(req(1, "x"), 59.9)
    assert r.trees[w].match(chars("hello")) == 5  # not yet 60 s
    r.choose(req(2, "y"), 60.0)
    assert r.trees[w].size <= 3 and r.trees[w].match(chars("hello")) < 5


@pytest.mark.parametrize("name", ["cli", "library", "sglang-0.4.6"])
def test_sets_route(name):
    r = ca(defaults=name)
    w = r.route(req(0, "hello world " * 5), 0.0)
    assert r.choose(req(1, "hello world " * 5 + "!"), 0.1) == w
