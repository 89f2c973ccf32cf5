"""``s3fifo`` (Yang et al., SOSP'23): a small FIFO S for new blocks, a main FIFO M, a ghost FIFO G.

New blocks enter S (or M if their key is in G). Evicting from S's head promotes a block reused at
least ``promote_threshold`` times to M and otherwise evicts it into G; M's head is reinserted with its
2-bit frequency decremented while it is non-zero (CLOCK-like), else evicted. S is drained while it
holds at least ``small_fraction`` of the cached blocks. Queue heads are taken among evictable leaves.
"""

from __future__ import annotations

from collections import OrderedDict

from kvbench.cache.leaves import LeafPolicy
from kvbench.cache.structures import LazyHeap

_SMALL, _MAIN = 1, 2


class S3FIFOPolicy(LeafPolicy):
    name = "s3fifo"

    def __init__(self, small_fraction: float = 0.1, promote_threshold: int = 1) -> None:
        super().__init__()
        if not 0.0 < small_fraction < 1.0:
            raise ValueError("small_fraction must be in (0, 1)")
        self._small_fraction = small_fraction
        self._promote = promote_threshold
        self._queue: dict[int, int] = {}
        self._pos: dict[int, int] = {}
        self._freq: dict[int, int] = {}
        self._tick = 0
        self._n_small = 0
        self._high_water = 0
        self._s = LazyHeap()
        self._m = LazyHeap()
        self._ghost: OrderedDict[int, None] = OrderedDict()

    def on_insert(self, key: int, parent: int | None) -> None:
        super().on_insert(key, parent)
        self._high_water = max(self._high_water, len(self._kids))
        if key in self._ghost:
            del self._ghost[key]
            self._queue[key] = _MAIN
        else:
            self._queue[key] = _SMALL
            self._n_small += 1
        self._freq[key] = 0
        self._tick += 1
        self._pos[key] = self._tick

    def on_access(self, key: int) -> None:
        f = self._freq[key]
        if f < 3:
            self._freq[key] = f + 1

    def _enter(self, key: int) -> None:
        (self._s if self._queue[key] == _SMALL else self._m).push(key, self._pos[key])

    def _leave(self, key: int) -> None:
        self._s.discard(key)
        self._m.discard(key)

    def _choose(self) -> int:
        s, m, freq = self._s, self._m, self._freq
        while True:
            if s and (self._n_small >= self._small_fraction * len(self._kids) or not m):
                key = s.pop()
                if freq[key] >= self._promote:
                    self._n_small -= 1
                    self._queue[key] = _MAIN
                    freq[key] = 0
                    self._requeue(key, m)
                    continue
                self._ghost[key] = None
                while len(self._ghost) > self._high_water:
                    self._ghost.popitem(last=False)
                return key
            key = m.pop()
            if freq[key] > 0:
                freq[key] -= 1
                self._requeue(key, m)
                continue
            return key

    def _requeue(self, key: int, heap: LazyHeap) -> None:
        self._tick += 1
        self._pos[key] = self._tick
        heap.push(key, self._tick)

    def _forget(self, key: int) -> None:
        if self._queue.pop(key) == _SMALL:
            self._n_small -= 1
        del self._pos[key]
        del self._freq[key]
