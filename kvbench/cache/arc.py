"""``arc`` and ``dbl``: two recency lists, T1 (seen once) and T2 (reused).

``arc`` (Megiddo & Modha) also remembers recently evicted keys in ghost lists B1/B2 and adapts the
target size ``p`` of T1: a re-insert of a B1 ghost grows it by max(1, |B2|/|B1|), one of a B2 ghost
shrinks it by max(1, |B1|/|B2|). ``dbl`` keeps the same two lists with a fixed 50/50 split and no ghosts.
Recency is the time a block was last freed (tail blocks of a request first, as in vLLM), and victims
are taken among evictable leaves of the chosen list. The cache size ``c`` is ``capacity`` when given,
else the largest number of blocks cached so far (which equals the capacity once the cache has filled).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from kvbench.cache.leaves import LeafPolicy
from kvbench.cache.structures import LazyHeap


class ARCPolicy(LeafPolicy):
    name = "arc"
    adaptive = True

    def __init__(self, capacity: int | None = None) -> None:
        super().__init__()
        self._fixed_c = capacity
        self._c = capacity or 0
        self.p = 0.0
        self._list: dict[int, int] = {}  # key -> 1 (T1) or 2 (T2)
        self._stamp: dict[int, int] = {}
        self._tick = 0
        self._n1 = 0
        self._n2 = 0
        self._t1 = LazyHeap()
        self._t2 = LazyHeap()
        self._b1: OrderedDict[int, None] = OrderedDict()
        self._b2: OrderedDict[int, None] = OrderedDict()

    def _target(self) -> float:
        return self.p if self.adaptive else self._c / 2

    def on_insert(self, key: int, parent: int | None) -> None:
        super().on_insert(key, parent)
        if self._fixed_c is None and len(self._kids) > self._c:
            self._c = len(self._kids)
        b1, b2 = self._b1, self._b2
        if key in b1:
            self.p = min(float(self._c), self.p + max(1.0, len(b2) / len(b1)))
            del b1[key]
            self._list[key] = 2
            self._n2 += 1
        elif key in b2:
            self.p = max(0.0, self.p - max(1.0, len(b1) / len(b2)))
            del b2[key]
            self._list[key] = 2
            self._n2 += 1
        else:
            self._list[key] = 1
            self._n1 += 1
        self._tick += 1
        self._stamp[key] = self._tick

    def on_access(self, key: int) -> None:
        if self._list[key] == 1:
            self._list[key] = 2
            self._n1 -= 1
            self._n2 += 1
            if key in self._t1:
                self._t1.discard(key)
                self._t2.push(key, self._stamp[key])

    def on_unpin(self, keys: Sequence[int]) -> None:
        stamp = self._stamp
        for key in reversed(keys):
            self._tick += 1
            stamp[key] = self._tick
        super().on_unpin(keys)

    def _enter(self, key: int) -> None:
        (self._t1 if self._list[key] == 1 else self._t2).push(key, self._stamp[key])

    def _leave(self, key: int) -> None:
        self._t1.discard(key)
        self._t2.discard(key)

    def _choose(self) -> int:
        if self._t1 and (self._n1 > self._target() or not self._t2):
            key = self._t1.pop()
            ghosts = self._b1
        else:
            key = self._t2.pop()
            ghosts = self._b2
        if self.adaptive:
            ghosts[key] = None
        return key

    def _forget(self, key: int) -> None:
        if self._list.pop(key) == 1:
            self._n1 -= 1
        else:
            self._n2 -= 1
        del self._stamp[key]
        if self.adaptive:
            self._trim_ghosts()

    def _trim_ghosts(self) -> None:
        c = self._c
        b1, b2 = self._b1, self._b2
        while b1 and self._n1 + len(b1) > c:
            b1.popitem(last=False)
        while b2 and self._n1 + self._n2 + len(b1) + len(b2) > 2 * c:
            b2.popitem(last=False)


class DBLPolicy(ARCPolicy):
    name = "dbl"
    adaptive = False
