"""LazyHeap after it drops its stale entries: the rebuilt heap still pops by priority."""

from kvbench.cache.structures import LazyHeap


def test_pops_by_priority_after_compaction():
    h = LazyHeap()
    for k in range(70):
        h.push(k, 100 - k)  # priorities 100 down to 31: the later a key is pushed, the sooner it pops
    for k in range(60):
        h.discard(k)  # 10 live keys (60..69, priorities 40..31) under 70 heap entries
    h.push(70, 35)  # 71 entries > 64 and > 3 * 11 live: the stale ones are dropped here
    # by priority: 69 (31), 68 (32), 67 (33), 66 (34), then 65 and 70 (both 35: the lower key first), 64 (36),
    # 63, 62, 61, 60 (40)
    assert [h.pop() for _ in range(len(h))] == [69, 68, 67, 66, 65, 70, 64, 63, 62, 61, 60]
