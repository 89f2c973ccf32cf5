"""vLLM's ``BlockPool`` with a kvbench eviction policy deciding which free cached block is evicted.

The pool turns vLLM's block operations into the ``EvictionPolicy`` events. Keys are kvbench's own chained
block hashes of the block's token prefix (``kvbench.hashing.block_hashes`` at vLLM's block size), the
very ids a trace carries in ``hash_ids``: so policies that remember evicted keys (ARC's ghosts) see the
same content identity as in the simulator, and a seeded random policy makes the same choices in both.
A request with a cache salt or a LoRA adapter chains the same hashes from a seed derived from them
(:func:`key_seed`), so, as in vLLM, it never shares a key with a request that lacks either.

- a request's first successful ``allocate_slots`` (plain or       -> ``on_request()``, once per request, before
  KV-connector admission alike)                                       its hits, evictions and inserts
- ``touch(blocks)`` (prefix hits)                                  -> ``on_pin`` if the block was free, ``on_access``
- ``cache_full_blocks`` (a block got its hash)                     -> ``on_insert(block, previous block)``
- ``free_blocks`` (tail first, as vLLM orders them)                -> ``on_unpin(keys in sequence order)``
- ``get_new_blocks`` when no un-hashed block is free                -> ``victim()``
- an eviction by any other path, ``reset_prefix_cache``            -> ``on_remove``

Every free block that has a hash is held by the policy, so vLLM's own free list holds un-hashed blocks
only. The one case vLLM creates outside this rule is a duplicate: two running requests computed the same
prefix at once and both cached it. The first copy is the policy's; the second stays hashed while in use
and, when its last user frees it, either takes over (the first copy is gone meanwhile) or gives up its
hash, as the simulator frees such a copy at once. Models whose KV cache is not one full-attention group,
and vLLM's lazy CPU offload, are refused at start-up (``kvbench.vllm_plugin.guards``).
"""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Iterable, Sequence

import numpy as np
from vllm.logger import init_logger
from vllm.v1.core.block_pool import BlockPool
from vllm.v1.core.kv_cache_manager import KVCacheManager
from vllm.v1.core.kv_cache_utils import KVCacheBlock

from kvbench.cache import make_policy
from kvbench.cache.policy import EvictionPolicy
from kvbench.hashing import block_content_hashes, chain
from kvbench.vllm_plugin.config import POLICY_MARKER, PolicyConfig
from kvbench.vllm_plugin.free_queue import PolicyFreeQueue

logger = init_logger("vllm.kvbench_plugin")


_MASK64 = (1 << 64) - 1


def key_seed(request) -> int:
    """0 for a plain request (keys byte-identical to ``kvbench.hashing.block_hashes``); otherwise a stable
    64-bit seed from the cache salt and the LoRA adapter's name and path (the LoRA identity vLLM hashes).
    """
    salt = request.cache_salt or None  # vLLM ignores an empty salt too
    lora = request.lora_request
    if salt is None and lora is None:
        return 0
    ident = ("kvbench policy key", salt, None if lora is None else (lora.lora_name, lora.lora_path))
    seed = int.from_bytes(hashlib.blake2b(repr(ident).encode(), digest_size=8).digest(), "little")
    return seed or 1


def policy_keys(request, num_blocks: int, block_size: int) -> list[int]:
    """Policy keys of the request's first ``num_blocks`` full blocks."""
    tokens = np.asarray(request.all_token_ids[: num_blocks * block_size], dtype=np.int64)
    return chain(block_content_hashes(tokens, block_size), key_seed(request)).tolist()


def _variant(key: int) -> int:
    """Another int64 key derived from ``key`` (splitmix64 step), for two different vLLM hashes that
    share a kvbench key (features the key does not see, such as multimodal inputs)."""
    x = (key + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    x ^= x >> 31
    return x - (1 << 64) if x >> 63 else x


class PolicyBlockPool(BlockPool):
    """Set ``config`` on the class (``install``) before vLLM builds its pool.

    Only the pool of the scheduler's own ``PolicyKVCacheManager`` runs the policy; any other pool built
    through vLLM's coordinator (a KV connector's CPU tier) stays a plain vLLM pool.
    """

    config: PolicyConfig | None = None
    _building_for_manager = False  # set by PolicyKVCacheManager while it builds its coordinator

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.policy: EvictionPolicy | None = None
        if not self.enable_caching or self.config is None or not PolicyBlockPool._building_for_manager:
            return
        cfg = self.config
        self.policy = make_policy(cfg.name, seed=cfg.seed, **cfg.params)
        self._key_of: dict[int, int] = {}  # block id -> policy key, for blocks the policy holds
        self._block_of: dict[int, int] = {}  # policy key -> block id
        self._holder: dict = {}  # vLLM block hash -> id of the block the policy holds for it
        self._duplicates: dict[int, int] = {}  # block id -> its key, for in-use second copies
        self._request_pending = False  # an admitted request's on_request() is due before its first event
        self.free_block_queue = PolicyFreeQueue(
            self.blocks, self.policy, self._key_of.__contains__, self._forget_key
        )
        null = self.free_block_queue.popleft()
        assert null is self.null_block, "the null block must come first"
        logger.info(
            "%s %r (seed %d, params %s) manages %d blocks", POLICY_MARKER, cfg.name, cfg.seed, cfg.params,
            self.num_gpu_blocks - 1,
        )

    def _hold(self, block: KVCacheBlock, key: int) -> None:
        self._key_of[block.block_id] = key
        self._block_of[key] = block.block_id
        self._holder[block.block_hash] = block.block_id

    def _forget_key(self, key: int) -> int:
        block_id = self._block_of.pop(key)
        del self._key_of[block_id]
        self._holder.pop(self.blocks[block_id].block_hash, None)
        return block_id

    def _unused_key(self, key: int) -> int:
        while key in self._block_of:
            key = _variant(key)
        return key

    # --- request start ------------------------------------------------------------------------
    def expect_request(self) -> None:
        """A new request is being admitted: its on_request() precedes the pool's next operation."""
        self._request_pending = True

    def _start_pending_request(self) -> None:
        if self._request_pending:
            self._request_pending = False
            self.policy.on_request()

    def end_admission(self) -> bool:
        """The admission call returned; True if no pool operation consumed the pending on_request()."""
        pending, self._request_pending = self._request_pending, False
        return pending

    # --- hits ---------------------------------------------------------------------------------
    def touch(self, blocks: Sequence[KVCacheBlock]) -> None:
        if self.policy is None:
            return super().touch(blocks)
        self._start_pending_request()
        was_free = [b.ref_cnt == 0 and not b.is_null for b in blocks]
        super().touch(blocks)
        policy, key_of = self.policy, self._key_of
        for block, revived in zip(blocks, was_free):
            key = key_of.get(block.block_id)
            if key is not None:
                if revived:
                    policy.on_pin(key)
                policy.on_access(key)

    # --- allocation ---------------------------------------------------------------------------
    def get_new_blocks(self, num_blocks: int) -> list[KVCacheBlock]:
        if self.policy is not None:
            self._start_pending_request()  # the simulator announces a request before evicting for it
        return super().get_new_blocks(num_blocks)

    # --- inserts ------------------------------------------------------------------------------
    def cache_full_blocks(
        self,
        request,
        blocks: list[KVCacheBlock],
        num_cached_blocks: int,
        num_full_blocks: int,
        block_size: int,
        kv_cache_group_id: int,
        block_mask: list[bool] | None = None,
    ) -> None:
        super().cache_full_blocks(
            request, blocks, num_cached_blocks, num_full_blocks, block_size, kv_cache_group_id, block_mask
        )
        if self.policy is None or num_cached_blocks >= num_full_blocks:
            return
        self._start_pending_request()
        keys = policy_keys(request, num_full_blocks, block_size)
        policy, key_of, holder = self.policy, self._key_of, self._holder
        for i in range(num_cached_blocks, num_full_blocks):
            block = blocks[i]
            if block.is_null or block.block_hash is None or block.block_id in key_of:
                continue
            if block.block_hash in holder:
                # vLLM cached this content twice (two requests computed it at once). The policy keeps the
                # first copy, the one vLLM's lookup returns; this one is settled when it is freed.
                self._duplicates[block.block_id] = keys[i]
                continue
            key = self._unused_key(keys[i])
            # The parent is the block this request holds before this one, so it stays pinned as long as
            # the request pins this block: eviction stays leaf-first (None if the policy does not hold it).
            parent = key_of.get(blocks[i - 1].block_id) if i > 0 else None
            self._hold(block, key)
            policy.on_insert(key, parent)

    # --- releases -----------------------------------------------------------------------------
    def free_blocks(self, ordered_blocks: Iterable[KVCacheBlock]) -> None:
        if self.policy is None:
            return super().free_blocks(ordered_blocks)
        ordered = list(ordered_blocks)
        if self._duplicates:
            self._settle_duplicates(ordered)
        super().free_blocks(ordered)
        key_of = self._key_of
        released = [
            key_of[b.block_id]
            for b in ordered
            if (b.pool is None or b.pool is self) and b.ref_cnt == 0 and b.block_id in key_of
        ]
        if released:
            released.reverse()  # vLLM frees tail first; the policy wants sequence order
            self.policy.on_unpin(released)

    def _settle_duplicates(self, ordered: list[KVCacheBlock]) -> None:
        """Duplicate copies whose last user frees them now must not enter vLLM's list with a hash."""
        left: dict[int, int] = {}
        for b in ordered:
            if (b.pool is None or b.pool is self) and b.block_id in self._duplicates:
                left[b.block_id] = left.get(b.block_id, b.ref_cnt) - 1
        for block_id, users in left.items():
            if users > 0:
                continue
            block = self.blocks[block_id]
            key = self._duplicates.pop(block_id)
            first = self.cached_block_hash_to_block.get_one_block(block.block_hash)
            if block.block_hash not in self._holder and first is block:
                # The policy's copy was evicted while this one was in use, and vLLM's lookup now returns
                # this one: the policy takes it over (inserted while still pinned, unpinned just below).
                # No parent: whoever pinned it may hold a different copy of the previous block.
                key = self._unused_key(key)
                self._hold(block, key)
                self.policy.on_insert(key, None)
            else:
                # Redundant: the content stays cached in the copy vLLM's lookup returns. Drop this copy's
                # hash, so it is an un-hashed block, reused first, as the simulator frees such a copy.
                BlockPool._maybe_evict_cached_block(self, block)

    # --- removals outside victim() ------------------------------------------------------------
    def _maybe_evict_cached_block(self, block: KVCacheBlock) -> bool:
        if self.policy is not None:
            if block.block_id in self._key_of:
                key = self._key_of[block.block_id]
                self.policy.on_remove(key)
                if block.ref_cnt == 0:
                    self.free_block_queue.uncache(block)
                self._forget_key(key)
            else:
                self._duplicates.pop(block.block_id, None)
        return super()._maybe_evict_cached_block(block)

    def reset_prefix_cache(self) -> bool:
        if not super().reset_prefix_cache():
            return False
        if self.policy is not None:
            self.policy.clear(sorted(self._block_of))
            self.free_block_queue.uncache_all()
            self._key_of.clear()
            self._block_of.clear()
            self._holder.clear()
            self._duplicates.clear()
        return True


_MANAGER_SIGNATURE = inspect.signature(KVCacheManager.__init__)


class PolicyKVCacheManager(KVCacheManager):
    """Builds the policy's pool (refusing models it cannot govern) and tells it where requests start."""

    def __init__(self, kv_cache_config, *args, **kwargs) -> None:
        config = PolicyBlockPool.config
        bound = _MANAGER_SIGNATURE.bind(self, kv_cache_config, *args, **kwargs)
        bound.apply_defaults()
        if config is not None and bound.arguments["enable_caching"]:
            from kvbench.vllm_plugin.guards import refuse_unsupported_model

            refuse_unsupported_model(kv_cache_config, config.name)
        PolicyBlockPool._building_for_manager = True
        try:
            super().__init__(kv_cache_config, *args, **kwargs)
        finally:
            PolicyBlockPool._building_for_manager = False
        self._admitted: set[str] = set()  # ids of requests the policy has been told about

    def _policy_pool(self) -> PolicyBlockPool | None:
        pool = self.block_pool
        return pool if isinstance(pool, PolicyBlockPool) and pool.policy is not None else None

    def allocate_slots(self, request, *args, **kwargs):
        # Both the plain path and the KV-connector path (external hits, delay_cache_blocks) admit a
        # request here, whatever lookups came before (a connector may make the scheduler look a request
        # up many times). on_request() is sent once per request, when its first allocation succeeds, and
        # before that allocation touches the policy: as kvbench's simulator announces an admitted request.
        pool = self._policy_pool()
        if pool is None or request.request_id in self._admitted:
            return super().allocate_slots(request, *args, **kwargs)
        pool.expect_request()
        try:
            blocks = super().allocate_slots(request, *args, **kwargs)
        finally:
            pending = pool.end_admission()
        if blocks is not None or not pending:
            if pending:
                pool.policy.on_request()  # admitted without a hit, an eviction or an insert
            self._admitted.add(request.request_id)
        return blocks

    def free(self, request) -> None:
        super().free(request)
        self._finished(request)

    def pop_blocks_for_free(self, request):
        blocks = super().pop_blocks_for_free(request)
        self._finished(request)
        return blocks

    def _finished(self, request) -> None:
        # A preempted request (or one whose KV load failed) is freed but comes back: it stays admitted.
        if request.is_finished():
            self._admitted.discard(request.request_id)


def install(config: PolicyConfig) -> None:
    """Make vLLM build ``PolicyBlockPool`` / ``PolicyKVCacheManager`` (idempotent)."""
    import vllm.v1.core.kv_cache_coordinator as coordinator
    from vllm.v1.core.sched import scheduler

    from kvbench.vllm_plugin.guards import checked_connector_factory

    PolicyBlockPool.config = config
    coordinator.BlockPool = PolicyBlockPool
    scheduler.KVCacheManager = PolicyKVCacheManager
    scheduler.KVConnectorFactory = checked_connector_factory(
        scheduler.KVConnectorFactory, lambda: None if PolicyBlockPool.config is None else PolicyBlockPool.config.name)
