"""cache_aware's balance test at its exact boundaries: imbalanced only when max - min is *more* than
balance_abs_threshold and max is *more* than balance_rel_threshold * min (SGLang's strict comparisons)."""

from __future__ import annotations

import numpy as np
import pytest

from kvbench.routing import RouterConfig, RouteRequest, make_router

DOC = "x" * 100


def decide(loads: list[int], **params) -> tuple[int, str]:
    """Worker 0 holds the prompt's document; worker 1 is the less loaded. Returns (choice, decision)."""
    r = make_router("cache_aware", RouterConfig(workers=2, params=params))
    r.trees[0].insert(np.frombuffer(DOC.encode("utf-32-le"), dtype=np.uint32).astype(np.int64), 0.0)
    r.outstanding = list(loads)
    w = r.choose(RouteRequest("q", 101, 4, np.arange(6, dtype=np.int64), prompt=DOC + "q"), 0.0)
    return w, r.last_decision


@pytest.mark.parametrize("loads, expect", [
    ([74, 10], (0, "cache_hit")),  # gap exactly 64 (cli abs threshold): not more, balanced
    ([75, 10], (1, "imbalanced")),  # gap 65, and 75 > 1.5 * 10
    ([300, 200], (0, "cache_hit")),  # gap 100 > 64, but 300 is exactly 1.5 * 200: balanced
    ([301, 200], (1, "imbalanced")),
])
def test_cli_thresholds_are_strict(loads, expect):
    assert decide(loads) == expect


@pytest.mark.parametrize("loads, expect", [
    ([42, 10], (0, "cache_hit")),  # library set: gap exactly 32
    ([43, 10], (1, "imbalanced")),
    ([550, 500], (0, "cache_hit")),  # gap 50 > 32, 550 is exactly 1.1 * 500 (also in floating point)
    ([551, 500], (1, "imbalanced")),
])
def test_library_thresholds_are_strict(loads, expect):
    assert decide(loads, defaults="library") == expect


def test_both_thresholds_must_hold():
    assert decide([74, 0]) == (1, "imbalanced")  # 74 > 1.5 * 0
    assert decide([64, 0]) == (0, "cache_hit")  # the rel test holds, the abs one does not
    assert decide([200, 135]) == (0, "cache_hit")  # the abs test holds (gap 65), the rel one does not
