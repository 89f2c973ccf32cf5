"""Shared bookkeeping for policies that choose among evictable *leaves* of the block tree.

Evicting a block whose cached child is still there would orphan the child (a hit stops at the first
missing block), so any policy whose natural order is not leaf-first restricts its candidates to
evictable blocks without cached children. Subclasses keep one candidate structure and are told,
through ``_enter``/``_leave``, when a block becomes or stops being a candidate.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence

from kvbench.cache.policy import EvictionPolicy


class LeafPolicy(EvictionPolicy):
    def __init__(self) -> None:
        self._parent: dict[int, int | None] = {}
        self._kids: dict[int, int] = {}
        self._free: set[int] = set()

    # --- hooks -------------------------------------------------------------------------------
    @abstractmethod
    def _enter(self, key: int) -> None:
        """``key`` is now an evictable leaf."""

    @abstractmethod
    def _leave(self, key: int) -> None:
        """``key`` is no longer an evictable leaf (pinned again or got a child)."""

    @abstractmethod
    def _choose(self) -> int:
        """Remove and return the candidate to evict (at least one candidate exists)."""

    def _forget(self, key: int) -> None:
        """``key`` left the cache: drop any per-key state."""

    # --- EvictionPolicy ---------------------------------------------------------------------
    def on_insert(self, key: int, parent: int | None) -> None:
        self._parent[key] = parent
        self._kids[key] = 0
        if parent is not None:
            n = self._kids.get(parent)
            if n is not None:
                self._kids[parent] = n + 1
                if n == 0 and parent in self._free:
                    self._leave(parent)

    def on_access(self, key: int) -> None:
        pass

    def on_pin(self, key: int) -> None:
        self._free.discard(key)
        if self._kids[key] == 0:
            self._leave(key)

    def on_unpin(self, keys: Sequence[int]) -> None:
        free, kids = self._free, self._kids
        for key in keys:
            free.add(key)
        for key in reversed(keys):
            if kids[key] == 0:
                self._enter(key)

    def victim(self) -> int:
        key = self._choose()
        self._drop(key)
        return key

    def on_remove(self, key: int) -> None:
        if key not in self._kids:
            return
        if key in self._free and self._kids[key] == 0:
            self._leave(key)
        self._drop(key)

    def evictable_count(self) -> int:
        return len(self._free)

    def _drop(self, key: int) -> None:
        parent = self._parent.pop(key)
        del self._kids[key]
        self._free.discard(key)
        self._forget(key)
        if parent is not None:
            n = self._kids.get(parent)
            if n is not None:
                self._kids[parent] = n - 1
                if n == 1 and parent in self._free:
                    self._enter(parent)
