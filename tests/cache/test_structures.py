"""The candidate sets under the policies: IndexedSet (uniform random pop) and LazyHeap (lazy discards)."""

from __future__ import annotations

import random
from collections import Counter

from kvbench.cache.structures import IndexedSet, LazyHeap


def test_indexed_set_is_a_set():
    s = IndexedSet()
    for k in (5, 7, 9, 7):
        s.add(k)
    assert len(s) == 3 and 7 in s and 8 not in s and sorted(s) == [5, 7, 9]
    s.discard(5)
    s.discard(42)  # absent: nothing happens
    assert len(s) == 2 and 5 not in s and sorted(s) == [7, 9]
    s.discard(9)
    s.discard(7)
    assert len(s) == 0 and list(s) == []


def test_indexed_set_pops_uniformly_and_reproducibly():
    counts: Counter[int] = Counter()
    rng = random.Random(1)
    for _ in range(3000):
        s = IndexedSet()
        for k in range(6):
            s.add(k)
        s.discard(2)
        k = s.pop_random(rng)
        assert k not in s and len(s) == 4
        counts[k] += 1
    assert set(counts) == {0, 1, 3, 4, 5} and all(450 < c < 750 for c in counts.values())
    a, b = IndexedSet(), IndexedSet()
    for k in range(10):
        a.add(k)
        b.add(k)
    ra, rb = random.Random(3), random.Random(3)
    assert [a.pop_random(ra) for _ in range(10)] == [b.pop_random(rb) for _ in range(10)]


def test_lazy_heap_pops_live_priorities_in_order():
    h = LazyHeap()
    h.push(1, 30)
    h.push(2, 10)
    h.push(3, 20)
    h.push(2, 40)  # re-prioritised: the old entry (10) no longer counts
    h.discard(3)
    h.discard(99)  # absent: nothing happens
    assert len(h) == 2 and 1 in h and 3 not in h
    assert [h.pop(), h.pop()] == [1, 2] and len(h) == 0


def test_lazy_heap_memory_stays_proportional_to_the_live_set():
    h = LazyHeap()
    rng = random.Random(0)
    for step in range(5000):
        h.push(rng.randrange(40), step)  # at most 40 live keys, stale entries pile up
        assert len(h._heap) <= max(64, 3 * len(h))  # white-box: compaction keeps the bound
    order = []
    while len(h):
        order.append(h.pop())
    assert len(order) == len(set(order)) == 40
