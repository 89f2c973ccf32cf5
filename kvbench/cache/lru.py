"""``lru``: vLLM v1's free-block queue order.

vLLM appends a block to the tail of its free queue when its reference count drops to 0, frees a
request's blocks in reverse order (so its tail blocks come first), takes a block that gets hit out of
the queue, and evicts from the head. Because a descendant's count always reaches 0 no later than its
ancestor's, this order is leaf-first by construction.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from kvbench.cache.policy import EvictionPolicy


class LRUPolicy(EvictionPolicy):
    name = "lru"

    def __init__(self) -> None:
        self._queue: OrderedDict[int, None] = OrderedDict()

    def on_insert(self, key: int, parent: int | None) -> None:
        pass

    def on_access(self, key: int) -> None:
        pass

    def on_pin(self, key: int) -> None:
        del self._queue[key]

    def on_unpin(self, keys: Sequence[int]) -> None:
        queue = self._queue
        for key in reversed(keys):
            queue[key] = None

    def victim(self) -> int:
        return self._queue.popitem(last=False)[0]

    def on_remove(self, key: int) -> None:
        self._queue.pop(key, None)

    def evictable_count(self) -> int:
        return len(self._queue)

    def order(self) -> list[int]:
        """Evictable keys, next victim first (for tests and the vLLM adapter)."""
        return list(self._queue)
