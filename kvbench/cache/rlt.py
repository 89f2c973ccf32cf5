"""``rlt``: randomized leaf eviction with marking phases (after the RLT paper).

Every block on a request's path (hits and inserts) is marked. Victims are drawn uniformly among
*unmarked* evictable leaves; when there is none, a new phase starts and every mark is cleared except
those on the newest request's path. This is the randomized marking algorithm lifted to a block tree,
which is what gives its O(log n) competitive ratio where LRU's is O(n). Unmarking work at a phase
change is paid for by the marks it clears, so every operation is amortised O(1).

``mark_inserts=False`` marks only blocks that are *reused* (hits): never-reused blocks, such as the unique
tail of every prompt, then stay unmarked and go first. With inserts marked, a workload whose requests
each bring many new blocks (GSP's unique halves) fills every phase with marked new blocks, and the
marking algorithm degenerates to evicting everything older than the phase.

"The newest request's path" is approximate under concurrency: the path collects the hits of the latest
admitted request and every block inserted since, and inserts land when a prefill finishes, so blocks of
requests admitted slightly earlier can join it. Sequential traces (and the fidelity test) are exact.
"""

from __future__ import annotations

import random

from kvbench.cache.leaves import LeafPolicy
from kvbench.cache.structures import IndexedSet


class RLTPolicy(LeafPolicy):
    name = "rlt"

    def __init__(self, seed: int = 0, mark_inserts: bool = True) -> None:
        super().__init__()
        self.mark_inserts = bool(mark_inserts)
        self._rng = random.Random(seed)
        self._cand = IndexedSet()  # unmarked evictable leaves
        self._marked: set[int] = set()
        self._path: list[int] = []  # the newest request's path
        self.phases = 0

    def on_request(self) -> None:
        self._path = []

    def on_insert(self, key: int, parent: int | None) -> None:
        super().on_insert(key, parent)
        if self.mark_inserts:
            self._mark(key)

    def on_access(self, key: int) -> None:
        self._mark(key)

    def _mark(self, key: int) -> None:
        self._path.append(key)
        if key not in self._marked:
            self._marked.add(key)
            self._cand.discard(key)

    def _enter(self, key: int) -> None:
        if key not in self._marked:
            self._cand.add(key)

    def _leave(self, key: int) -> None:
        self._cand.discard(key)

    def _choose(self) -> int:
        if not self._cand:
            self._new_phase()
        return self._cand.pop_random(self._rng)

    def _new_phase(self) -> None:
        self.phases += 1
        kids, free, cand = self._kids, self._free, self._cand
        keep = {k for k in self._path if k in kids}
        for key in self._marked:
            if key not in keep and key in free and kids[key] == 0:
                cand.add(key)
        self._marked = keep
        if not cand:  # every evictable leaf is on the newest path (possible only outside PrefixCache)
            self._marked = set()
            for key in free:
                if kids[key] == 0:
                    cand.add(key)

    def _forget(self, key: int) -> None:
        self._marked.discard(key)


class RLTReusePolicy(RLTPolicy):
    """``rlt_reuse``: RLT that marks only reused blocks (``rlt`` with ``mark_inserts=False``)."""

    name = "rlt_reuse"

    def __init__(self, seed: int = 0, mark_inserts: bool = False) -> None:
        super().__init__(seed=seed, mark_inserts=mark_inserts)
