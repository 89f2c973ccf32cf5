"""``lfu``: evict the least frequently used evictable leaf; ties go to the least recently freed.

Counts live only while a block is cached (in-cache LFU); the count and the recency stamp are packed
into one integer so the candidate heap compares plain ints.
"""

from __future__ import annotations

from collections.abc import Sequence

from kvbench.cache.leaves import LeafPolicy
from kvbench.cache.structures import LazyHeap

_STAMP_BITS = 44


class LFUPolicy(LeafPolicy):
    name = "lfu"

    def __init__(self) -> None:
        super().__init__()
        self._count: dict[int, int] = {}
        self._stamp: dict[int, int] = {}
        self._tick = 0
        self._cand = LazyHeap()

    def on_insert(self, key: int, parent: int | None) -> None:
        super().on_insert(key, parent)
        self._count[key] = 1
        self._tick += 1
        self._stamp[key] = self._tick

    def on_access(self, key: int) -> None:
        self._count[key] += 1
        if key in self._cand:  # accessed while evictable (the owner pins first, but be safe)
            self._enter(key)

    def on_unpin(self, keys: Sequence[int]) -> None:
        stamp = self._stamp
        for key in reversed(keys):  # tail first, as vLLM frees
            self._tick += 1
            stamp[key] = self._tick
        super().on_unpin(keys)

    def _enter(self, key: int) -> None:
        self._cand.push(key, (self._count[key] << _STAMP_BITS) | self._stamp[key])

    def _leave(self, key: int) -> None:
        self._cand.discard(key)

    def _choose(self) -> int:
        return self._cand.pop()

    def _forget(self, key: int) -> None:
        del self._count[key]
        del self._stamp[key]
