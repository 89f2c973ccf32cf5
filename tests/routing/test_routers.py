import numpy as np
import pytest

from kvbench.errors import KvbenchError
from kvbench.routing import ROUTERS, Completion, RouterConfig, RouteRequest, make_router
from kvbench.routing.radix import RadixTree


def req(i, tokens=64, hashes=None, session=None, ids=None, prompt=None):
    if hashes is None:
        hashes = np.arange(i * 1000, i * 1000 + tokens // 16, dtype=np.int64)
    return RouteRequest(f"r{i}", tokens, 4, np.asarray(hashes, dtype=np.int64), prompt_token_ids=ids,
                        prompt=prompt, session_id=session)


def test_registry_lists_all_and_rejects_unknown():
    assert set(ROUTERS) >= {"random", "round_robin", "least_load", "power_of_two", "prefix_hash",
                            "cache_aware", "kv_cost", "llmd", "lbgr", "lbgr_ext"}
    with pytest.raises(KvbenchError, match="unknown router.*round_robin"):
        make_router("nope", RouterConfig(workers=2))
    with pytest.raises(KvbenchError, match="no such parameter"):
        make_router("least_load", RouterConfig(workers=2, params={"bogus": 1}))
    with pytest.raises(KvbenchError, match="expects a float"):
        make_router("cache_aware", RouterConfig(workers=2, params={"cache_threshold": "high"}))


@pytest.mark.parametrize("name", ROUTERS)
def test_every_router_routes_to_live_workers_and_counts(name):
    r = make_router(name, RouterConfig(workers=3, seed=1, cache_blocks=100))
    r.set_alive(1, False)
    seen = []
    for i in range(30):
        q = req(i % 5, tokens=64 + 16 * (i % 3))
        w = r.route(q, now=i * 0.01)
        assert w in (0, 2)
        seen.append((q, w))
    assert sum(r.outstanding) == 30
    for i, (q, w) in enumerate(seen):
        r.complete(q, w, 1 + i * 0.01, Completion(ttft_s=0.1, e2e_s=0.2, cached_tokens=0, output_tokens=4))
    assert r.outstanding == [0, 0, 0] and r.outstanding_tokens == [0, 0, 0]


def test_round_robin_balances_exactly():
    r = make_router("round_robin", RouterConfig(workers=4))
    counts = [0] * 4
    for i in range(103):
        counts[r.route(req(i), 0.0)] += 1
    assert max(counts) - min(counts) <= 1 and sum(counts) == 103


def test_least_load_by_tokens_and_requests():
    r = make_router("least_load", RouterConfig(workers=2, params={"by": "tokens"}))
    assert r.route(req(0, tokens=1600), 0) == 0
    assert r.route(req(1, tokens=16), 0) == 1
    assert r.route(req(2, tokens=16), 0) == 1  # worker 1 still has fewer tokens
    r2 = make_router("least_load", RouterConfig(workers=2))
    assert [r2.route(req(i), 0) for i in range(4)] == [0, 1, 0, 1]


def test_random_and_power_of_two_are_seeded():
    for name in ("random", "power_of_two"):
        a = make_router(name, RouterConfig(workers=5, seed=7))
        b = make_router(name, RouterConfig(workers=5, seed=7))
        assert [a.route(req(i), 0) for i in range(50)] == [b.route(req(i), 0) for i in range(50)]


def test_prefix_hash_affinity_and_failover():
    r = make_router("prefix_hash", RouterConfig(workers=4))
    ws = {r.route(req(i, session="s1"), 0) for i in range(10)}
    assert len(ws) == 1
    shared = np.arange(10, dtype=np.int64)
    a = r.route(req(1, hashes=np.concatenate([shared, [99]])), 0)
    b = r.route(req(2, hashes=np.concatenate([shared, [77]])), 0)
    assert a == b
    r.set_alive(a, False)
    assert r.route(req(3, hashes=shared), 0) != a
    spread = {r.route(req(i), 0) for i in range(100)}
    assert len(spread) == 3  # the three live workers all own part of the ring


def test_radix_tree_match_insert_split_and_prune():
    t = RadixTree()
    t.insert(np.array([1, 2, 3, 4]), now=1.0)
    t.insert(np.array([1, 2, 9]), now=2.0)
    assert t.match(np.array([1, 2, 3, 4, 5])) == 4
    assert t.match(np.array([1, 2, 9, 9])) == 3
    assert t.match(np.array([1, 7])) == 1
    assert t.match(np.array([5])) == 0
    assert t.size == 5  # [1,2] + [3,4] + [9]
    t.prune(3)  # the older leaf [3, 4] goes first
    assert t.match(np.array([1, 2, 3, 4])) == 2
    assert t.match(np.array([1, 2, 9])) == 3


def _cache_aware(workers=2, **params):
    return make_router("cache_aware", RouterConfig(workers=workers, params=params))


def test_cache_aware_default_sets():
    cli = _cache_aware()
    assert (cli.cache_threshold, cli.abs_threshold, cli.rel_threshold) == (0.3, 64, 1.5)
    lib = _cache_aware(defaults="library")
    assert (lib.cache_threshold, lib.abs_threshold, lib.rel_threshold) == (0.5, 32, 1.1)
    over = _cache_aware(defaults="library", cache_threshold="0.9")
    assert over.cache_threshold == 0.9 and over.abs_threshold == 32


def _prime(r, worker, text):
    r.trees[worker].insert(np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.int64), 0.0)


def test_cache_aware_imbalance_needs_both_thresholds():
    doc = "x" * 100
    # abs gap 70 > 64 but 80 < 1.5 * 10 is false -> 80 > 15: both hold -> least loaded despite the cache
    r = _cache_aware()
    _prime(r, 0, doc)
    r.outstanding = [80, 10]
    assert r.choose(req(0, prompt=doc + "q"), 0) == 1 and r.last_decision == "imbalanced"
    # abs gap 60 <= 64: balanced, the cached worker wins even though it is busier
    r = _cache_aware()
    _prime(r, 0, doc)
    r.outstanding = [70, 10]
    assert r.choose(req(0, prompt=doc + "q"), 0) == 0 and r.last_decision == "cache_hit"
    # abs gap 100 > 64 but 200 > 1.5 * 100 is false (rel test fails): balanced -> cache
    r = _cache_aware()
    _prime(r, 0, doc)
    r.outstanding = [200, 140]
    assert r.choose(req(0, prompt=doc + "q"), 0) == 0 and r.last_decision == "cache_hit"


def test_cache_aware_threshold_and_fallbacks():
    r = _cache_aware()  # cache_threshold 0.3
    _prime(r, 0, "a" * 30)
    r.outstanding = [5, 1]
    # 30 of 100 chars match: 0.3 is not > 0.3 -> fallback to least loaded
    assert r.choose(req(0, prompt="a" * 30 + "b" * 70), 0) == 1 and r.last_decision == "fallback"
    r = _cache_aware()
    _prime(r, 0, "a" * 31)
    r.outstanding = [5, 1]
    assert r.choose(req(0, prompt="a" * 31 + "b" * 69), 0) == 0 and r.last_decision == "cache_hit"
    # older SGLang: the smallest tree instead of the least loaded
    r = _cache_aware(fallback="smallest_tree")
    _prime(r, 0, "zzzz")
    _prime(r, 1, "y" * 50)
    r.outstanding = [3, 0]
    assert r.choose(req(0, prompt="q" * 10), 0) == 0
    # the chosen worker's tree learns the prompt: the next identical prompt hits it
    r = _cache_aware()
    w = r.route(req(0, prompt="hello world " * 5), 0)
    assert r.choose(req(1, prompt="hello world " * 5 + "!"), 0) == w and r.last_decision == "cache_hit"


def test_cache_aware_uses_token_ids_without_text():
    r = _cache_aware(workers=3)
    ids = list(range(100, 300))
    w = r.route(req(0, ids=ids), 0.0)
    r.outstanding = [0, 0, 0]
    assert r.choose(req(1, ids=ids[:150] + [1] * 50), 1.0) == w


def test_kv_cost_prefers_cached_worker_until_decode_load_dominates():
    r = make_router("kv_cost", RouterConfig(workers=2, block_size=16, params={"preset": "kvbench-0.1"}))
    h = np.arange(64, dtype=np.int64)
    first = r.route(RouteRequest("a", 1024, 4, h), 0)
    assert r.choose(RouteRequest("b", 1024, 4, h), 0) == first  # 0 uncached blocks wins
    r.outstanding_tokens[first] += 10 * 1024  # heavy decode load outweighs 64 uncached blocks
    assert r.choose(RouteRequest("c", 1024, 4, h), 0) != first


def test_llmd_weights_prefix_against_queue():
    cfg = RouterConfig(workers=2, block_size=16, cache_blocks=1000, params={"preset": "kvbench-0.1", "prefix_weight": 2.0})
    r = make_router("llmd", cfg)
    h = np.arange(32, dtype=np.int64)
    w = r.route(RouteRequest("a", 512, 4, h), 0)
    assert r.choose(RouteRequest("b", 512, 4, h), 0) == w
    r2 = make_router("llmd", RouterConfig(workers=2, block_size=16, params={"preset": "kvbench-0.1", "prefix_weight": 0.0}))
    w2 = r2.route(RouteRequest("a", 512, 4, h), 0)
    assert r2.choose(RouteRequest("b", 512, 4, h), 0) != w2  # load only: the idle worker


def test_lbgr_ext_load_decays_per_interval():
    r = make_router("lbgr_ext", RouterConfig(workers=1, params={"load_decay": 0.5, "decay_interval_s": 0.1}))
    r.route(RouteRequest("a", 1000, 4, np.arange(62, dtype=np.int64) + 5000), 0.0)
    assert r.load_at(0, 0.0) == pytest.approx(1000)
    assert r.load_at(0, 0.2) == pytest.approx(250)


def test_lbgr_ext_learns_constant_per_worker_offset():
    offsets = [0.0, 0.3, 0.05]
    r = make_router("lbgr_ext", RouterConfig(workers=3, seed=0, params={"features": "full"}))
    rng = np.random.default_rng(0)
    t = 0.0
    for i in range(600):
        tokens = int(rng.integers(100, 2000))
        q = RouteRequest(f"q{i}", tokens, 4, np.arange(tokens // 16, dtype=np.int64) + 10**6 * i)
        w = i % 3  # explore every worker: route by hand, then report what a worker with an offset measures
        r.outstanding[w] += 1
        r.outstanding_tokens[w] += tokens + 4
        r.on_routed(q, w, t)
        x, base = r.pending[q.request_id][:2]
        observed = base + offsets[w] + float(rng.normal(0, 0.002))
        r.complete(q, w, t + observed, Completion(ttft_s=observed, e2e_s=observed, cached_tokens=0,
                                                  output_tokens=4))
        t += 1.0  # far apart: load has decayed to nothing
    for w, off in enumerate(offsets):
        x = r.features(500, 0.0)
        assert r.models[w].predict(x) == pytest.approx(off, abs=0.01)
    # and the greedy choice now avoids the slow worker and takes the fastest
    q = RouteRequest("final", 800, 4, np.arange(50, dtype=np.int64) + 7)
    assert r.choose(q, t + 10) == 0


def test_lbgr_ext_residual_never_rewards_load():
    """A fit that would weigh load negatively (delayed outcomes under queueing) is clipped at zero."""
    r = make_router("lbgr_ext", RouterConfig(workers=2, seed=0))
    r.models[0].theta = np.array([0.1, 0.0, -5.0])  # a learned negative load weight
    loaded, idle = r.features(500, 40_000.0), r.features(500, 0.0)
    assert r.residual(0, loaded) == pytest.approx(r.residual(0, idle))
    plain = make_router("lbgr_ext", RouterConfig(workers=2, seed=0, params={"monotone": False}))
    plain.models[0].theta = np.array([0.1, 0.0, -5.0])
    assert plain.residual(0, loaded) < plain.residual(0, idle)


def test_lbgr_ext_completion_removes_what_is_left_of_its_load():
    r = make_router("lbgr_ext", RouterConfig(workers=1, params={"load_decay": 0.5, "decay_interval_s": 0.1}))
    q = RouteRequest("a", 1000, 4, np.arange(62, dtype=np.int64) + 5000)
    r.route(q, 0.0)
    r.complete(q, 0, 0.1, Completion(ttft_s=0.05, e2e_s=0.1, cached_tokens=0, output_tokens=4))
    assert r.load_at(0, 0.1) == pytest.approx(0.0, abs=1e-9)
