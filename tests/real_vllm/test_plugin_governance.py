"""Every cached block the plugin's vLLM pool holds is the policy's, or the model is refused at start-up.

Driven in-process through vLLM's own KVCacheManager (no server): salted and LoRA requests get keys of
their own (plain requests keep kvbench's chained hashes), duplicate copies of a prefix are never left
hashed in vLLM's own free list, models with more than one (or a non-full-attention) KV-cache group are
refused with one line, and ``on_request`` reaches the policy once per request on the async KV-connector
path (allocate with external tokens, cache later).
"""

from __future__ import annotations

import random

import pytest

pytest.importorskip("vllm")

import torch
from vllm.lora.request import LoRARequest
from vllm.v1.core import kv_cache_coordinator
from vllm.v1.kv_cache_interface import FullAttentionSpec, KVCacheConfig, KVCacheGroupSpec, SlidingWindowSpec
from vllm.v1.request import RequestStatus

from kvbench.errors import KvbenchError
from kvbench.hashing import block_hashes
from kvbench.vllm_plugin import PolicyConfig
from kvbench.vllm_plugin.block_pool import PolicyBlockPool, PolicyKVCacheManager, policy_keys
from tests.real_vllm.test_plugin_block_pool import BLOCK, NUM_BLOCKS, VllmCache, workload

LORA_A = LoRARequest("adapter-a", 1, "/adapters/a")
LORA_A_MOVED = LoRARequest("adapter-a", 1, "/adapters/a-v2")  # same name, other weights: vLLM keeps apart
LORA_B = LoRARequest("adapter-b", 2, "/adapters/b")


def governed_keys(cache: VllmCache, req) -> list[int]:
    """The policy keys of ``req``'s full blocks, read from the pool (the request must still hold them)."""
    blocks = cache.mgr.get_blocks(req.request_id).blocks[0]
    return [cache.pool._key_of[b.block_id] for b in blocks if b.block_id in cache.pool._key_of]


# --- keys: cache salt and LoRA ---------------------------------------------------------------------
def test_plain_keys_are_kvbench_hashes_and_salt_or_lora_give_keys_of_their_own():
    cache = VllmCache(PolicyBlockPool, PolicyConfig("lru"))
    ids = list(range(1, 23))  # 5 full blocks
    variants = [(None, None), ("tenant-1", None), ("tenant-2", None), (None, LORA_A), (None, LORA_A_MOVED),
                (None, LORA_B), ("tenant-1", LORA_A)]
    keys = []
    for salt, lora in variants:
        req, hit = cache.start(ids, salt=salt, lora=lora)
        assert hit == 0  # vLLM shares nothing between these: each caches its own 5 blocks
        keys.append(governed_keys(cache, req))
        assert keys[-1] == policy_keys(req, 5, BLOCK)
        cache.finish(req)
    # the plain request's keys are byte for byte the simulator's (and the trace's) hash ids
    assert keys[0] == block_hashes(ids, BLOCK).tolist()
    # no two variants share a key, and every block of every variant is the policy's
    all_keys = [k for ks in keys for k in ks]
    assert len(set(all_keys)) == len(all_keys) == 5 * len(variants)
    assert cache.pool.policy.evictable_count() == 5 * len(variants)  # none left in vLLM's own list
    # the same salt and adapter again share the cached blocks, under the same keys
    req, hit = cache.start(ids, salt="tenant-1", lora=LoRARequest("adapter-a", 1, "/adapters/a"))
    assert hit == 20 and governed_keys(cache, req) == keys[-1]


def test_kvbench_lru_equals_native_vllm_with_salted_and_lora_requests():
    """Salted and LoRA copies of the same prompts must be evicted in vLLM's LRU order, not first."""
    rng = random.Random(11)
    tags = [(None, None), (None, None), ("tenant-1", None), ("tenant-2", None), (None, LORA_A)]
    prompts = [(ids, *rng.choice(tags)) for ids in workload(3, n=200)]
    native = VllmCache()
    plugged = VllmCache(PolicyBlockPool, PolicyConfig("lru"))
    hits_native = [native.serve(ids, salt, lora) for ids, salt, lora in prompts]
    hits_plugged = [plugged.serve(ids, salt, lora) for ids, salt, lora in prompts]
    assert hits_native == hits_plugged
    assert sum(hits_native) > 0
    order = [b.block_id for b in native.pool.free_block_queue.get_all_free_blocks()]
    cached_native = [i for i in order if native.pool.blocks[i].block_hash is not None]
    cached_plugged = [plugged.pool._block_of[k] for k in plugged.pool.policy.order()]
    assert cached_native == cached_plugged


# --- duplicates ------------------------------------------------------------------------------------
def start_twice(cache: VllmCache, ids: list[int]):
    """Two requests for the same prompt, both looked up before either caches: vLLM caches it twice."""
    a, b = cache.request(ids), cache.request(ids)
    found_a, found_b = cache.lookup(a), cache.lookup(b)
    assert found_a[1] == found_b[1] == 0
    cache.admit(a, found_a)
    cache.admit(b, found_b)
    return a, b


def test_duplicate_copy_freed_while_the_policy_holds_the_first_gives_up_its_hash():
    cache = VllmCache(PolicyBlockPool, PolicyConfig("lru"))
    pool = cache.pool
    ids = list(range(1, 23))  # 5 full blocks + a partial one
    a, b = start_twice(cache, ids)
    copies = [blk for blk in cache.mgr.get_blocks(b.request_id).blocks[0][:5]]
    assert all(blk.block_hash is not None for blk in copies)  # vLLM hashed both copies
    cache.finish(b)
    # the content is still cached in A's copy (what vLLM's lookup returns); B's copies are plain blocks now
    assert all(blk.block_hash is None for blk in copies)
    assert pool.free_block_queue.num_free_cached_blocks == 0
    cache.finish(a)
    assert pool.policy.evictable_count() == 5
    assert cache.serve(ids) == 20


def test_duplicate_copy_outliving_the_policys_copy_is_taken_over_by_the_policy():
    """A's copy is evicted while B (same prefix, computed at once) still runs; B's copy must then be
    governed, so LRU keeps it over older blocks, as native vLLM does (before: evicted first, hit lost)."""
    ids = list(range(1, 23))
    hits = {}
    for name, cache in (("native", VllmCache()), ("plugged", VllmCache(PolicyBlockPool, PolicyConfig("lru")))):
        a, b = start_twice(cache, ids)
        cache.finish(a)
        # a prompt needing every free block: A's 5 cached blocks are evicted, B still holds its copies
        filler, _ = cache.start(list(range(1000, 1000 + 4 * 34)))
        cache.finish(filler)
        cache.finish(b)
        # 20 new blocks: 1 plain block, then the least recently used cached ones (the filler's, not B's)
        cache.serve(list(range(5000, 5000 + 4 * 20)))
        hits[name] = cache.serve(ids)
        if name == "plugged":
            assert cache.pool.policy.evictable_count() == cache.pool.free_block_queue.num_free_cached_blocks
    assert hits == {"native": 20, "plugged": 20}


def test_a_free_block_never_has_a_pinned_child_in_the_policys_tree():
    """B caches a copy of A's first block, then B's second block before A does. The policy's parent of
    B's second block must be B's own first block (a copy the policy does not hold), not A's: once A
    finishes, A's block is free and must be a leaf the policy can evict, although B still runs."""
    cache = VllmCache(PolicyBlockPool, PolicyConfig("rlt"))
    mgr, pool = cache.mgr, cache.pool
    ids = list(range(1, 14))  # 3 full blocks + 1 token, prefilled one block per step
    a, b = cache.request(ids), cache.request(ids)
    found_a, found_b = cache.lookup(a), cache.lookup(b)
    assert mgr.allocate_slots(a, 4, 0, found_a[0]) is not None  # A caches block 0
    assert mgr.allocate_slots(b, 4, 0, found_b[0]) is not None  # B caches a copy of it
    a.num_computed_tokens = b.num_computed_tokens = 4
    assert mgr.allocate_slots(b, 4) is not None  # B is first to cache block 1
    b.num_computed_tokens = 8
    assert mgr.allocate_slots(a, 4) is not None  # A's block 1 is the copy now
    a.num_computed_tokens = 8
    a.status = RequestStatus.FINISHED_ABORTED
    cache.finish(a)
    cache.check_invariants()
    assert pool.free_block_queue.num_free_cached_blocks == 1  # A's block 0
    # a prompt taking every free block: the last one can only come from the policy, A's block 0
    filler, _ = cache.start(list(range(1000, 1000 + 4 * pool.get_num_free_blocks())))
    assert pool.free_block_queue.num_free_cached_blocks == 0
    cache.finish(filler)
    b.num_computed_tokens = 8
    cache.finish(b)  # B's copy of block 0 is the only one left: the policy takes it over
    assert cache.serve(ids) == 8  # both blocks B computed: its copy of block 0, then its block 1


def test_chunked_prefills_of_shared_prefixes_keep_every_cached_block_the_policys():
    """A small scheduler loop (chunked prefill, up to eight requests at once, the same documents often
    prefilled side by side) under a leaf-first policy: vLLM caches duplicate copies and the policy's
    copies get evicted under them; still every free hashed block is the policy's (checked every step)
    and ``victim()`` always finds a leaf."""
    rng = random.Random(5)
    cache = VllmCache(PolicyBlockPool, PolicyConfig("rlt", seed=1))
    pool, mgr = cache.pool, cache.mgr
    settled = {"taken over": 0, "dropped": 0}

    def copies() -> set[int]:
        return set(getattr(pool, "_duplicates", ()))  # second copies vLLM cached, still in use

    def finish(req):
        before = copies()
        cache.finish(req)
        for block_id in before - copies():
            settled["taken over" if block_id in pool._key_of else "dropped"] += 1

    waiting = workload(4, n=300)
    active, hits = [], 0
    while waiting or active:
        progressed = False
        for req in list(active):  # running requests first, one chunk each, as vLLM's scheduler does
            n = min(req.num_tokens - req.num_computed_tokens, rng.randint(4, 8))
            if mgr.allocate_slots(req, n) is None:
                continue
            req.num_computed_tokens += n
            progressed = True
            if req.num_computed_tokens == req.num_tokens:
                active.remove(req)
                finish(req)
        while waiting and len(active) < 8:
            req = cache.request(waiting[0])
            blocks, hit = cache.lookup(req)
            n = min(req.num_tokens - hit, rng.randint(4, 8))
            if mgr.allocate_slots(req, n, hit, blocks) is None:
                break
            waiting.pop(0)
            req.num_computed_tokens = hit + n
            hits += hit
            progressed = True
            if req.num_computed_tokens < req.num_tokens:
                active.append(req)
            else:
                finish(req)
        cache.check_invariants()
        if not progressed:  # out of blocks: drop the newest request (vLLM would preempt it)
            finish(active.pop())
    assert settled["taken over"] > 0 and settled["dropped"] > 0 and hits > 0
    assert pool.policy.evictable_count() == pool.free_block_queue.num_free_cached_blocks > 0


# --- models the policy cannot govern ---------------------------------------------------------------
def build(groups, config: PolicyConfig | None, enable_caching: bool = True):
    spec_cfg = KVCacheConfig(num_blocks=NUM_BLOCKS, kv_cache_tensors=[], kv_cache_groups=groups)
    saved_cls, saved_cfg = kv_cache_coordinator.BlockPool, PolicyBlockPool.config
    kv_cache_coordinator.BlockPool, PolicyBlockPool.config = PolicyBlockPool, config
    try:
        return PolicyKVCacheManager(spec_cfg, max_model_len=4096, scheduler_block_size=BLOCK,
                                    hash_block_size=BLOCK, enable_caching=enable_caching)
    finally:
        kv_cache_coordinator.BlockPool, PolicyBlockPool.config = saved_cls, saved_cfg


FULL = FullAttentionSpec(block_size=BLOCK, num_kv_heads=1, head_size=1, dtype=torch.float32)
WINDOW = SlidingWindowSpec(block_size=BLOCK, num_kv_heads=1, head_size=1, dtype=torch.float32, sliding_window=8)


@pytest.mark.parametrize(
    ("groups", "feature"),
    [
        ([KVCacheGroupSpec(["full"], FULL), KVCacheGroupSpec(["swa"], WINDOW)],
         "hybrid model with 2 KV-cache groups (full attention, sliding window)"),
        ([KVCacheGroupSpec(["swa"], WINDOW)], "uses sliding window"),
    ],
)
def test_model_without_one_full_attention_group_is_refused_with_one_line(groups, feature):
    build(groups, None)  # vLLM itself serves this KV cache
    with pytest.raises(KvbenchError) as err:
        build(groups, PolicyConfig("rlt"))
    message = str(err.value)
    assert feature in message and "'rlt'" in message and "KVBENCH_EVICTION" in message
    assert "\n" not in message
    assert "kvbench eviction policy '" not in message  # `kvbench cluster up`'s success marker
    # without prefix caching there is no policy to run: the plugin stays out of the way
    assert build(groups, PolicyConfig("rlt"), enable_caching=False).block_pool.policy is None


def test_one_full_attention_group_is_governed():
    mgr = build([KVCacheGroupSpec(["full"], FULL)], PolicyConfig("rlt"))
    assert mgr.block_pool.policy is not None


# --- the async KV-connector path (allocate with external tokens now, cache when they arrive) -------
def test_async_external_load_gets_one_on_request_before_its_inserts():
    cache = VllmCache(PolicyBlockPool, PolicyConfig("rlt"))
    events: list[tuple[str, object]] = []
    policy = cache.pool.policy
    for name in ("on_request", "on_insert", "on_access"):
        real = getattr(policy, name)
        setattr(policy, name, lambda *a, _real=real, _name=name: (events.append((_name, a)), _real(*a))[1])
    ids = list(range(1, 1 + 4 * 6 + 2))  # 6 full blocks, all loaded by the connector
    loaded = cache.request(ids)
    for _ in range(3):  # the scheduler may look a request up several times (connector not ready yet)
        blocks, hit = cache.lookup(loaded)
    assert hit == 0 and events == []
    # as Scheduler.schedule() does for load_kv_async: blocks for the external tokens, caching delayed
    assert cache.mgr.allocate_slots(loaded, 0, 0, blocks, num_external_computed_tokens=24,
                                    delay_cache_blocks=True) is not None
    assert [e[0] for e in events] == ["on_request"]
    other, _ = cache.start(list(range(500, 540)))  # another request is admitted meanwhile
    cache.finish(other)
    del events[:]
    # the load finished: Scheduler._update_waiting_for_remote_kv caches the blocks, then schedules the rest
    loaded.num_computed_tokens = 24
    cache.mgr.cache_blocks(loaded, 24)
    assert cache.mgr.allocate_slots(loaded, 2) is not None
    assert [e[0] for e in events] == ["on_insert"] * 6
    assert governed_keys(cache, loaded) == block_hashes(ids, BLOCK).tolist()[:6]
    cache.finish(loaded)


def test_request_freed_before_it_finishes_is_not_announced_again():
    """Preemption, or a failed KV load with nothing valid, frees a request that comes back later."""
    cache = VllmCache(PolicyBlockPool, PolicyConfig("rlt"))
    calls = []
    real = cache.pool.policy.on_request
    cache.pool.policy.on_request = lambda: (calls.append(1), real())
    req, _ = cache.start(list(range(1, 30)))
    cache.mgr.free(req)  # status is still WAITING/RUNNING: it will be scheduled again
    req.num_computed_tokens = 0
    cache.admit(req, cache.lookup(req))
    assert len(calls) == 1
    req.status = RequestStatus.FINISHED_STOPPED
    cache.mgr.free(req)
    cache.serve(list(range(1, 30)))
    assert len(calls) == 2
