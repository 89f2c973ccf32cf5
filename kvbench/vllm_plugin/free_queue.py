"""A drop-in for vLLM's ``FreeKVCacheBlockQueue`` whose cached part is ordered by a kvbench policy.

vLLM keeps every free block in one linked list: never-cached (un-hashed) blocks at the head, cached
blocks behind them in LRU order, and it evicts from the head. Here the un-hashed blocks stay in vLLM's
own list (same order, the null block first, LIFO reuse), while free *cached* blocks live in a dict and
leave only when the policy names them as ``victim()``. So un-hashed blocks are always reused before a
cached block is evicted, exactly as in vLLM, and ``num_free_blocks`` counts both parts.

Which blocks the policy knows is decided by the block pool (``PolicyBlockPool``); the queue only asks.
The pool guarantees that every free block with a hash is one the policy knows, so vLLM's own list
holds un-hashed blocks only: nothing cached is ever evicted without the policy choosing it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from vllm.v1.core.kv_cache_utils import FreeKVCacheBlockQueue, KVCacheBlock

from kvbench.cache.policy import EvictionPolicy

# Why ``iter_blocks_after`` is not offered (vLLM's SimpleCPUOffloadConnector calls it in lazy mode).
# Its contract is "free blocks in eviction order after a cursor block": the connector remembers the
# last block it walked and, each step, copies the next blocks due for eviction to CPU. That needs an
# eviction order fixed in advance and stable between steps (vLLM's LRU list has one). A kvbench policy
# has neither: ``victim()`` decides only when a block is needed (at random for rlt and randomleaf, from
# counters every later event changes for lfu, s3fifo and arc), and the policy interface has no way to
# peek at future victims. Any order we could hand out would make the connector save blocks the policy
# does not evict and lose the ones it does, silently. So the plugin refuses lazy offload at start-up
# (``kvbench.vllm_plugin.guards``), and this method only explains itself if some other caller tries.
NO_EVICTION_ORDER = (
    "a kvbench eviction policy picks each victim when a block is needed, so there is no eviction order "
    "to walk ahead of time"
)


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
        # vLLM's own list, built over every block in id order: the null block (id 0) is its head, so the
        # pool's first popleft() returns it, as vLLM's BlockPool expects.
        self._plain = FreeKVCacheBlockQueue(blocks)
        self._cached: dict[int, KVCacheBlock] = {}

    # num_free_blocks stays exact: every free block is in exactly one of the two parts.
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
        # Un-hashed blocks are reused before any cached block is evicted; the policy is asked only for
        # the rest.
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

    def iter_blocks_after(self, cursor: KVCacheBlock | None) -> Iterator[KVCacheBlock]:
        raise RuntimeError(f"iter_blocks_after (vLLM's lazy CPU offload) is not supported: {NO_EVICTION_ORDER}")
