"""A drop-in for vLLM's ``FreeKVCacheBlockQueue`` whose cached part is ordered by a kvbench policy.

vLLM keeps every free block in one linked list: never-cached (un-hashed) blocks at the head, cached
blocks behind them in LRU order, and it evicts from the head. Here the un-hashed blocks stay in vLLM's
own list (same order, the null block first, LIFO reuse), while free *cached* blocks live in a dict and
leave only when the policy names them as ``victim()``. So un-hashed blocks are always reused before a
cached block is evicted, exactly as in vLLM, and ``num_free_blocks`` counts both parts.

Which blocks the policy knows is decided by the block pool (``PolicyBlockPool``); the queue only asks.
"""

from __future__ import annotations

from collections.abc import Callable

from vllm.v1.core.kv_cache_utils import FreeKVCacheBlockQueue, KVCacheBlock

from kvbench.cache.policy import EvictionPolicy


class PolicyFreeQueue:
    def __init__(
        self,
        blocks: list[KVCacheBlock],
        policy: EvictionPolicy,
        is_known: Callable[[int], bool],
        forget: Callable[[int], int],
    ) -> None:
        self.policy = policy
        self._is_known = is_known  # block id -> is it cached and held by the policy?
        self._forget = forget  # policy key the policy just gave up as a victim -> its block id
        self._plain = FreeKVCacheBlockQueue(blocks)
        self._cached: dict[int, KVCacheBlock] = {}

    @property
    def num_free_blocks(self) -> int:
        return self._plain.num_free_blocks + len(self._cached)

    @property
    def num_free_cached_blocks(self) -> int:
        return len(self._cached)

    def popleft(self) -> KVCacheBlock:
        if self.num_free_blocks == 0:
            raise ValueError("No free blocks available")
        return self.popleft_n(1)[0]

    def popleft_n(self, n: int) -> list[KVCacheBlock]:
        if n == 0:
            return []
        if n > self.num_free_blocks:
            raise ValueError(f"Cannot pop {n} blocks: only {self.num_free_blocks} are free")
        take = min(n, self._plain.num_free_blocks)
        out = self._plain.popleft_n(take) if take else []
        for _ in range(n - take):
            key = self.policy.victim()
            try:
                block = self._cached.pop(self._forget(key))
            except KeyError:
                raise RuntimeError(
                    f"kvbench eviction policy {self.policy.name!r} chose block {key}, which is not a free "
                    "cached block of this vLLM block pool"
                ) from None
            out.append(block)
        return out

    def remove(self, block: KVCacheBlock) -> None:
        if self._cached.pop(block.block_id, None) is None:
            self._plain.remove(block)

    def append(self, block: KVCacheBlock) -> None:
        self.append_n([block])

    def append_n(self, blocks: list[KVCacheBlock]) -> None:
        self._plain.append_n(self._take_cached(blocks))

    def prepend_n(self, blocks: list[KVCacheBlock]) -> None:
        self._plain.prepend_n(self._take_cached(blocks))

    def _take_cached(self, blocks: list[KVCacheBlock]) -> list[KVCacheBlock]:
        """Keep the policy's blocks aside; return the un-hashed rest, in order, for vLLM's own list."""
        plain = []
        for block in blocks:
            if self._is_known(block.block_id):
                self._cached[block.block_id] = block
            else:
                plain.append(block)
        return plain

    def uncache(self, block: KVCacheBlock) -> None:
        """``block`` lost its hash while free (reset, external eviction): it joins the un-hashed part."""
        if self._cached.pop(block.block_id, None) is not None:
            self._plain.append(block)

    def uncache_all(self) -> None:
        blocks = [self._cached[k] for k in sorted(self._cached)]
        self._cached.clear()
        self._plain.append_n(blocks)

    def get_all_free_blocks(self) -> list[KVCacheBlock]:
        return self._plain.get_all_free_blocks() + list(self._cached.values())
