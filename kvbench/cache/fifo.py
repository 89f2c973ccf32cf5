"""``fifo``: evict the block cached longest ago, among evictable leaves."""

from __future__ import annotations

from kvbench.cache.leaves import LeafPolicy
from kvbench.cache.structures import LazyHeap


class FIFOPolicy(LeafPolicy):
    name = "fifo"

    def __init__(self) -> None:
        super().__init__()
        self._born: dict[int, int] = {}
        self._tick = 0
        self._cand = LazyHeap()

    def on_insert(self, key: int, parent: int | None) -> None:
        super().on_insert(key, parent)
        self._tick += 1
        self._born[key] = self._tick

    def _enter(self, key: int) -> None:
        self._cand.push(key, self._born[key])

    def _leave(self, key: int) -> None:
        self._cand.discard(key)

    def _choose(self) -> int:
        return self._cand.pop()

    def _forget(self, key: int) -> None:
        del self._born[key]
