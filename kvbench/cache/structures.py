"""Candidate sets that keep every policy operation O(1) or O(log n)."""

from __future__ import annotations

import heapq
import random
from collections.abc import Iterator


class IndexedSet:
    """A set with O(1) add, discard and uniform random pop (array + index map, swap-remove)."""

    __slots__ = ("_items", "_pos")

    def __init__(self) -> None:
        self._items: list[int] = []
        self._pos: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: int) -> bool:
        return key in self._pos

    def __iter__(self) -> Iterator[int]:
        return iter(self._items)

    def add(self, key: int) -> None:
        if key not in self._pos:
            self._pos[key] = len(self._items)
            self._items.append(key)

    def discard(self, key: int) -> None:
        i = self._pos.pop(key, None)
        if i is None:
            return
        last = self._items.pop()
        if i < len(self._items):
            self._items[i] = last
            self._pos[last] = i

    def pop_random(self, rng: random.Random) -> int:
        items = self._items
        i = int(rng.random() * len(items))
        key = items[i]
        last = items.pop()
        del self._pos[key]
        if i < len(items):
            items[i] = last
            self._pos[last] = i
        return key


class LazyHeap:
    """A min-heap of keys by priority where discards are lazy: an entry counts only while it matches
    the key's live priority, so removing or re-prioritising a key is O(1) and popping O(log n) amortised."""

    __slots__ = ("_heap", "_live")

    def __init__(self) -> None:
        self._heap: list[tuple[int, int]] = []
        self._live: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self._live)

    def __contains__(self, key: int) -> bool:
        return key in self._live

    def push(self, key: int, prio: int) -> None:
        self._live[key] = prio
        heap = self._heap
        heapq.heappush(heap, (prio, key))
        if len(heap) > 64 and len(heap) > 3 * len(self._live):
            # drop stale entries so memory stays proportional to the live set
            self._heap = [(p, k) for k, p in self._live.items()]
            heapq.heapify(self._heap)

    def discard(self, key: int) -> None:
        self._live.pop(key, None)

    def pop(self) -> int:
        heap, live = self._heap, self._live
        while True:
            prio, key = heapq.heappop(heap)
            if live.get(key) == prio:
                del live[key]
                return key
