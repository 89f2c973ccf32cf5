"""``belady`` against the true optimum, against every online policy, and with several simulated workers.

The optimum here is an exhaustive search over every leaf-first choice of victims on one cache that serves
requests one at a time, admitted exactly as the simulator admits them (hits capped at
``(input - 1) // block_size`` blocks, the whole sequence allocated up front).
"""

from __future__ import annotations

import random
from functools import cache as memoize
from pathlib import Path

import pytest
from tests.cache.cache_drivers import Request, belady_for, random_requests, run_like_simulator
from tests.sim.sim_traces import make_trace

from kvbench.cache import POLICIES, PrefixCache, make_policy
from kvbench.cache.belady import _NEVER
from kvbench.record import BackendResult
from kvbench.spec import ReplaySpec
from kvbench.sim import run as sim_run
from kvbench.trace import read_trace

BS = 4
ONLINE = [name for name in POLICIES if name != "belady"]


def optimum(requests: list[Request], capacity: int) -> int:
    """Most hit blocks any eviction order can get: every set of victims leaf-first eviction could remove
    at each admission, searched depth first and memoised on (request, cached blocks)."""
    kids: dict[int, set[int]] = {}
    for r in requests:
        for a, b in zip(r.keys, r.keys[1:]):
            kids.setdefault(a, set()).add(b)

    def victim_sets(cached: frozenset, pinned: frozenset, n: int) -> set[frozenset]:
        sets = {frozenset()}
        for _ in range(n):
            sets = {gone | {key} for gone in sets for key in cached - gone - pinned
                    if not kids.get(key, set()) & (cached - gone)}
        return sets

    @memoize
    def best(j: int, cached: frozenset) -> int:
        if j == len(requests):
            return 0
        r = requests[j]
        hittable, hits = r.hittable(BS), 0
        while hits < hittable and r.keys[hits] in cached:
            hits += 1
        short = r.total_blocks(BS) - hits - (capacity - len(cached))
        return hits + max(best(j + 1, (cached - gone) | frozenset(r.keys))
                          for gone in victim_sets(cached, frozenset(r.keys[:hits]), short))

    return best(0, frozenset())


def reloaded_parents(requests: list[Request]) -> bool:
    """Whether some block that a request re-caches without being able to hit it (a block-aligned prompt's
    last) is the parent of another block: the one shape where belady's leaf-first rule can miss the
    optimum."""
    parents = {a for r in requests for a in r.keys[:-1]}
    return any(key in parents for r in requests for key in r.keys[r.hittable(BS):])


def belady_hits(requests: list[Request], capacity: int) -> int:
    return run_like_simulator(PrefixCache(capacity, belady_for(requests, BS), BS), requests)


def online_hits(requests: list[Request], capacity: int) -> dict[str, int]:
    def hits(name: str, seed: int) -> int:
        return run_like_simulator(PrefixCache(capacity, make_policy(name, seed=seed), BS), requests)

    return {f"{name}/{seed}": hits(name, seed) for name in ONLINE for seed in range(3)}


def test_optimum_at_least_belady_at_least_every_online_policy():
    """Theory: with the next use counted over hittable blocks, blocks that a pending request re-caches
    anyway counted as unused, and no reloaded block with a cached child, furthest-next-use among leaves is
    the classic exchange argument and equals the optimum. Without that last condition it need not be
    (see the next test); there these seeds only check optimum >= belady >= online."""
    exact = 0
    for seed in range(400):
        rng = random.Random(seed)
        requests = random_requests(rng, rng.randint(3, 10), BS, aligned=0.5 if seed % 2 else 0.1)
        capacity = rng.randint(max(r.total_blocks(BS) for r in requests), 10)
        best, belady = optimum(requests, capacity), belady_hits(requests, capacity)
        online = online_hits(requests, capacity)
        assert best >= belady >= max(online.values()), (seed, best, belady, online)
        if not reloaded_parents(requests):
            exact += 1
            assert belady == best, (seed, best, belady)
    assert exact >= 200  # the equality above was really exercised


def test_known_gap_a_reloaded_parent_with_a_cached_child():
    """Where belady is not optimal. Block 1 is re-cached by request 3 (a one-block aligned prompt) before
    its next hit, so keeping it is worthless, but it has a cached child 2 and only leaves may go. Request 2
    needs two victims: belady takes the furthest leaves, 0 (next hit: request 5) and 2 (request 4), losing
    both hits; the optimum takes 2 and then 1, losing only 2's. (An online policy can win such a trace too:
    docs/belady.md.)"""
    def req(keys: list[int], aligned: bool, output: int) -> Request:
        return Request(keys, len(keys) * BS + (0 if aligned else 1), output)

    trace = [req([100], True, 5), req([101, 102], True, 5), req([103, 104, 105, 106, 107, 108], True, 5),
             req([101], True, 5), req([101, 102, 109], True, 5), req([100, 110], False, 3)]
    assert reloaded_parents(trace)
    assert (optimum(trace, 8), belady_hits(trace, 8)) == (2, 1)


def test_a_block_the_request_recaches_anyway_is_a_free_victim():
    """Request 2 (an aligned prompt [1, 2]) hits block 1 but not its last block 2, which its commit puts
    back anyway, and must evict one block: 2 (free) or 3 (whose next hit, request 4, is further away than
    2's, request 3). Furthest-next-use alone would take 3 and lose request 4's hit."""
    trace = [Request([1, 2], 2 * BS, 1), Request([3], BS + 1, 1), Request([1, 2], 2 * BS, 2),
             Request([1, 2], 2 * BS + 1, 1), Request([3], BS + 1, 1)]
    assert belady_hits(trace, 4) == optimum(trace, 4) == 4


def test_keeping_a_block_until_a_request_recaches_it_is_worthless():
    """Block 1's next occurrence is request 3, an aligned one-block prompt that cannot hit it and re-caches
    it anyway; its next hit (request 4) comes before block 2's (request 5). Counting hittable uses only,
    request 2's one victim would be 2; but 1 is worth nothing until request 3 puts it back."""
    trace = [Request([1], BS + 1, 1), Request([2], BS + 1, 1), Request([3], BS + 1, 1), Request([1], BS, 1),
             Request([1], BS + 1, 1), Request([2], BS + 1, 1)]
    assert belady_hits(trace, 3) == optimum(trace, 3) == 2


def test_the_admitted_requests_reload_is_free_even_out_of_order():
    """Closed-loop turns run out of replay order. Request 2 (a hit on block 1) is delayed behind request 3,
    an aligned prompt [1] that cannot hit block 1 and re-caches it at its commit. When request 3 needs a
    victim, block 1's stored priority is request 2 (nearer than block 2's request 4), yet evicting it is
    free: it is back before request 2 runs."""
    trace = [Request([1], BS + 1, 1), Request([2], BS + 1, 1), Request([1], BS + 1, 1), Request([1], BS, 5),
             Request([2], BS + 1, 1)]
    policy = belady_for(trace, BS)
    cache = PrefixCache(3, policy, BS)
    for i in (0, 1, 3, 2, 4):
        r = trace[i]
        policy.seek(i)
        adm = cache.admit(r.keys, r.total_blocks(BS), r.hittable(BS), r.input_tokens)
        cache.commit(adm)
        cache.release(adm)
    assert cache.stats.hit_tokens // BS == 2


def test_a_victim_always_has_the_furthest_current_next_use():
    """Stale priorities: a leaf's priority moves when a request holding it is processed elsewhere
    (``drop``: its use moves later, or a reload goes away and a use becomes next) or is admitted and will
    re-cache it, without the leaf being touched. LazyHeap.pop trusts the live priority, so a stale one
    could keep the true furthest leaf. With requests in flight, out of replay order (``seek``) and dropped,
    every victim must have the largest priority among the cache's evictable leaves at that moment, every
    next use must match one recomputed from scratch, and the heap's live priority of every candidate must
    equal the current one."""
    victims = sum(_checked_schedule(seed) for seed in range(150))
    assert victims > 1000


def _checked_schedule(seed: int) -> int:
    """One random schedule with every victim checked; returns how many victims there were."""
    rng = random.Random(seed)
    requests = random_requests(rng, 14, BS, aligned=0.5, groups=3)
    policy = belady_for(requests, BS)
    cache = PrefixCache(rng.randint(8, 14), policy, BS)
    consumed: set[int] = set()
    checked = []

    def reference(key: int) -> int:
        for i, r in enumerate(requests):  # the first pending request holding key decides
            if i not in consumed and key in r.keys:
                return _NEVER if r.keys.index(key) >= r.hittable(BS) else i
        return _NEVER

    choose = policy.victim

    def checked_victim() -> int:
        leaves = [k for k, (ref, _, kids) in cache._nodes.items() if ref == 0 and kids == 0]
        prio = {k: policy._priority(k) for k in leaves}
        assert {k: -p for k, p in policy._cand._live.items()} == prio  # the invariant itself
        assert all(p == reference(k) for k, p in prio.items() if k not in policy._reload)
        key = choose()
        assert prio[key] == max(prio.values()), (seed, key, prio)
        checked.append(key)
        return key

    policy.victim = checked_victim
    pending = list(range(len(requests)))
    running = []
    while pending or running:
        op = rng.random()
        if pending and op < 0.15:
            i = pending.pop(rng.randrange(len(pending)))
            consumed.add(i)
            policy.drop(i)  # routed to another worker
        elif pending and op < 0.6 and len(running) < 3:
            i = pending[rng.randrange(min(3, len(pending)))]  # delayed turns: a later one may go first
            r = requests[i]
            if not cache.fits(r.total_blocks(BS)):
                pending.remove(i)
                consumed.add(i)
                policy.drop(i)
                continue
            policy.seek(i)
            adm = cache.admit(r.keys, r.total_blocks(BS), r.hittable(BS), r.input_tokens)
            if adm is not None:
                pending.remove(i)
                consumed.add(i)
                running.append(adm)
        elif running:
            k = rng.randrange(len(running))
            if not running[k].committed:
                cache.commit(running[k])
            else:
                cache.release(running.pop(k))
    return len(checked)


# --- several simulated workers ----------------------------------------------------------------------------
def _rates(path: Path, router: str, evictions: list[str], **kw) -> dict[str, BackendResult]:
    trace = read_trace(path)
    out = {}
    for ev in evictions:
        spec = ReplaySpec(trace=path, output=path.parent / ev, eviction=ev, router=router, workers=4,
                          cache_tokens=1200, progress=False, **kw)
        out[ev] = sim_run.run_sim(spec, trace)
    return out


def _sessions(tmp_path_factory, groups: int, per_group: int) -> Path:
    # shared-prefix groups plus closed-loop conversations: 4 workers round robin spread each session's turns
    # over workers, so most blocks' next uses belong to another worker
    return make_trace(tmp_path_factory.mktemp("belady") / "t.parquet", n_groups=groups, per_group=per_group,
                      prefix=320, suffix=32, rate=2.0, sessions=6, turns=4)


@pytest.fixture(scope="module")
def sessions_trace(tmp_path_factory):
    return _sessions(tmp_path_factory, 4, 4)


@pytest.fixture(scope="module")
def larger_sessions_trace(tmp_path_factory):
    return _sessions(tmp_path_factory, 8, 6)


@pytest.mark.parametrize("router", ["round_robin", "cache_aware"])
def test_several_workers_belady_bounds_online_policies_with_the_same_router(sessions_trace, router):
    """One future shared by all workers made belady look after blocks whose uses went elsewhere: 0.0625
    against LRU's 0.1318 here with round robin. Now each worker's future is its own requests."""
    runs = _rates(sessions_trace, router, ["belady", *ONLINE])
    rate = {ev: r.hit_rates["cache_counters"] for ev, r in runs.items()}
    assert rate["belady"] >= max(rate[ev] for ev in ONLINE), rate
    if router == "round_robin":
        assert rate["belady"] > rate["lru"] + 0.03, rate
        # a single pass (no per-worker futures yet) only drops requests routed elsewhere as they are routed:
        # 0.149 here, already above LRU
        one = _rates(sessions_trace, router, ["belady"], eviction_params={"passes": 1})["belady"]
        assert rate["belady"] > one.hit_rates["cache_counters"] >= rate["lru"]
    sim = runs["belady"].config["simulator"]
    info = sim["belady"]
    assert info["exact_futures"] and info["per_pass"][-1]["routed_as_assumed"] == 1.0
    assert info["passes"] <= info["max_passes"] == 3 and "belady_note" in sim


@pytest.mark.parametrize("trace,router", [("sessions_trace", "cache_aware"),
                                          ("larger_sessions_trace", "power_of_two")])
def test_each_worker_plans_for_exactly_the_requests_it_serves(request, trace, router, monkeypatch):
    """Unless told otherwise (one pass, or no forced final pass) the last pass's futures are exact: every
    worker's future holds exactly the requests that reach it (the others empty), by replay index. With
    power_of_two the second pass routes 1.4% of requests differently from the first, so the third replays
    the second's routing; with cache_aware the second pass reproduces the first (a fixed point)."""
    path = request.getfixturevalue(trace)
    passes: list = []
    original = sim_run._Pass.__init__

    def spy(self, resolved, plan, capacity, futures=None, replay=None, label=""):
        original(self, resolved, plan, capacity, futures, replay, label)
        passes.append((futures, self.reqs))

    monkeypatch.setattr(sim_run._Pass, "__init__", spy)
    for params in ({}, {"passes": 1}, {"passes": 2}, {"passes": 2, "force_final": False}):
        passes.clear()
        res = _rates(path, router, ["belady"], eviction_params=params)["belady"]
        info = res.config["simulator"]["belady"]
        assert len(passes) == info["passes"]
        if params.get("passes", 3) > 1 and params.get("force_final", True):
            assert info["exact_futures"]
        futures, reqs = passes[-1]
        served = [[r.idx for r in reqs if r.worker == w] for w in range(4)]
        planned = [[i for i, keys in enumerate(future) if keys] for future, _ in futures]
        if info["exact_futures"]:
            assert planned == served
        else:  # one pass, or a last pass that did not reproduce its assumed routing: said so
            assert planned != served and "approximate" in res.config["simulator"]["belady_note"]
        for future, hittable in futures:  # hittable: at most (input - 1) // block_size blocks
            assert all(h == min(len(r.hashes), (r.input - 1) // 16)
                       for h, r, keys in zip(hittable, reqs, future) if keys)
        if router == "power_of_two" and params == {}:
            assert info["passes"] == 3 and not info["converged"]
            assert info["final_routing"] == "replayed from pass 2"
            assert 0.9 < info["per_pass"][1]["routed_as_assumed"] < 1
