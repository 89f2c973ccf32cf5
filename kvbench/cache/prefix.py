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
from functools import partial
from itertools import takewhile
from operator import is_not

from kvbench.cache.policy import EvictionPolicy

_cached = partial(is_not, None)  # a slot lookup that found the key


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
    cached (yet). ``slots`` is the cache's own: where it keeps each pinned block. A released admission
    holds nothing and keeps no key: ``hash_ids``, ``pinned`` and ``slots`` are emptied, so a finished
    request's keys can be freed."""

    hash_ids: Sequence[int]
    total_blocks: int
    hit_blocks: int
    hit_tokens: int
    pinned: list[int] = field(default_factory=list)
    fresh_blocks: int = 0
    committed: bool = False
    released: bool = False
    slots: list[int] = field(default_factory=list, repr=False)

    @property
    def held_blocks(self) -> int:
        return len(self.pinned) + self.fresh_blocks


class PrefixCache:
    """The tree lives in flat per-slot lists (reference count, cached children, the parent's slot) and one
    dict from key to slot, and a running request keeps the slots of the blocks it pins: a simulation
    touches millions of blocks, and scattered per-block objects (and the garbage collector walking them)
    cost far more than list indexing. Slots of evicted blocks are reused, last freed first."""

    def __init__(self, capacity_blocks: int | None, policy: EvictionPolicy, block_size: int = 16) -> None:
        if capacity_blocks is not None and capacity_blocks < 0:
            raise ValueError("capacity_blocks must be >= 0 or None")
        if block_size <= 0:
            raise ValueError("block_size must be positive")
        self._capacity = capacity_blocks
        self.policy = policy
        self.block_size = block_size
        self._slot: dict[int, int] = {}  # cached key -> slot
        self._ref: list[int] = []  # per slot: running requests pinning the block
        self._kids: list[int] = []  # per slot: cached children
        self._up: list[int] = []  # per slot: the parent's slot, -1 for a first block
        self._spare: list[int] = []  # slots holding no block
        self._evictable = 0
        self._uncached = 0  # fresh blocks held by running requests, not (yet) cached
        self.stats = CacheStats()

    # --- sizes ------------------------------------------------------------------------------
    @property
    def capacity_blocks(self) -> int | None:
        return self._capacity

    @property
    def cached_blocks(self) -> int:
        return len(self._slot)

    @property
    def used_blocks(self) -> int:
        return len(self._slot) + self._uncached

    @property
    def evictable_blocks(self) -> int:
        return self._evictable

    @property
    def free_blocks(self) -> int | None:
        """Never-cached free blocks (None when unbounded); evictable blocks are not counted."""
        if self._capacity is None:
            return None
        return self._capacity - len(self._slot) - self._uncached

    def __contains__(self, key: int) -> bool:
        return key in self._slot

    @property
    def _nodes(self) -> dict[int, tuple[int, int | None, int]]:
        """The tree as key -> (reference count, parent key or None, cached children): a copy, for tests."""
        key_of = {s: k for k, s in self._slot.items()}
        ref, up, kids = self._ref, self._up, self._kids
        return {k: (ref[s], key_of.get(up[s]), kids[s]) for k, s in self._slot.items()}

    def set_aside(self, blocks: int) -> None:
        """Take ``blocks`` blocks out of use for good, as vLLM's pool keeps its null block; only before
        the first request."""
        if self._slot or self._uncached:
            raise ValueError("set_aside on a cache in use")
        if self._capacity is not None:
            self._capacity = max(0, self._capacity - blocks)

    # --- queries ----------------------------------------------------------------------------
    def match(self, hash_ids: Sequence[int]) -> int:
        """How many of ``hash_ids``, from the first, are cached (up to the first that is not)."""
        return len(list(takewhile(self._slot.__contains__, hash_ids)))

    def fits(self, total_blocks: int) -> bool:
        return self._capacity is None or total_blocks <= self._capacity

    # --- request life cycle -----------------------------------------------------------------
    # The policy hears runs of events through its batch calls (kvbench.cache.policy), which stand for
    # the single calls in the same order.
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
        slots = list(takewhile(_cached, map(self._slot.get, hash_ids)))
        hits = len(slots)
        if max_hit_blocks is not None and hits > max_hit_blocks:
            hits = max(max_hit_blocks, 0)
        hits = min(hits, total_blocks)
        del slots[hits:]
        ref = self._ref
        if self._capacity is not None:
            # hit blocks now evictable: pinning them takes them out of the evictable pool
            revivable = list(map(ref.__getitem__, slots)).count(0)
            free = self._capacity - len(self._slot) - self._uncached
            if total_blocks - hits > free + self._evictable - revivable:
                return None

        pinned = list(hash_ids[:hits])
        revived = []
        for key, s in zip(pinned, slots):
            n = ref[s]
            if not n:
                revived.append(key)
            ref[s] = n + 1
        self._evictable -= len(revived)
        policy = self.policy
        if new_request:
            policy.on_request()
        if pinned:
            policy.on_hits(pinned, revived)
        if new_request:
            stats = self.stats
            stats.queries_tokens += len(hash_ids) * self.block_size if query_tokens is None else query_tokens
            stats.hit_tokens += hits * self.block_size
        adm = Admission(hash_ids, total_blocks, hits, hits * self.block_size, pinned, 0, slots=slots)
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
            free = self._capacity - len(self._slot) - self._uncached
            if need > free + self._evictable:
                return False
            if need > free:
                self._evict(need - free)
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
        hash_ids, pinned = adm.hash_ids, adm.pinned
        end = min(len(hash_ids), len(pinned) + adm.fresh_blocks)
        if blocks is not None and blocks < end:
            end = blocks
        start = len(pinned)
        if end <= start:
            return
        keys = hash_ids[start:end]
        parent = pinned[-1] if pinned else None
        if not self._insert_chain(keys, parent, adm.slots):
            self._commit_each(keys, parent, adm.slots)
        pinned += keys
        done = end - start
        adm.fresh_blocks -= done
        self._uncached -= done

    def _insert_chain(self, keys: Sequence[int], parent: int | None, slots: list[int]) -> bool:
        """``commit``'s usual case, in bulk: none of ``keys`` is cached (nor twice among them), so they are
        inserted as a chain under ``parent``; False, changing nothing, otherwise."""
        slot = self._slot
        if any(map(slot.__contains__, keys)):
            return False
        n = len(keys)
        spare = self._spare
        if len(spare) < n:
            self._add_slots(n - len(spare))
        new = spare[-n:]
        cached = len(slot)
        slot.update(zip(keys, new))
        if len(slot) != cached + n:  # a key twice: cached by its first occurrence, shared by the next
            for key in keys:
                slot.pop(key, None)
            return False
        del spare[-n:]
        ref, kids, up = self._ref, self._kids, self._up
        above = slots[-1] if slots else -1
        if above >= 0:
            kids[above] += 1
        for s in new:
            ref[s] = 1
            kids[s] = 1
            up[s] = above
            above = s
        kids[above] = 0
        slots += new
        self._inserted(keys, parent)
        return True

    def _commit_each(self, keys: Sequence[int], parent: int | None, slots: list[int]) -> None:
        """``commit`` block by block: a block another request cached meanwhile is shared (our copy freed),
        the others are inserted; the policy hears each run of either kind in order."""
        slot, ref, kids, up, spare = self._slot, self._ref, self._kids, self._up, self._spare
        if len(spare) < len(keys):
            self._add_slots(len(keys) - len(spare))
        get = slot.get
        above = slots[-1] if slots else -1  # the slot of ``parent``
        run, run_parent, inserting, revived = 0, parent, True, []
        for i, key in enumerate(keys):
            s = get(key)
            if s is None:
                if not inserting:
                    self._shared(keys[run:i], revived)
                    run, run_parent, inserting, revived = i, parent, True, []
                s = spare.pop()
                slot[key] = s
                ref[s] = 1
                kids[s] = 0
                up[s] = above
                if above >= 0:
                    kids[above] += 1
            else:
                if inserting:
                    self._inserted(keys[run:i], run_parent)
                    run, inserting = i, False
                n = ref[s]
                if not n:
                    revived.append(key)
                ref[s] = n + 1
            slots.append(s)
            parent, above = key, s
        if inserting:
            self._inserted(keys[run:], run_parent)
        else:
            self._shared(keys[run:], revived)

    def _inserted(self, keys: Sequence[int], parent: int | None) -> None:
        if keys:
            self.stats.inserted_blocks += len(keys)
            self.policy.on_insert_chain(keys, parent)

    def _shared(self, keys: Sequence[int], revived: list[int]) -> None:
        self._evictable -= len(revived)
        self.policy.on_hits(keys, revived)

    def release(self, adm: Admission) -> None:
        """Request finished (or aborted): unpin its blocks and free its uncached ones."""
        if adm.released:
            raise ValueError("admission already released")
        adm.released = True
        ref = self._ref
        zero: list[int] = []
        for key, s in zip(adm.pinned, adm.slots):
            n = ref[s] - 1
            ref[s] = n
            if not n:
                zero.append(key)
        adm.hash_ids, adm.pinned, adm.slots = (), [], []
        if zero:
            self._evictable += len(zero)
            self.policy.on_unpin(zero)
        self._uncached -= adm.fresh_blocks
        adm.fresh_blocks = 0

    def flush(self) -> int:
        """Drop every evictable block (e.g. between measurements); returns how many left."""
        n = self._evictable
        self._evict(n, count=False)
        return n

    # --- slots ------------------------------------------------------------------------------
    def _add_slots(self, n: int) -> None:
        first = len(self._ref)
        self._ref += [0] * n
        self._kids += [0] * n
        self._up += [-1] * n
        self._spare += range(first + n - 1, first - 1, -1)  # taken from the end: in order

    def _evict(self, n: int, count: bool = True) -> None:
        """Evict the policy's next ``n`` victims, each checked to be an evictable leaf when its turn comes."""
        if n <= 0:
            return
        pop, ref, kids, up, spare = self._slot.pop, self._ref, self._kids, self._up, self._spare
        done = 0
        for key in self.policy.victims(n):
            s = pop(key, None)
            if s is None or ref[s] or kids[s]:
                self._evicted(done, count)
                name = self.policy.name or type(self.policy).__name__
                raise RuntimeError(f"eviction policy {name!r} chose block {key}, which is not an evictable leaf")
            p = up[s]
            if p >= 0:
                kids[p] -= 1
            spare.append(s)
            done += 1
        self._evicted(done, count)
        if done != n:
            name = self.policy.name or type(self.policy).__name__
            raise RuntimeError(f"eviction policy {name!r} gave {done} victims where {n} were asked for")

    def _evicted(self, n: int, count: bool) -> None:
        self._evictable -= n
        if count:
            self.stats.evicted_blocks += n
