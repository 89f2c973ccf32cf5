"""``random``: evict a uniformly random evictable leaf (seeded)."""

from __future__ import annotations

import random

from kvbench.cache.leaves import LeafPolicy
from kvbench.cache.structures import IndexedSet


class RandomPolicy(LeafPolicy):
    name = "random"

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        self._rng = random.Random(seed)
        self._cand = IndexedSet()

    def _enter(self, key: int) -> None:
        self._cand.add(key)

    def _leave(self, key: int) -> None:
        self._cand.discard(key)

    def _choose(self) -> int:
        return self._cand.pop_random(self._rng)
