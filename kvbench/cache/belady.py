"""``belady``: the offline optimum's rule, evict the evictable leaf whose next use is furthest away.

It is given the future: the block keys of every request in the order they will be processed, and
counts requests through ``on_request``. Because keys are chained prefix hashes, a child is never used
again before its parent, so the furthest-next-use block can always be taken among leaves and the
leaf constraint costs nothing. On a sequential single-cache trace this bounds every online policy's
hit rate.
"""

from __future__ import annotations

from collections.abc import Sequence

from kvbench.cache.leaves import LeafPolicy
from kvbench.cache.structures import LazyHeap

_NEVER = 1 << 62


class BeladyPolicy(LeafPolicy):
    name = "belady"

    def __init__(self, future: Sequence[Sequence[int]]) -> None:
        super().__init__()
        uses: dict[int, list[int]] = {}
        for i, keys in enumerate(future):
            for key in keys:
                lst = uses.get(key)
                if lst is None:
                    uses[key] = [i]
                elif lst[-1] != i:
                    lst.append(i)
        self._uses = uses
        self._now = -1  # index of the request being processed
        self._done = bytearray(len(future))  # requests already processed here
        self._ptr: dict[int, int] = {}  # per key: uses before this position are all done
        self._next: dict[int, int] = {}
        self._cand = LazyHeap()

    def on_request(self) -> None:
        self._now += 1
        if 0 <= self._now < len(self._done):
            self._done[self._now] = 1

    def seek(self, index: int) -> None:
        """The next request is ``future[index]``: lets a simulator that reorders requests keep time exact."""
        self._now = index - 1

    def next_use(self, key: int) -> int:
        """Index of the first request not yet processed that uses ``key`` (a huge number if none).

        "Not yet processed" rather than "after the current index": when closed-loop sessions or queueing
        reorder requests, a delayed request with a smaller index is still in the future.
        """
        lst = self._uses.get(key)
        if lst is None:
            return _NEVER
        j = self._ptr.get(key, 0)
        done = self._done
        while j < len(lst) and done[lst[j]]:
            j += 1
        self._ptr[key] = j
        return lst[j] if j < len(lst) else _NEVER

    def on_insert(self, key: int, parent: int | None) -> None:
        super().on_insert(key, parent)
        self._next[key] = self.next_use(key)

    def on_access(self, key: int) -> None:
        self._next[key] = self.next_use(key)

    def _enter(self, key: int) -> None:
        # recomputed here too, in case the processing order skipped a planned use
        nxt = self.next_use(key)
        self._next[key] = nxt
        self._cand.push(key, -nxt)

    def _leave(self, key: int) -> None:
        self._cand.discard(key)

    def _choose(self) -> int:
        return self._cand.pop()

    def _forget(self, key: int) -> None:
        del self._next[key]
