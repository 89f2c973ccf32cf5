"""Hypothesis property tests: every policy keeps the cache consistent on random interleaved traces."""

from __future__ import annotations

import pytest
from tests.cache.cache_drivers import ONLINE, KeyChains, build, run_sequential
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvbench.cache import POLICIES

requests = st.lists(
    st.tuples(
        st.integers(0, 3),  # prefix group
        st.integers(0, 5),  # shared prefix blocks
        st.integers(0, 2),  # suffix variant
        st.integers(0, 3),  # suffix blocks
    ).filter(lambda r: r[1] + r[3] > 0),
    min_size=1,
    max_size=40,
)
# each step: 0 = admit the next request, 1 = commit a running one, 2 = release a running one
steps = st.lists(st.tuples(st.integers(0, 2), st.integers(0, 1000), st.integers(0, 2)), max_size=120)

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def to_trace(reqs) -> list[list[int]]:
    chains = KeyChains()
    return [chains.request(*r) for r in reqs]


def check_invariants(cache, running) -> None:
    nodes = cache._nodes  # white-box: the tree itself
    cap = cache.capacity_blocks
    assert cap is None or cache.used_blocks <= cap
    refs: dict[int, int] = {}
    for adm in running:
        for key in adm.pinned:
            assert key in cache, "a pinned block was evicted"
            refs[key] = refs.get(key, 0) + 1
    kids: dict[int, int] = {}
    for key, (ref, parent, _) in nodes.items():
        assert ref == refs.get(key, 0)
        if parent is not None:
            assert parent in nodes, "a cached block is unreachable (its parent is gone)"
            kids[parent] = kids.get(parent, 0) + 1
    assert all(node[2] == kids.get(key, 0) for key, node in nodes.items())
    zero = sum(1 for node in nodes.values() if node[0] == 0)
    assert cache.evictable_blocks == zero == cache.policy.evictable_count()
    assert cache.used_blocks == len(nodes) + sum(a.fresh_blocks for a in running)
    s = cache.stats
    assert s.inserted_blocks - s.evicted_blocks == len(nodes)
    assert 0 <= s.hit_tokens <= s.queries_tokens


@pytest.mark.parametrize("name", list(POLICIES))
@SETTINGS
@given(reqs=requests, plan=steps, capacity=st.integers(6, 24), seed=st.integers(0, 3))
def test_interleaved_requests_keep_the_cache_consistent(name, reqs, plan, capacity, seed):
    trace = to_trace(reqs)
    cache = build(name, capacity, trace, seed=seed, block_size=4)
    running = []
    nxt = 0
    for op, pick, extra in plan:
        if op == 0 and nxt < len(trace):
            keys = trace[nxt]
            total = len(keys) + extra
            if not cache.fits(total):
                nxt += 1
                continue
            expect = cache.match(keys)
            adm = cache.admit(keys, total, max_hit_blocks=max(len(keys) - (pick % 2), 0))
            if adm is not None:
                nxt += 1
                assert adm.hit_blocks <= expect
                assert adm.pinned == keys[: adm.hit_blocks]
                running.append(adm)
        elif op == 1 and running:
            adm = running[pick % len(running)]
            if not adm.committed:
                cache.commit(adm)
        elif op == 2 and running:
            cache.release(running.pop(pick % len(running)))
        check_invariants(cache, running)
    for adm in running:
        cache.release(adm)
    check_invariants(cache, [])


@SETTINGS
@given(reqs=requests, capacity=st.integers(4, 20), extra=st.integers(0, 1), seed=st.integers(0, 3))
def test_belady_bounds_every_online_policy(reqs, capacity, extra, seed):
    trace = [keys for keys in to_trace(reqs) if len(keys) + extra <= capacity]
    hits = {}
    for name in ONLINE + ["belady"]:
        cache = build(name, capacity, trace, seed=seed)
        run_sequential(cache, trace, extra)
        hits[name] = cache.stats.hit_tokens
    best_online = max(hits[n] for n in ONLINE)
    assert hits["belady"] >= best_online, hits


@SETTINGS
@given(reqs=requests)
def test_unbounded_cache_reaches_the_ideal_hit_rate(reqs):
    trace = to_trace(reqs)
    seen: set[int] = set()
    ideal = 0
    for keys in trace:
        for key in keys:
            if key not in seen:
                break
            ideal += 1
        seen.update(keys)
    cache = build("lru", None, block_size=1)
    run_sequential(cache, trace)
    assert cache.stats.hit_tokens == ideal and cache.stats.evicted_blocks == 0
