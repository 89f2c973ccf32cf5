"""A block-tree prefix cache with a fixed capacity in blocks, driven by one eviction policy.

It models vLLM v1's block pool at the level the policies care about: a request's prompt is a chain of
block keys (equal key = equal prefix), a hit is the longest cached prefix, blocks in use by a running
request are pinned, and fresh blocks come from free (never cached) memory first and from evicting
cached blocks second. Every ancestor of a pinned block is pinned too, because a request pins its
whole path.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from kvbench.cache.policy import EvictionPolicy

# node layout (a list is cheaper than an object on the hot path)
_REF, _PARENT, _KIDS = 0, 1, 2


@dataclass(slots=True)
class CacheStats:
    queries_tokens: int = 0
    hit_tokens: int = 0
    inserted_blocks: int = 0
    evicted_blocks: int = 0

    @property
    def hit_rate(self) -> float:
        return self.hit_tokens / self.queries_tokens if self.queries_tokens else 0.0


@dataclass(slots=True)
class Admission:
    """What one running request holds: pinned cached blocks (in sequence order) and fresh blocks."""

    hash_ids: Sequence[int]
    total_blocks: int
    hit_blocks: int
    hit_tokens: int
    pinned: list[int] = field(default_factory=list)
    fresh_blocks: int = 0
    committed: bool = False
    released: bool = False


class PrefixCache:
    def __init__(self, capacity_blocks: int | None, policy: EvictionPolicy, block_size: int = 16) -> None:
        if capacity_blocks is not None and capacity_blocks < 0:
            raise ValueError("capacity_blocks must be >= 0 or None")
        if block_size <= 0:
            raise ValueError("block_size must be positive")
        self._capacity = capacity_blocks
        self.policy = policy
        self.block_size = block_size
        self._nodes: dict[int, list] = {}
        self._evictable = 0
        self._uncached = 0  # fresh blocks held by running requests, not (yet) cached
        self.stats = CacheStats()

    # --- sizes ------------------------------------------------------------------------------
    @property
    def capacity_blocks(self) -> int | None:
        return self._capacity

    @property
    def cached_blocks(self) -> int:
        return len(self._nodes)

    @property
    def used_blocks(self) -> int:
        return len(self._nodes) + self._uncached

    @property
    def evictable_blocks(self) -> int:
        return self._evictable

    @property
    def free_blocks(self) -> int | None:
        """Never-cached free blocks (None when unbounded); evictable blocks are not counted."""
        if self._capacity is None:
            return None
        return self._capacity - len(self._nodes) - self._uncached

    def __contains__(self, key: int) -> bool:
        return key in self._nodes

    # --- queries ----------------------------------------------------------------------------
    def match(self, hash_ids: Sequence[int]) -> int:
        nodes = self._nodes
        n = 0
        for key in hash_ids:
            if key not in nodes:
                break
            n += 1
        return n

    def fits(self, total_blocks: int) -> bool:
        return self._capacity is None or total_blocks <= self._capacity

    # --- request life cycle -----------------------------------------------------------------
    def admit(
        self,
        hash_ids: Sequence[int],
        total_blocks: int,
        max_hit_blocks: int | None = None,
        query_tokens: int | None = None,
    ) -> Admission | None:
        """Start a request's prefill; None (and no side effects) if memory is short right now."""
        nodes = self._nodes
        hits = self.match(hash_ids)
        if max_hit_blocks is not None and hits > max_hit_blocks:
            hits = max(max_hit_blocks, 0)
        hits = min(hits, total_blocks)
        fresh = total_blocks - hits
        if self._capacity is not None:
            revived = 0  # hit blocks now evictable: pinning them takes them out of the evictable pool
            for i in range(hits):
                if nodes[hash_ids[i]][_REF] == 0:
                    revived += 1
            free = self._capacity - len(nodes) - self._uncached
            if fresh > free + self._evictable - revived:
                return None

        policy = self.policy
        policy.on_request()
        pinned = list(hash_ids[:hits])
        for key in pinned:
            node = nodes[key]
            if node[_REF] == 0:
                self._evictable -= 1
                policy.on_pin(key)
            node[_REF] += 1
            policy.on_access(key)
        if self._capacity is not None:
            short = fresh - (self._capacity - len(nodes) - self._uncached)
            for _ in range(short):
                self._evict_one()
        self._uncached += fresh
        stats = self.stats
        stats.queries_tokens += len(hash_ids) * self.block_size if query_tokens is None else query_tokens
        stats.hit_tokens += hits * self.block_size
        return Admission(hash_ids, total_blocks, hits, hits * self.block_size, pinned, fresh)

    def commit(self, adm: Admission) -> None:
        """Prefill done: the request's full prompt blocks that are not cached yet become cached."""
        if adm.committed or adm.released:
            raise ValueError("admission already committed or released")
        adm.committed = True
        nodes, policy, hash_ids = self._nodes, self.policy, adm.hash_ids
        end = min(len(hash_ids), adm.total_blocks)
        parent = hash_ids[adm.hit_blocks - 1] if adm.hit_blocks else None
        pinned = adm.pinned
        for i in range(adm.hit_blocks, end):
            key = hash_ids[i]
            node = nodes.get(key)
            if node is None:
                nodes[key] = [1, parent, 0]
                if parent is not None:
                    nodes[parent][_KIDS] += 1
                policy.on_insert(key, parent)
                self.stats.inserted_blocks += 1
            else:
                # another request cached the same prefix meanwhile: share it, free our copy
                if node[_REF] == 0:
                    self._evictable -= 1
                    policy.on_pin(key)
                node[_REF] += 1
                policy.on_access(key)
            pinned.append(key)
            parent = key
        done = end - adm.hit_blocks if end > adm.hit_blocks else 0
        adm.fresh_blocks -= done
        self._uncached -= done

    def release(self, adm: Admission) -> None:
        """Request finished (or aborted): unpin its blocks and free its uncached ones."""
        if adm.released:
            raise ValueError("admission already released")
        adm.released = True
        nodes = self._nodes
        zero: list[int] = []
        for key in adm.pinned:
            node = nodes[key]
            node[_REF] -= 1
            if node[_REF] == 0:
                zero.append(key)
        if zero:
            self._evictable += len(zero)
            self.policy.on_unpin(zero)
        self._uncached -= adm.fresh_blocks
        adm.fresh_blocks = 0

    def flush(self) -> int:
        """Drop every evictable block (e.g. between measurements); returns how many left."""
        n = 0
        while self._evictable:
            self._evict_one(count=False)
            n += 1
        return n

    def _evict_one(self, count: bool = True) -> None:
        key = self.policy.victim()
        node = self._nodes.pop(key, None)
        if node is None or node[_REF] or node[_KIDS]:
            name = self.policy.name or type(self.policy).__name__
            raise RuntimeError(f"eviction policy {name!r} chose block {key}, which is not an evictable leaf")
        parent = node[_PARENT]
        if parent is not None:
            self._nodes[parent][_KIDS] -= 1
        self._evictable -= 1
        if count:
            self.stats.evicted_blocks += 1
