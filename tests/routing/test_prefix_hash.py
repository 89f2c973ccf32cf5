"""``prefix_hash``'s bounded-load option against SGLang's prefix-hash policy, computed by hand.

sgl-project/sglang ``sgl-model-gateway/src/policies/prefix_hash.rs``: the ring owner is kept when
``load <= (total_load + 1) / n * load_factor`` (always when total_load is 0); otherwise the least loaded
worker that passes that check; if none passes, the ring owner anyway. Loads are the requests the router has
in flight per live worker.
"""

import numpy as np
import pytest

from kvbench.errors import KvbenchError
from kvbench.routing import RouterConfig, RouteRequest, make_router


def ph(workers=4, **params):
    return make_router("prefix_hash", RouterConfig(workers=workers, params=params))


Q = RouteRequest("q", 64, 4, np.arange(40, 44, dtype=np.int64))


def owner_of(q, workers=4):
    return ph(workers).choose(q, 0.0)


def loads_with(owner, owner_load, others):
    loads, it = [0] * 4, iter(others)
    for w in range(4):
        loads[w] = owner_load if w == owner else next(it)
    return loads


def test_bounded_load_moves_an_overloaded_owner_to_the_least_loaded():
    o = owner_of(Q)
    # SGLang's own check: total 100 over 4 workers, load_factor 1.25 -> threshold 101 / 4 * 1.25 = 31.5625
    r = ph(load_factor=1.25)
    r.outstanding = loads_with(o, 30, [30, 20, 20])
    assert r.choose(Q, 0.0) == o  # 30 <= 31.5625: the owner keeps it
    r.outstanding = loads_with(o, 35, [25, 20, 20])
    others = [w for w in range(4) if w != o]
    assert r.choose(Q, 0.0) == others[1]  # 35 > 31.5625: the first of the two least loaded (20, 20)
    # the +1 for the incoming request: total 7 over 4, load_factor 1 -> bound (7 + 1) / 4 = 2, not 7 / 4
    exact = ph(load_factor=1.0)
    exact.outstanding = loads_with(o, 2, [2, 2, 1])
    assert exact.choose(Q, 0.0) == o
    # the default (off) keeps the ring owner however loaded it is, as before
    off = ph()
    off.outstanding = loads_with(o, 35, [25, 20, 20])
    assert off.choose(Q, 0.0) == o


def test_bounded_load_edge_cases():
    o = owner_of(Q)
    r = ph(load_factor=1.25)
    assert r.choose(Q, 0.0) == o  # no load at all: always the owner
    # load_factor below 1: every worker can be over its bound -> the owner anyway
    low = ph(load_factor=0.5)
    low.outstanding = loads_with(o, 5, [4, 4, 4])  # bound 18 / 4 * 0.5 = 2.25: all four are over it
    assert low.choose(Q, 0.0) == o  # not the least loaded
    # only live workers count: with the owner's neighbour down the average is over 3 workers
    r = ph(load_factor=1.0)
    down = (o + 1) % 4
    r.set_alive(down, False)
    r.outstanding = [0] * 4
    r.outstanding[o] = 3
    r.outstanding[down] = 100  # ignored
    live_others = [w for w in range(4) if w not in (o, down)]
    r.outstanding[live_others[0]], r.outstanding[live_others[1]] = 1, 0
    # total 4 over 3 live workers: threshold 5 / 3 = 1.67 < 3 -> least loaded live worker (load 0)
    assert r.choose(Q, 0.0) == live_others[1]
    with pytest.raises(KvbenchError, match="load_factor"):
        ph(load_factor=-1.0)


def test_describe_records_the_option():
    assert ph().describe()["load_factor"] == 0.0
    assert ph(load_factor="1.25").describe()["load_factor"] == 1.25
