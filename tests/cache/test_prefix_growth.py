"""``PrefixCache`` holding blocks as vLLM's ``allocate_slots`` gives them: admit, grow, commit, release.

The policy must hear what the kvbench vLLM plugin makes vLLM's pool tell it, in the same order: for one
``allocate_slots`` call ``on_request`` (a new request only), then ``on_pin``/``on_access`` for its hit
(``touch``), then ``victim`` for the blocks it takes (``get_new_blocks``), then ``on_insert`` for the
blocks that became full (``cache_full_blocks``); ``on_unpin`` in sequence order when it is freed.
"""

from __future__ import annotations

import pytest

from kvbench.cache import PrefixCache
from kvbench.cache.lru import LRUPolicy


class Recording(LRUPolicy):
    """``lru`` that writes down every event."""

    def __init__(self) -> None:
        super().__init__()
        self.log: list[tuple] = []

    def on_request(self) -> None:
        self.log.append(("request",))

    def on_insert(self, key, parent) -> None:
        self.log.append(("insert", key, parent))

    def on_access(self, key) -> None:
        self.log.append(("access", key))

    def on_pin(self, key) -> None:
        self.log.append(("pin", key))
        super().on_pin(key)

    def on_unpin(self, keys) -> None:
        self.log.append(("unpin", list(keys)))
        super().on_unpin(keys)

    def victim(self) -> int:
        key = super().victim()
        self.log.append(("victim", key))
        return key

    def take(self) -> list[tuple]:
        log, self.log = self.log, []
        return log


def served(cache, keys):
    adm = cache.admit(keys, len(keys))
    cache.commit(adm)
    cache.release(adm)


def test_blocks_are_taken_and_cached_as_the_request_computes():
    policy = Recording()
    cache = PrefixCache(5, policy, block_size=4)
    served(cache, [1, 2])
    policy.take()
    # a prompt of 3 blocks whose first hits; 5 blocks must fit now (checked), 1 is held (the hit)
    adm = cache.admit([1, 7, 8, 9, 10], 5, max_hit_blocks=2, allocate=0)
    assert (adm.hit_blocks, adm.held_blocks, adm.fresh_blocks) == (1, 1, 0)
    assert policy.take() == [("request",), ("pin", 1), ("access", 1)]
    # first chunk: blocks 1 and 2 computed; 2 is full. One free block is left after it, then block 2 is
    # evicted (the only evictable one) for the third
    assert cache.grow(adm, 3) and cache.free_blocks == 1
    cache.commit(adm, 2)
    assert policy.take() == [("insert", 7, 1)]
    assert adm.pinned == [1, 7] and adm.fresh_blocks == 1 and cache.used_blocks == 4  # 2 is cached, evictable
    assert cache.grow(adm, 4) and cache.free_blocks == 0
    assert policy.take() == []
    assert cache.grow(adm, 5)
    assert policy.take() == [("victim", 2)] and 2 not in cache
    cache.commit(adm, 4)
    cache.commit(adm, 4)  # nothing new: committing is idempotent
    assert policy.take() == [("insert", 8, 7), ("insert", 9, 8)]
    cache.release(adm)
    # the cached blocks in sequence order (lru queues them tail first); the last, never cached, is free
    assert policy.take() == [("unpin", [1, 7, 8, 9])]
    assert policy.order() == [9, 8, 7, 1] and cache.free_blocks == 1


def test_grow_refuses_without_side_effects():
    policy = Recording()
    cache = PrefixCache(4, policy, block_size=4)
    a = cache.admit([1, 2], 2)
    cache.commit(a)
    b = cache.admit([5, 6, 7], 2, allocate=1)  # 2 blocks must fit now, 1 is taken
    assert b is not None and cache.free_blocks == 1
    policy.take()
    before = (cache.used_blocks, cache.evictable_blocks, b.held_blocks)
    assert not cache.grow(b, 3)  # 1 free, nothing evictable: a pins its blocks
    assert (cache.used_blocks, cache.evictable_blocks, b.held_blocks) == before and policy.take() == []
    cache.release(a)
    assert cache.grow(b, 3)
    assert policy.take() == [("unpin", [1, 2]), ("victim", 2)]


def test_readmission_is_neither_announced_nor_counted():
    policy = Recording()
    cache = PrefixCache(8, policy, block_size=4)
    adm = cache.admit([1, 2, 3], 3, query_tokens=13)
    cache.commit(adm)
    cache.release(adm)  # preempted: its blocks stay cached
    policy.take()
    again = cache.admit([1, 2, 3, 4], 4, max_hit_blocks=3, new_request=False)
    assert again.hit_blocks == 3
    assert policy.take() == [("pin", 1), ("access", 1), ("pin", 2), ("access", 2), ("pin", 3), ("access", 3)]
    assert (cache.stats.queries_tokens, cache.stats.hit_tokens) == (13, 0)


def test_a_block_another_request_cached_meanwhile_is_shared():
    # two requests compute the same prompt at once; the second to reach a block shares the first's copy
    # and gives its own back
    cache = PrefixCache(8, Recording(), block_size=4)
    a = cache.admit([1, 2, 3], 3, allocate=2)
    b = cache.admit([1, 2, 3], 3, allocate=2)
    assert cache.free_blocks == 4
    cache.commit(a, 2)
    cache.commit(b, 1)
    assert b.pinned == [1] and b.fresh_blocks == 1 and cache.free_blocks == 5
    assert cache.grow(a, 3) and cache.grow(b, 3)
    cache.commit(a)
    cache.commit(b)
    assert a.pinned == b.pinned == [1, 2, 3] and cache.used_blocks == 3 and cache.free_blocks == 5
    cache.release(b)
    cache.release(a)
    assert cache.evictable_blocks == 3 and cache.policy.order() == [3, 2, 1]


def test_set_aside_takes_blocks_out_of_use():
    cache = PrefixCache(4, Recording(), block_size=4)
    cache.set_aside(1)
    assert cache.capacity_blocks == 3 and cache.free_blocks == 3
    assert cache.admit([1, 2, 3, 4], 4) is None and not cache.fits(4)
    served(cache, [1, 2, 3])
    with pytest.raises(ValueError, match="in use"):
        cache.set_aside(1)
    unbounded = PrefixCache(None, Recording(), block_size=4)
    unbounded.set_aside(1)
    assert unbounded.capacity_blocks is None


def test_released_admission_cannot_grow_or_commit():
    cache = PrefixCache(4, Recording(), block_size=4)
    adm = cache.admit([1, 2], 2, allocate=1)
    cache.release(adm)
    with pytest.raises(ValueError):
        cache.grow(adm, 2)
    with pytest.raises(ValueError):
        cache.commit(adm)
    assert cache.used_blocks == 0


# --- the same events as the vLLM plugin ------------------------------------------------------------------
class _Served:
    """One request of the comparison: its tokens, its vLLM request and its state in the simulator's terms."""

    def __init__(self, i, prompt, outputs, hasher, block):
        from vllm.sampling_params import SamplingParams
        from vllm.v1.request import Request

        from kvbench.hashing import block_hashes

        self.prompt, self.outputs = prompt, outputs
        self.keys = block_hashes(prompt + outputs[:-1], block).tolist()  # what the plugin computes as it goes
        self.req = Request(str(i), prompt, SamplingParams(max_tokens=len(outputs)), None, block_hasher=hasher)
        self.generated = self.computed = 0
        self.adm = None


def _both_ways(name, usable, requests, arrivals, budget, block=4):
    """Serve ``requests`` (prompt, outputs) step by step as kvbench.sim.engine does (running requests in
    admission order, preempting the last admitted; then waiting ones whose whole known sequence fits),
    through a PrefixCache and through vLLM's KVCacheManager with the plugin's pool (``usable`` + 1 blocks:
    one is the null block). Returns both policies' event logs, whether any request computed a block that
    was cached already (a duplicate: the simulator shares it at once, vLLM keeps a second copy; None if
    the two then took different decisions) and how many preemptions there were."""
    import torch
    from vllm.utils.hashing import sha256
    from vllm.v1.core import kv_cache_coordinator
    from vllm.v1.core.kv_cache_utils import get_request_block_hasher, init_none_hash
    from vllm.v1.kv_cache_interface import FullAttentionSpec, KVCacheConfig, KVCacheGroupSpec
    from vllm.v1.request import RequestStatus

    from kvbench.cache import make_policy
    from kvbench.vllm_plugin import PolicyConfig
    from kvbench.vllm_plugin.block_pool import PolicyBlockPool, PolicyKVCacheManager

    init_none_hash(sha256)
    spec = FullAttentionSpec(block_size=block, num_kv_heads=1, head_size=1, dtype=torch.float32)
    config = KVCacheConfig(num_blocks=usable + 1, kv_cache_tensors=[],
                           kv_cache_groups=[KVCacheGroupSpec(["l0"], spec)])
    saved = kv_cache_coordinator.BlockPool, PolicyBlockPool.config
    kv_cache_coordinator.BlockPool, PolicyBlockPool.config = PolicyBlockPool, PolicyConfig(name, seed=1)
    try:
        mgr = PolicyKVCacheManager(config, max_model_len=4096, scheduler_block_size=block,
                                   hash_block_size=block, enable_caching=True)
    finally:
        kv_cache_coordinator.BlockPool, PolicyBlockPool.config = saved
    def listen(policy, log):
        for event in ("on_request", "on_insert", "on_access", "on_pin", "on_unpin", "victim"):
            setattr(policy, event, heard(getattr(policy, event), event, log))

    def heard(method, event, log):
        def call(*args):
            out = method(*args)
            log.append((event, *[list(a) if isinstance(a, (list, tuple)) else a for a in args], out))
            return out
        return call

    logs = ([], [])
    cache = PrefixCache(usable, make_policy(name, seed=1), block)
    listen(mgr.block_pool.policy, logs[0])
    listen(cache.policy, logs[1])
    hasher = get_request_block_hasher(block, sha256)
    todo = [(t, _Served(i, p, o, hasher, block)) for i, (t, (p, o)) in enumerate(zip(arrivals, requests))]
    running, waiting, step, duplicate, preemptions = [], [], 0, False, 0

    def allocate(r, n, lookup=None):
        """vLLM's allocate_slots and the simulator's admit/grow/commit for ``n`` more tokens of ``r``."""
        nonlocal duplicate
        known = len(r.prompt) + r.generated
        if lookup is not None:
            first = r.adm is None
            adm = cache.admit(r.keys, -(-known // block), (known - 1) // block, len(r.prompt), allocate=0,
                              new_request=first)
            blocks, hit, _ = mgr.get_computed_blocks(r.req)
            n = min(known - hit, n)
            got = mgr.allocate_slots(r.req, n, hit, blocks, full_sequence_must_fit=True)
            if (adm is None) != (got is None) or (adm is not None and adm.hit_tokens != hit):
                return None
            if adm is None:
                return False
            r.adm, r.computed, r.req.num_computed_tokens = adm, hit, hit
            r.req.status = RequestStatus.RUNNING
            assert cache.grow(adm, -(-(hit + n) // block))
        else:
            ok = cache.grow(r.adm, -(-(r.computed + n) // block))
            if ok != (mgr.allocate_slots(r.req, n) is not None):
                return None
            if not ok:
                return False
        upto = (r.computed + n) // block
        duplicate |= any(k in cache for k in r.keys[len(r.adm.pinned):upto])
        cache.commit(r.adm, upto)
        return n

    def free(r, status):
        cache.release(r.adm)
        r.req.status = status
        mgr.free(r.req)

    while todo or running or waiting:
        while todo and todo[0][0] <= step:
            waiting.append(todo.pop(0)[1])
        left, batch, preempted, i = budget, [], False, 0
        while i < len(running) and left > 0:
            r = running[i]
            n = allocate(r, min(len(r.prompt) + r.generated - r.computed, left))
            while n is False:
                preempted = True
                preemptions += 1
                victim = running.pop()
                free(victim, RequestStatus.PREEMPTED)
                victim.computed = victim.req.num_computed_tokens = 0
                waiting.insert(0, victim)
                n = allocate(r, min(len(r.prompt) + r.generated - r.computed, left)) if victim is not r else 0
            if n is None:
                return logs, None, preemptions
            if not n:
                break
            batch.append((r, n))
            left -= n
            i += 1
        while not preempted and waiting and left > 0:
            n = allocate(waiting[0], left, lookup=True)
            if n is None:
                return logs, None, preemptions
            if not n:
                break
            running.append(waiting.pop(0))
            batch.append((running[-1], n))
            left -= n
        for r, n in batch:  # the step ends: a request that computed all it knows samples a token
            r.computed += n
            r.req.num_computed_tokens += n
            if r.computed == len(r.prompt) + r.generated:
                r.req.append_output_token_ids(r.outputs[r.generated])
                r.generated += 1
                if r.generated == len(r.outputs):
                    running.remove(r)
                    free(r, RequestStatus.FINISHED_LENGTH_CAPPED)
        step += 1
    return logs, duplicate, preemptions


@pytest.mark.parametrize("name", ["lru", "rlt", "s3fifo"])
def test_the_policy_hears_what_the_vllm_plugin_makes_vllm_say(name):
    """Random workloads with shared prefixes, chunked prefills, long outputs and preemptions: the same
    events in the same order, block keys included (output blocks hashed from their tokens on both sides).
    Workloads where a request computes a block another copy of which is cached are left out: vLLM keeps
    both copies (the plugin tells the policy about the first only), the simulator shares the first."""
    pytest.importorskip("vllm")
    import random

    rng = random.Random(5)
    compared = preempted = 0
    for _ in range(25):
        docs = [[rng.randrange(1000, 30000) for _ in range(rng.randrange(4, 30))] for _ in range(3)]
        requests = []
        for _ in range(rng.randrange(3, 9)):
            doc = docs[rng.randrange(3)]
            tail = [rng.randrange(1000, 30000) for _ in range(rng.randrange(6))]
            outputs = [rng.randrange(30000, 60000) for _ in range(rng.randrange(1, 20))]
            requests.append((doc[: rng.randrange(1, len(doc) + 1)] + tail, outputs))
        need = max(-(-(len(p) + len(o) - 1) // 4) for p, o in requests)
        arrivals = sorted(rng.randrange(15) for _ in requests)
        usable, budget = rng.randrange(need, need + 12), rng.choice([3, 5, 8, 64])
        (heard_vllm, heard_sim), duplicate, preemptions = _both_ways(name, usable, requests, arrivals, budget)
        if duplicate is False:
            assert heard_sim == heard_vllm
            compared += 1
            preempted += preemptions
    assert compared >= 20 and preempted >= 10
