"""A block-tree prefix cache with a fixed capacity in blocks, driven by one eviction policy.

It models vLLM v1's block pool at the level the policies care about: a request's sequence is a chain of
block keys (equal key = equal prefix), a hit is the longest cached prefix, blocks in use by a running
request are pinned, and fresh blocks come from free (never cached) memory first and from evicting
cached blocks second. Every ancestor of a pinned block is pinned too, because a request pins its
whole path.

A request holds blocks as vLLM's ``KVCacheManager.allocate_slots`` gives them: ``admit`` pins its hit
(after checking that the blocks it must be able to hold fit), ``grow`` adds blocks as its computed
tokens need them, ``commit`` caches its full blocks in order as they are computed (prompt blocks chunk
by chunk, output blocks as decoding fills them) and ``release`` frees everything, cached blocks staying
cached and evictable. The policy hears what the kvbench vLLM plugin makes vLLM's pool tell it, in the
same order (kvbench/cache/policy.py).
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
    """What one running request holds: its first ``len(pinned)`` blocks are cached and pinned (keys in
    sequence order, ``pinned == hash_ids[:len(pinned)]``), the next ``fresh_blocks`` are its own, not
    cached (yet)."""

    hash_ids: Sequence[int]
    total_blocks: int
    hit_blocks: int
    hit_tokens: int
    pinned: list[int] = field(default_factory=list)
    fresh_blocks: int = 0
    committed: bool = False
    released: bool = False

    @property
    def held_blocks(self) -> int:
        return len(self.pinned) + self.fresh_blocks


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

    def set_aside(self, blocks: int) -> None:
        """Take ``blocks`` blocks out of use for good, as vLLM's pool keeps its null block; only before
        the first request."""
        if self._nodes or self._uncached:
            raise ValueError("set_aside on a cache in use")
        if self._capacity is not None:
            self._capacity = max(0, self._capacity - blocks)

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
        *,
        allocate: int | None = None,
        new_request: bool = True,
    ) -> Admission | None:
        """Start (or, after a preemption, restart) a request; None, with no side effects, when its
        ``total_blocks`` do not fit now.

        The hit is the longest cached prefix of ``hash_ids``, at most ``max_hit_blocks`` blocks. The
        request then holds its hit and fresh blocks up to ``allocate`` blocks in all (default
        ``total_blocks``; ``grow`` adds the rest later). ``new_request=False`` re-admits a preempted
        request: vLLM neither announces it to the policy again nor counts its lookup as a query.
        """
        nodes = self._nodes
        hits = self.match(hash_ids)
        if max_hit_blocks is not None and hits > max_hit_blocks:
            hits = max(max_hit_blocks, 0)
        hits = min(hits, total_blocks)
        if self._capacity is not None:
            revived = 0  # hit blocks now evictable: pinning them takes them out of the evictable pool
            for i in range(hits):
                if nodes[hash_ids[i]][_REF] == 0:
                    revived += 1
            free = self._capacity - len(nodes) - self._uncached
            if total_blocks - hits > free + self._evictable - revived:
                return None

        policy = self.policy
        if new_request:
            policy.on_request()
        pinned = list(hash_ids[:hits])
        for key in pinned:
            node = nodes[key]
            if node[_REF] == 0:
                self._evictable -= 1
                policy.on_pin(key)
            node[_REF] += 1
            policy.on_access(key)
        if new_request:
            stats = self.stats
            stats.queries_tokens += len(hash_ids) * self.block_size if query_tokens is None else query_tokens
            stats.hit_tokens += hits * self.block_size
        adm = Admission(hash_ids, total_blocks, hits, hits * self.block_size, pinned, 0)
        self.grow(adm, total_blocks if allocate is None else min(allocate, total_blocks))
        return adm

    def grow(self, adm: Admission, blocks: int) -> bool:
        """Let the request hold ``blocks`` blocks in all, taking free blocks first and evicting for the
        rest; False, with no side effects, when free and evictable blocks are too few."""
        need = blocks - len(adm.pinned) - adm.fresh_blocks
        if need <= 0:
            return True
        if adm.released:
            raise ValueError("admission already released")
        if self._capacity is not None:
            free = self._capacity - len(self._nodes) - self._uncached
            if need > free + self._evictable:
                return False
            for _ in range(need - free):
                self._evict_one()
        self._uncached += need
        adm.fresh_blocks += need
        return True

    def commit(self, adm: Admission, blocks: int | None = None) -> None:
        """Cache the request's first ``blocks`` blocks (default: every block it holds that has a key)
        that are not cached yet: each is full and computed (vLLM caches a block when the step computing
        its last token is scheduled). Blocks are cached in sequence order, so a block's parent, the
        request's previous block, is cached and pinned by the request whenever the block is."""
        if adm.released:
            raise ValueError("admission already released")
        adm.committed = True
        nodes, policy, hash_ids, pinned = self._nodes, self.policy, adm.hash_ids, adm.pinned
        end = min(len(hash_ids), len(pinned) + adm.fresh_blocks)
        if blocks is not None and blocks < end:
            end = blocks
        start = len(pinned)
        if end <= start:
            return
        parent = pinned[-1] if pinned else None
        for i in range(start, end):
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
        done = end - start
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
