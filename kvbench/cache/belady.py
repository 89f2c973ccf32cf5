"""``belady``: the offline optimum's rule, evict the evictable leaf whose next use is furthest away.

It is given the future: per request, in replay order, the block keys the request caches and how many of
its first keys can hit (``hittable``; vLLM always recomputes the last prompt token, so a block-aligned
prompt's last block never hits). A *use* is a hittable occurrence; an unhittable one is a *reload*: the
request recomputes and re-caches that block whatever the cache holds, so keeping a block until a reload
gains nothing. The eviction priority of a block is therefore the index of its next pending use, or
"never" when a reload (or nothing) comes first. A child is never used before its parent (a request that
can hit the child can hit the parent), so the leaf constraint costs nothing as long as no cached block
with cached descendants has a reload as its next occurrence.

On one cache serving requests one at a time, in replay order, this is the optimum whenever that holds
(no block-aligned prompt is a proper prefix of another request's prompt), hence a bound on every online
policy's hit rate; otherwise it can fall short of the optimum, rarely (docs/belady.md,
tests/cache/test_belady_bound.py).
With several workers each worker's policy must get the future of the requests routed to it
(kvbench.sim.run does that) and hear about requests that will not come (``drop``).
"""

from __future__ import annotations

from collections.abc import Sequence

from kvbench.cache.leaves import LeafPolicy
from kvbench.cache.structures import LazyHeap

_NEVER = 1 << 62  # no use before the next reload, or no use at all
_RELOAD_NOW = _NEVER + 1  # re-cached by a request already admitted: evicting it is free


class BeladyPolicy(LeafPolicy):
    name = "belady"

    def __init__(self, future: Sequence[Sequence[int]], hittable: Sequence[int] | None = None,
                 passes: int = 3, force_final: bool = True) -> None:
        """``future[i]``: the block keys request ``i`` caches; ``hittable[i]``: how many of the first of
        them can hit (None: all). ``passes``/``force_final`` are read by the simulator, not here: with
        several workers it re-runs up to ``passes`` times, each worker's future taken from the previous
        pass's routing, and with ``force_final`` replays that routing in the last pass if it has not
        converged (docs/belady.md)."""
        super().__init__()
        if passes < 1:
            raise ValueError("passes must be at least 1")
        self.passes = passes
        self.force_final = force_final
        # per key, its occurrences in request order, coded 2 * request + (1 if a reload else 0)
        occ: dict[int, list[int]] = {}
        for i, keys in enumerate(future):
            h = len(keys) if hittable is None else hittable[i]
            for p, key in enumerate(keys):
                # only the first h keys can hit (a block-aligned prompt's last block never does): the rest
                # are reloads, never counted as uses
                code = 2 * i + (p >= h)
                lst = occ.get(key)
                if lst is None:
                    occ[key] = [code]
                elif lst[-1] >> 1 != i:
                    lst.append(code)
        self._occ = occ
        self._future = future
        self._hittable = hittable
        self._now = -1  # index of the request being processed
        self._done = bytearray(len(future))  # requests processed here, or dropped (processed elsewhere)
        self._ptr: dict[int, int] = {}  # per key: its occurrences before this position are all done
        self._reload: set[int] = set()  # keys an admitted request will re-cache at its commit
        self._cand = LazyHeap()

    # --- time ---------------------------------------------------------------------------------
    def seek(self, index: int) -> None:
        """The next request is ``future[index]``: lets a simulator that reorders requests keep time exact."""
        self._now = index - 1  # on_request then consumes exactly request ``index``, whatever came before

    def on_request(self) -> None:
        self._now += 1
        i = self._now
        if not 0 <= i < len(self._done) or self._done[i]:
            return
        self._done[i] = 1
        keys = self._future[i]
        h = len(keys) if self._hittable is None else self._hittable[i]
        # Invariant: every candidate's heap priority equals _priority(key) now. Marking request i done
        # changes _priority only for keys of request i. A hittable one that is a candidate is cached, so
        # is its whole prefix, so the owner hits and pins it before evicting anything (PrefixCache.admit,
        # given the same hit cap as ``hittable``) and it gets a fresh priority when it is unpinned: no
        # refresh needed. Its reloads stay cached or not as they are, so refresh them here; they are free
        # to evict until this request's commit re-caches them (on_insert/on_access clear the mark).
        reload = keys[h:]
        if reload:
            self._reload.update(reload)
            self._refresh(reload)

    def drop(self, index: int) -> None:
        """``future[index]`` will not be processed here (routed to another worker, or failed)."""
        if 0 <= index < len(self._done) and not self._done[index]:
            self._done[index] = 1
            # nothing of this request is pinned here, so every key of it may be a candidate whose
            # priority just moved (later, or earlier when a reload went away): keep the invariant
            self._refresh(self._future[index])

    def _refresh(self, keys: Sequence[int]) -> None:
        cand = self._cand
        for key in keys:
            if key in cand:
                cand.push(key, -self._priority(key))

    def next_use(self, key: int) -> int:
        """Index of the first request not yet processed that can hit ``key``, or a huge number when none
        comes before a pending request that re-caches ``key`` anyway (or at all).

        "Not yet processed" rather than "after the current index": when closed-loop sessions or queueing
        reorder requests, a delayed request with a smaller index is still in the future.
        """
        lst = self._occ.get(key)
        if lst is None:
            return _NEVER
        j = self._ptr.get(key, 0)
        done = self._done
        while j < len(lst) and done[lst[j] >> 1]:
            j += 1
        self._ptr[key] = j
        # the first pending occurrence decides: a use gives its index; a reload means the block comes back
        # anyway before any use, so keeping it until then is worth nothing
        if j == len(lst) or lst[j] & 1:
            return _NEVER
        return lst[j] >> 1

    def _priority(self, key: int) -> int:
        return _RELOAD_NOW if key in self._reload else self.next_use(key)

    # --- EvictionPolicy / LeafPolicy ------------------------------------------------------------
    def on_insert(self, key: int, parent: int | None) -> None:
        super().on_insert(key, parent)
        self._reload.discard(key)  # (re-)cached: a later _enter computes its real priority

    def on_access(self, key: int) -> None:
        if self._reload:
            self._reload.discard(key)  # pinned now (a hit, or shared at a commit): see on_insert

    def _enter(self, key: int) -> None:
        # Priorities are computed when a key becomes a candidate and kept current while it is one
        # (on_request, drop), so no live priority is stale; LazyHeap.pop skips entries that do not match
        # the live one, hence every victim is a candidate of maximal current priority.
        self._cand.push(key, -self._priority(key))

    def _leave(self, key: int) -> None:
        self._cand.discard(key)

    def _choose(self) -> int:
        # candidates are exactly the evictable leaves (LeafPolicy's _enter/_leave): the leaf constraint
        return self._cand.pop()

    def _forget(self, key: int) -> None:
        self._reload.discard(key)
