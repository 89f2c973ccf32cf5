"""The plugin's block pool, driven in-process through vLLM's own KVCacheManager (fast: no server).

Checks that kvbench's ``lru`` inside vLLM reproduces vLLM's native eviction exactly, that every policy
inside vLLM makes the same choices as the same policy in ``kvbench.cache.PrefixCache``, and the free
queue's invariants (exact free count, null block first, un-hashed blocks reused before cached ones,
prefix-cache reset).
"""

from __future__ import annotations

import random

import pytest

pytest.importorskip("vllm")

import torch
from vllm.sampling_params import SamplingParams
from vllm.utils.hashing import sha256
from vllm.v1.core import kv_cache_coordinator
from vllm.v1.core.block_pool import BlockPool
from vllm.v1.core.kv_cache_utils import get_request_block_hasher, init_none_hash
from vllm.v1.kv_cache_interface import FullAttentionSpec, KVCacheConfig, KVCacheGroupSpec
from vllm.v1.request import Request

from kvbench.cache import POLICIES, PrefixCache, make_policy
from kvbench.errors import KvbenchError
from kvbench.hashing import block_hashes
from kvbench.vllm_plugin import ENV_NAME, ENV_SEED, PolicyConfig, register
from kvbench.vllm_plugin.block_pool import PolicyBlockPool, PolicyKVCacheManager

BLOCK = 4
NUM_BLOCKS = 41  # 40 usable + the null block
ONLINE = sorted(name for name in POLICIES if name != "belady")  # belady needs the future


def workload(seed: int, n: int = 160) -> list[list[int]]:
    """Prompts sharing a few document prefixes, with unique tails; some lengths are whole blocks."""
    rng = random.Random(seed)
    docs = [[rng.randrange(1000, 30000) for _ in range(rng.randrange(6, 40))] for _ in range(9)]
    out = []
    for i in range(n):
        doc = docs[min(int(rng.paretovariate(1.0)) - 1, len(docs) - 1)]
        cut = rng.randrange(len(doc) // 2, len(doc) + 1)
        tail = [rng.randrange(1000, 30000) for _ in range(rng.randrange(0, 9))]
        out.append(doc[:cut] + tail + [i % 997 + 1])
    return out


class VllmCache:
    """One vLLM KVCacheManager, requests served one at a time (prefill, 1 output token, free)."""

    def __init__(self, pool_cls=BlockPool, config: PolicyConfig | None = None) -> None:
        init_none_hash(sha256)
        self.hasher = get_request_block_hasher(BLOCK, sha256)
        spec = FullAttentionSpec(block_size=BLOCK, num_kv_heads=1, head_size=1, dtype=torch.float32)
        cfg = KVCacheConfig(num_blocks=NUM_BLOCKS, kv_cache_tensors=[], kv_cache_groups=[KVCacheGroupSpec(["l0"], spec)])
        saved_cls, saved_cfg = kv_cache_coordinator.BlockPool, PolicyBlockPool.config
        kv_cache_coordinator.BlockPool, PolicyBlockPool.config = pool_cls, config
        try:
            self.mgr = PolicyKVCacheManager(
                cfg, max_model_len=4096, scheduler_block_size=BLOCK, hash_block_size=BLOCK, enable_caching=True
            )
        finally:
            kv_cache_coordinator.BlockPool, PolicyBlockPool.config = saved_cls, saved_cfg
        self.pool = self.mgr.block_pool
        self.n = 0

    def request(self, ids: list[int], salt: str | None = None, lora=None) -> Request:
        self.n += 1
        return Request(str(self.n), ids, SamplingParams(max_tokens=1), None, lora_request=lora, cache_salt=salt,
                       block_hasher=self.hasher)

    def lookup(self, req: Request):
        blocks, hit, _ = self.mgr.get_computed_blocks(req)
        return blocks, hit

    def admit(self, req: Request, found) -> int:
        blocks, hit = found
        assert self.mgr.allocate_slots(req, req.num_tokens - hit, hit, blocks) is not None
        self.check_invariants()
        return hit

    def start(self, ids: list[int], salt: str | None = None, lora=None):
        req = self.request(ids, salt, lora)
        return req, self.admit(req, self.lookup(req))

    def finish(self, req) -> None:
        self.mgr.free(req)
        self.check_invariants()

    def serve(self, ids: list[int], salt: str | None = None, lora=None) -> int:
        req, hit = self.start(ids, salt, lora)
        self.finish(req)
        return hit

    def check_invariants(self) -> None:
        pool = self.pool
        free = [b for b in pool.blocks if b.ref_cnt == 0 and not b.is_null]
        assert pool.get_num_free_blocks() == len(free)
        if isinstance(pool, PolicyBlockPool) and pool.policy is not None:
            queue = pool.free_block_queue
            assert pool.policy.evictable_count() == queue.num_free_cached_blocks
            cached_free = {b.block_id for b in free if b.block_id in pool._key_of}
            assert {b.block_id for b in queue.get_all_free_blocks()} == {b.block_id for b in free}
            assert len(cached_free) == queue.num_free_cached_blocks
            # every free block with a hash is the policy's: vLLM's own list never evicts a cached block
            assert {b.block_id for b in free if b.block_hash is not None} == cached_free


def simulate(name: str, prompts: list[list[int]], seed: int = 0) -> list[int]:
    """kvbench's PrefixCache with vLLM's capacity and hit cap, one request at a time."""
    cache = PrefixCache(NUM_BLOCKS - 1, make_policy(name, seed=seed), BLOCK)
    hits = []
    for ids in prompts:
        n = len(ids)
        adm = cache.admit(block_hashes(ids, BLOCK).tolist(), -(-n // BLOCK), (n - 1) // BLOCK, n)
        assert adm is not None
        cache.commit(adm)
        cache.release(adm)
        hits.append(adm.hit_tokens)
    return hits


def test_kvbench_lru_in_vllm_equals_native_vllm_eviction():
    prompts = workload(1)
    native = VllmCache()
    plugged = VllmCache(PolicyBlockPool, PolicyConfig("lru"))
    # two requests overlap half of the time, so pinned/shared blocks and tail-first frees are exercised
    rng = random.Random(7)
    hits_a, hits_b, held_a, held_b = [], [], None, None
    for ids in prompts:
        req_a, hit_a = native.start(ids)
        req_b, hit_b = plugged.start(ids)
        hits_a.append(hit_a)
        hits_b.append(hit_b)
        if held_a is not None:
            native.finish(held_a)
            plugged.finish(held_b)
            held_a = held_b = None
        if rng.random() < 0.5:
            held_a, held_b = req_a, req_b
        else:
            native.finish(req_a)
            plugged.finish(req_b)
    assert hits_a == hits_b
    assert sum(hits_a) > 0
    order = [b.block_id for b in native.pool.free_block_queue.get_all_free_blocks()]
    # same blocks free, and the cached ones would be evicted in the same order
    cached_native = [i for i in order if native.pool.blocks[i].block_hash is not None]
    key_to_block = plugged.pool._block_of
    cached_plugged = [key_to_block[k] for k in plugged.pool.policy.order()]
    assert cached_native == cached_plugged


@pytest.mark.parametrize("name", ONLINE)
def test_policy_in_vllm_makes_the_simulators_choices(name):
    prompts = workload(2)
    vllm_cache = VllmCache(PolicyBlockPool, PolicyConfig(name, seed=3))
    got = [vllm_cache.serve(ids) for ids in prompts]
    assert got == simulate(name, prompts, seed=3)
    assert sum(got) > 0


def test_rlt_differs_from_lru_on_this_workload():
    prompts = workload(2)
    assert simulate("rlt", prompts, seed=3) != simulate("lru", prompts)


def test_null_block_first_and_unhashed_blocks_reused_before_cached_ones():
    cache = VllmCache(PolicyBlockPool, PolicyConfig("lru"))
    pool = cache.pool
    assert pool.null_block.block_id == 0 and pool.get_num_free_blocks() == NUM_BLOCKS - 1
    # 5 full blocks + a partial one: the partial block goes back to the un-hashed part
    cache.serve(list(range(1, 23)))
    assert pool.free_block_queue.num_free_cached_blocks == 5
    # a disjoint request that fits in the un-hashed blocks evicts nothing
    cache.serve(list(range(100, 100 + 4 * 30)))
    assert pool.free_block_queue.num_free_cached_blocks == 35
    assert cache.serve(list(range(1, 23))) == 20  # still cached: hit capped at (22-1)//4 blocks
    # the next one needs 10 blocks with 5 un-hashed ones left: exactly 5 cached blocks are evicted,
    # the tail of the least recently used request (35 - 5 + 10 new = 40 cached)
    cache.serve(list(range(500, 500 + 4 * 10)))
    assert pool.free_block_queue.num_free_cached_blocks == 40
    assert cache.serve(list(range(100, 100 + 4 * 30))) == 4 * 25


def test_reset_prefix_cache_forgets_every_cached_block():
    cache = VllmCache(PolicyBlockPool, PolicyConfig("rlt", seed=0))
    ids = list(range(1, 30))
    cache.serve(ids)
    req, _ = cache.start(list(range(200, 230)))
    assert cache.pool.reset_prefix_cache() is False  # a running request holds blocks
    cache.finish(req)
    assert cache.pool.reset_prefix_cache() is True
    assert cache.pool.policy.evictable_count() == 0
    assert cache.pool.free_block_queue.num_free_cached_blocks == 0
    assert cache.pool.get_num_free_blocks() == NUM_BLOCKS - 1
    cache.check_invariants()
    assert cache.serve(ids) == 0
    assert cache.serve(ids) == 28


def test_register_without_env_leaves_vllm_untouched(monkeypatch):
    from vllm.v1.core.sched import scheduler

    monkeypatch.setattr(kv_cache_coordinator, "BlockPool", kv_cache_coordinator.BlockPool)
    monkeypatch.setattr(scheduler, "KVCacheManager", scheduler.KVCacheManager)
    monkeypatch.setattr(scheduler, "KVConnectorFactory", scheduler.KVConnectorFactory)
    monkeypatch.setattr(PolicyBlockPool, "config", None)
    native_factory = scheduler.KVConnectorFactory
    for value in (None, "", "vllm"):
        if value is None:
            monkeypatch.delenv(ENV_NAME, raising=False)
        else:
            monkeypatch.setenv(ENV_NAME, value)
        register()
        assert kv_cache_coordinator.BlockPool is BlockPool
        assert not issubclass(scheduler.KVCacheManager, PolicyKVCacheManager)
        assert scheduler.KVConnectorFactory is native_factory
    monkeypatch.setenv(ENV_NAME, "rlt")
    monkeypatch.setenv(ENV_SEED, "5")
    register()
    assert kv_cache_coordinator.BlockPool is PolicyBlockPool
    assert scheduler.KVCacheManager is PolicyKVCacheManager
    assert issubclass(scheduler.KVConnectorFactory, native_factory)  # refuses connectors it cannot serve
    assert PolicyBlockPool.config == PolicyConfig("rlt", seed=5)
    register()  # idempotent: the factory is wrapped once
    assert scheduler.KVConnectorFactory.__mro__[1] is native_factory


def test_register_rejects_unknown_policy_and_bad_seed(monkeypatch):
    monkeypatch.setattr(kv_cache_coordinator, "BlockPool", kv_cache_coordinator.BlockPool)
    monkeypatch.setenv(ENV_NAME, "nosuch")
    with pytest.raises(KvbenchError, match="unknown eviction policy 'nosuch'"):
        register()
    monkeypatch.setenv(ENV_NAME, "lru")
    monkeypatch.setenv(ENV_SEED, "x")
    with pytest.raises(KvbenchError, match="KVBENCH_EVICTION_SEED"):
        register()
    assert kv_cache_coordinator.BlockPool is BlockPool
