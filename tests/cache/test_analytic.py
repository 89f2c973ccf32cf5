"""Cases whose outcome is known in closed form."""

from __future__ import annotations

import pytest
from tests.cache.cache_drivers import build, run_sequential

from kvbench.cache import PrefixCache, make_policy


def cyclic(k: int, rounds: int) -> list[list[int]]:
    return [[1000 + (i % (k + 1))] for i in range(rounds * (k + 1))]


def hits_after_warmup(name: str, k: int, rounds: int, seed: int = 0) -> float:
    trace = cyclic(k, rounds)
    cache = build(name, k, trace, seed=seed, block_size=1)
    warm = trace[: k + 1]
    run_sequential(cache, warm)
    before = cache.stats.hit_tokens, cache.stats.queries_tokens
    run_sequential(cache, trace[k + 1 :])
    return (cache.stats.hit_tokens - before[0]) / (cache.stats.queries_tokens - before[1])


def test_lru_gets_nothing_from_a_cycle_one_larger_than_the_cache():
    assert hits_after_warmup("lru", 8, 50) == 0.0


def test_rlt_matches_the_marking_algorithm_expectation_on_the_cycle():
    # Each phase serves k requests (x, x+1, ..., x+k-1) and starts with a miss on x. Exactly one page
    # of the phase's k unrequested ones is missing, uniformly; request i of the phase (i = 1..k-1) finds
    # k-i+1 unrequested candidates, so it misses with probability 1/(k-i+1). Misses per phase are
    # 1 + sum_{j=2..k} 1/j = H_k, so the hit rate is 1 - H_k / k (0.660 for k = 8).
    k = 8
    expected = 1 - sum(1 / j for j in range(1, k + 1)) / k
    rates = [hits_after_warmup("rlt", k, 400, seed=s) for s in range(3)]
    for rate in rates:
        assert rate == pytest.approx(expected, abs=0.02)
    assert sum(rates) / len(rates) == pytest.approx(expected, abs=0.012)
    assert hits_after_warmup("belady", k, 50) > 0.8  # the optimum: 1 - 1/k on the cycle


def _victims(name: str, seed: int) -> list[int]:
    policy = make_policy(name, seed=seed)
    taken: list[int] = []
    choose = policy.victim

    def victim() -> int:
        key = choose()
        taken.append(key)
        return key

    policy.victim = victim
    cache = PrefixCache(12, policy, block_size=1)
    trace = [
        [g * 100 + j for j in range(1 + (i * 7) % 5)] for i, g in enumerate([3, 1, 4, 1, 5, 9, 2, 6] * 20)
    ]
    run_sequential(cache, trace)
    return taken


def test_same_seed_same_rlt_victims():
    assert _victims("rlt", 7) == _victims("rlt", 7)
    assert _victims("rlt", 7) != _victims("rlt", 8)
    assert _victims("random", 7) == _victims("random", 7)


def _scan_then_reuse(name: str) -> tuple[int, int]:
    k = 10
    working = [[1, 2, 3], [4, 5], [6]]  # 6 blocks reused
    scan = [[100 + 10 * i, 101 + 10 * i] for i in range(15)]  # 30 blocks seen once
    cache = build(name, k, block_size=1)
    run_sequential(cache, working * 3)
    run_sequential(cache, scan)
    before = cache.stats.hit_tokens
    run_sequential(cache, working)
    return cache.stats.hit_tokens - before, sum(map(len, working))


def test_arc_keeps_a_reused_working_set_through_a_scan_that_flushes_lru():
    hit, total = _scan_then_reuse("arc")
    assert hit == total
    assert _scan_then_reuse("s3fifo") == (total, total)
    assert _scan_then_reuse("lru") == (0, total)


def test_rlt_phase_change_keeps_the_newest_request_marked():
    for seed in range(5):
        cache = build("rlt", 4, seed=seed, block_size=1)
        run_sequential(cache, [[1, 2], [3], [4]])  # full, everything marked
        run_sequential(cache, [[1, 2, 9]])  # new phase: marks of 1, 2 survive; 3 or 4 goes
        assert cache.policy.phases == 1
        run_sequential(cache, [[7]])  # the only unmarked leaf left is the other of 3 and 4
        assert all(k in cache for k in (1, 2, 9, 7)) and cache.policy.phases == 1


def test_rlt_reuse_marking_keeps_shared_prefixes_that_insert_marking_loses():
    """Each request = a group's shared prefix + a unique tail, groups in round-robin (GSP interleaved).
    Marking inserts fills each phase with marked unique tails, so every old prefix goes; marking only
    reused blocks lets the tails go first and keeps part of the prefixes."""
    from kvbench.cache import PrefixCache, make_policy

    def run(name: str) -> float:
        cache = PrefixCache(60, make_policy(name, seed=0), block_size=1)
        tail = 10**9
        for rnd in range(30):
            for g in range(8):
                prefix = [g * 1000 + i for i in range(6)]
                hs = prefix + list(range(tail, tail + 6))
                tail += 6
                adm = cache.admit(hs, len(hs), max_hit_blocks=len(hs) - 1)
                cache.commit(adm)
                cache.release(adm)
        return cache.stats.hit_rate

    assert run("lru") == 0.0
    assert run("rlt_reuse") > run("rlt") + 0.05


def test_belady_keeps_blocks_of_a_delayed_request():
    """Closed-loop sessions reorder requests: the future 0,1,2,3,4 is processed as 0,2,3,1,4. While 2 and
    3 run, request 1 is still pending, so the blocks it will reuse are not "never used again"."""
    from kvbench.cache import PrefixCache, make_policy

    a, x, y = [1, 2], [10, 11], [20, 21]
    future = [a, a, x, y, x]  # request 1 (the next turn after 0) is delayed until after request 3
    cache = PrefixCache(4, make_policy("belady", future=future), block_size=1)
    hits = {}
    for i in (0, 2, 3, 1, 4):
        cache.policy.seek(i)
        adm = cache.admit(future[i], 2)
        hits[i] = adm.hit_blocks
        cache.commit(adm)
        cache.release(adm)
    assert hits[1] == 2, "the delayed request's prefix must have been kept"


def test_belady_next_use_counts_pending_requests_with_smaller_index():
    from kvbench.cache import make_policy

    future = [[1, 2], [1, 2], [10, 11], [20, 21], [10, 11]]
    pol = make_policy("belady", future=future)
    for i in (0, 2, 3):  # request 1 is delayed (a closed-loop turn waiting for its predecessor)
        pol.seek(i)
        pol.on_request()
    assert pol.next_use(1) == 1
    assert pol.next_use(10) == 4
    assert pol.next_use(20) > len(future)
