"""vLLM's ``BlockPool`` with a kvbench eviction policy deciding which free cached block is evicted.

The pool turns vLLM's block operations into the ``EvictionPolicy`` events. Keys are kvbench's own chained
block hashes of the block's token prefix (``kvbench.hashing.block_hashes`` at vLLM's block size), the
very ids a trace carries in ``hash_ids``: so policies that remember evicted keys (ARC's ghosts) see the
same content identity as in the simulator, and a seeded random policy makes the same choices in both.

- ``get_computed_blocks`` of a request (the prefix lookup)   -> ``on_request()``
- ``touch(blocks)`` (prefix hits)                            -> ``on_pin`` if the block was free, ``on_access``
- ``cache_full_blocks`` (a block got its hash)               -> ``on_insert(block, previous block)``
- ``free_blocks`` (tail first, as vLLM orders them)          -> ``on_unpin(keys in sequence order)``
- ``get_new_blocks`` when no un-hashed block is free          -> ``victim()``
- an eviction by any other path, ``reset_prefix_cache``      -> ``on_remove``

vLLM may cache two blocks with the same content (two running requests computed the same prefix at once).
The policy tracks the first; the duplicate is treated like an un-hashed block and reused first.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
from vllm.logger import init_logger
from vllm.v1.core.block_pool import BlockPool
from vllm.v1.core.kv_cache_manager import KVCacheManager
from vllm.v1.core.kv_cache_utils import KVCacheBlock

from kvbench.cache import make_policy
from kvbench.cache.policy import EvictionPolicy
from kvbench.hashing import block_hashes
from kvbench.vllm_plugin.config import PolicyConfig
from kvbench.vllm_plugin.free_queue import PolicyFreeQueue

logger = init_logger("vllm.kvbench_plugin")

MARKER = "kvbench eviction policy"  # `kvbench cluster up` looks for this line in the server log


class PolicyBlockPool(BlockPool):
    """Set ``config`` on the class (``install``) before vLLM builds its pool."""

    config: PolicyConfig | None = None

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.policy: EvictionPolicy | None = None
        if not self.enable_caching or self.config is None:
            return
        cfg = self.config
        self.policy = make_policy(cfg.name, seed=cfg.seed, **cfg.params)
        self._key_of: dict[int, int] = {}  # block id -> policy key, for blocks the policy holds
        self._block_of: dict[int, int] = {}  # policy key -> block id
        self.free_block_queue = PolicyFreeQueue(
            self.blocks, self.policy, self._key_of.__contains__, self._forget_key
        )
        null = self.free_block_queue.popleft()
        assert null is self.null_block, "the null block must come first"
        logger.info(
            "%s %r (seed %d, params %s) manages %d blocks", MARKER, cfg.name, cfg.seed, cfg.params,
            self.num_gpu_blocks - 1,
        )

    def _forget_key(self, key: int) -> int:
        block_id = self._block_of.pop(key)
        del self._key_of[block_id]
        return block_id

    # --- request start ------------------------------------------------------------------------
    def start_request(self) -> None:
        if self.policy is not None:
            self.policy.on_request()

    # --- hits ---------------------------------------------------------------------------------
    def touch(self, blocks: Sequence[KVCacheBlock]) -> None:
        if self.policy is None:
            return super().touch(blocks)
        was_free = [b.ref_cnt == 0 and not b.is_null for b in blocks]
        super().touch(blocks)
        policy, key_of = self.policy, self._key_of
        for block, revived in zip(blocks, was_free):
            key = key_of.get(block.block_id)
            if key is not None:
                if revived:
                    policy.on_pin(key)
                policy.on_access(key)

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
        tokens = np.asarray(request.all_token_ids[: num_full_blocks * block_size], dtype=np.int64)
        keys = block_hashes(tokens, block_size).tolist()
        policy, key_of, block_of = self.policy, self._key_of, self._block_of
        parent = keys[num_cached_blocks - 1] if num_cached_blocks > 0 else None
        if parent is not None and parent not in block_of:
            parent = None
        for i in range(num_cached_blocks, num_full_blocks):
            block, key = blocks[i], keys[i]
            if block.is_null or block.block_hash is None:
                parent = None
                continue
            if block.block_id not in key_of and key not in block_of:
                key_of[block.block_id] = key
                block_of[key] = block.block_id
                policy.on_insert(key, parent)
            parent = key if block_of.get(key) is not None else None

    # --- releases -----------------------------------------------------------------------------
    def free_blocks(self, ordered_blocks: Iterable[KVCacheBlock]) -> None:
        if self.policy is None:
            return super().free_blocks(ordered_blocks)
        ordered = list(ordered_blocks)
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

    # --- removals outside victim() ------------------------------------------------------------
    def _maybe_evict_cached_block(self, block: KVCacheBlock) -> bool:
        if self.policy is not None and block.block_id in self._key_of:
            key = self._key_of[block.block_id]
            self.policy.on_remove(key)
            if block.ref_cnt == 0:
                self.free_block_queue.uncache(block)
            self._forget_key(key)
        return super()._maybe_evict_cached_block(block)

    def reset_prefix_cache(self) -> bool:
        if not super().reset_prefix_cache():
            return False
        if self.policy is not None:
            self.policy.clear(sorted(self._block_of))
            self.free_block_queue.uncache_all()
            self._key_of.clear()
            self._block_of.clear()
        return True


class PolicyKVCacheManager(KVCacheManager):
    """Tells the pool where a request starts (RLT marks each request's path)."""

    def get_computed_blocks(self, request):
        pool = self.block_pool
        if isinstance(pool, PolicyBlockPool):
            pool.start_request()
        return super().get_computed_blocks(request)


def install(config: PolicyConfig) -> None:
    """Make vLLM build ``PolicyBlockPool`` / ``PolicyKVCacheManager`` (idempotent)."""
    import vllm.v1.core.kv_cache_coordinator as coordinator
    from vllm.v1.core.sched import scheduler

    PolicyBlockPool.config = config
    coordinator.BlockPool = PolicyBlockPool
    scheduler.KVCacheManager = PolicyKVCacheManager
