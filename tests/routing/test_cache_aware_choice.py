"""``cache_aware``'s choice among equally good matches, its fallbacks, and its parameter sets, by hand.

Prompts are text, so the unit is characters; the ``cli`` set's thresholds are cache_threshold 0.3 and
balance_abs_threshold 64, far above the loads used here unless said otherwise.
"""

from __future__ import annotations

import numpy as np
import pytest

from kvbench.errors import KvbenchError
from kvbench.routing import RouterConfig, RouteRequest, make_router
from kvbench.routing.cache_aware import DEFAULT_SETS, apply_preset


def chars(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.int64)


def ca(workers: int = 2, **params):
    return make_router("cache_aware", RouterConfig(workers=workers, params=params))


def req(prompt: str) -> RouteRequest:
    return RouteRequest("q", len(prompt), 4, np.arange(1, dtype=np.int64), prompt=prompt)


DOC = "x" * 100


@pytest.mark.parametrize("loads, expect", [
    ([1, 3], 0),  # both match 100 of 101 characters: the less loaded of the two
    ([3, 1], 1),
    ([2, 2], 0),  # equal loads too: the first
    ([2, 1, 1], 1),  # three equal matches: the first of the least loaded, not the last
])
def test_equal_matches_go_to_the_least_loaded_then_the_first(loads, expect):
    r = ca(workers=len(loads))
    for w in range(len(loads)):
        r.trees[w].insert(chars(DOC), 0.0)
    r.outstanding = list(loads)
    assert r.choose(req(DOC + "q"), 1.0) == expect and r.last_decision == "cache_hit"


@pytest.mark.parametrize("loads, expect", [([0, 5], 0), ([5, 0], 1), ([2, 0, 5], 1)])
def test_least_load_fallback_picks_the_least_loaded_wherever_it_is(loads, expect):
    # "q" * 10 matches nothing anywhere (worker 0 holds DOC): 0 / 10 is not > 0.3, so the fallback decides
    r = ca(workers=len(loads))
    r.trees[0].insert(chars(DOC), 0.0)
    r.outstanding = list(loads)
    assert r.choose(req("q" * 10), 1.0) == expect and r.last_decision == "fallback"


def test_an_empty_prompt_matches_nothing_and_falls_back():
    """A hash-only request shorter than one block has no symbols: its match ratio is 0, not 0 / 0. With the
    smallest-tree fallback it goes to worker 0 (2 characters stored) though worker 1 (50) is idle."""
    r = ca(fallback="smallest_tree")
    r.trees[0].insert(chars("zz"), 0.0)
    r.trees[1].insert(chars("y" * 50), 0.0)
    r.outstanding = [3, 0]
    empty = RouteRequest("e", 10, 4, np.empty(0, dtype=np.int64))
    assert r.choose(empty, 1.0) == 0 and r.last_decision == "fallback"
    assert (r.trees[0].size, r.trees[1].size) == (2, 50)  # nothing to insert


def test_a_fresh_router_has_made_no_decision():
    r = ca()
    assert r.last_decision == ""
    r.choose(req("hello"), 0.0)
    assert r.last_decision == "fallback"


def test_the_library_set_is_the_rust_thresholds_with_the_cli_eviction():
    r = ca(defaults="library")
    assert {k: r.params[k] for k in DEFAULT_SETS["library"]} == {
        "cache_threshold": 0.5, "balance_abs_threshold": 32, "balance_rel_threshold": 1.1,
        "fallback": "least_load", "max_tree_size": 2**26, "eviction_interval_s": 60.0}
    assert (r.max_tree_size, r.trees.interval) == (67_108_864, 60.0)


def test_apply_preset_returns_the_set_it_applied():
    r = ca(defaults="library", cache_threshold="0.9")
    chosen = apply_preset(r, DEFAULT_SETS, "defaults")
    assert chosen is DEFAULT_SETS["library"]
    assert r.params["cache_threshold"] == 0.9  # the explicit value still wins over the set's 0.5


def test_an_unknown_fallback_is_refused():
    with pytest.raises(KvbenchError, match="fallback=random"):
        ca(fallback="random")
    with pytest.raises(KvbenchError, match="fallback=power_of_two"):
        ca(defaults="sglang-0.4.6", fallback="power_of_two")
