"""``lru``: vLLM v1's free-block queue order.

vLLM appends a block to the tail of its free queue when its reference count drops to 0, frees a
request's blocks in reverse order (so its tail blocks come first), takes a block that gets hit out of
the queue, and evicts from the head. Because a descendant's count always reaches 0 no later than its
ancestor's, this order is leaf-first by construction.

The queue is kept as the runs ``on_unpin`` appended (one request's blocks each, tail first), consumed
from the head: freeing and evicting cost no per-block bookkeeping. A block taken out of the queue by a
hit stays in its run as a stale entry, counted per key until the head passes it (its live entry, if it
is freed again, is always the later one); the queue is rebuilt from its live entries when stale ones
outnumber them.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence
from itertools import compress, islice
from operator import not_

from kvbench.cache.policy import EvictionPolicy


class LRUPolicy(EvictionPolicy):
    name = "lru"

    def __init__(self) -> None:
        self._runs: deque[list[int]] = deque()  # the queue, oldest run first
        self._at = 0  # entries of _runs[0] before this one are consumed
        self._entries = 0  # entries not consumed, stale ones included
        self._live = 0  # evictable blocks: entries that are not stale
        self._stale: dict[int, int] = {}  # key -> how many of its entries ahead are stale

    def on_insert(self, key: int, parent: int | None) -> None:
        pass

    def on_access(self, key: int) -> None:
        pass

    def on_pin(self, key: int) -> None:
        self._unqueue((key,))

    def on_unpin(self, keys: Sequence[int]) -> None:
        if keys:
            self._runs.append(list(reversed(keys)))
            self._entries += len(keys)
            self._live += len(keys)

    def victim(self) -> int:
        return self._take(1)[0]

    def on_remove(self, key: int) -> None:
        if self._queued(key):
            self._unqueue((key,))

    def clear(self, keys: Iterable[int] = ()) -> None:
        gone = set(keys)
        self._rebuild([key for key in self.order() if key not in gone])

    def evictable_count(self) -> int:
        return self._live

    def order(self) -> list[int]:
        """Evictable keys, next victim first (for tests and the vLLM adapter)."""
        stale = dict(self._stale)
        out = []
        for key in self._ahead():
            n = stale.get(key)
            if n:
                stale[key] = n - 1
            else:
                out.append(key)
        return out

    # --- batch calls (kvbench.cache.policy): whole runs at a time ------------------------------------
    def victims(self, n: int) -> Iterable[int]:
        if self._replaced(LRUPolicy, "victim"):
            return super().victims(n)
        return self._take(n)

    def on_insert_chain(self, keys: Sequence[int], parent: int | None) -> None:
        if self._replaced(LRUPolicy, "on_insert"):
            super().on_insert_chain(keys, parent)

    def on_hits(self, keys: Sequence[int], revived: Sequence[int]) -> None:
        if self._replaced(LRUPolicy, "on_pin", "on_access"):
            super().on_hits(keys, revived)
            return
        self._unqueue(revived)

    # --- the queue -------------------------------------------------------------------------------------
    def _take(self, n: int) -> list[int]:
        """Remove and return the next ``n`` live keys from the head."""
        if n > self._live:
            raise KeyError(f"{n} victims asked for, {self._live} blocks evictable")
        runs, stale = self._runs, self._stale
        out: list[int] = []
        want = n
        while want:
            # the next ``want`` entries; the stale ones among them are consumed too (a run holds a key once,
            # so a key of the chunk with stale entries ahead is one of them: the oldest)
            run, at = runs[0], self._at
            end = min(len(run), at + want)
            chunk = run[at:end]
            if stale:
                gone = list(map(stale.__contains__, chunk))
                if True in gone:
                    for key in compress(chunk, gone):
                        left = stale.pop(key) - 1
                        if left:
                            stale[key] = left
                    chunk = list(compress(chunk, map(not_, gone)))
            out += chunk
            want -= len(chunk)
            self._entries -= end - at
            if end == len(run):
                runs.popleft()
                self._at = 0
            else:
                self._at = end
        self._live -= n
        return out

    def _unqueue(self, keys: Sequence[int]) -> None:
        """``keys``, queued, are taken out: their entries go stale."""
        stale = self._stale
        for key in keys:
            stale[key] = stale.get(key, 0) + 1
        self._live -= len(keys)
        self._compact()

    def _compact(self) -> None:
        if self._entries > 2 * self._live + 1024:  # stale entries outnumber live ones
            self._rebuild(self.order())

    def _rebuild(self, live: list[int]) -> None:
        self._runs = deque([live]) if live else deque()
        self._at = 0
        self._entries = self._live = len(live)
        self._stale = {}

    def _ahead(self) -> Iterable[int]:
        """Every entry not consumed yet, from the head."""
        for i, run in enumerate(self._runs):
            yield from (islice(run, self._at, None) if i == 0 else run)

    def _queued(self, key: int) -> bool:
        """Whether ``key`` is in the queue (a scan: removals outside ``victim`` are rare, a reset or a failed
        KV load in vLLM)."""
        entries = sum(run.count(key) for run in self._runs)
        if self._runs:
            entries -= self._runs[0][: self._at].count(key)
        return entries > self._stale.get(key, 0)
