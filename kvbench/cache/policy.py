"""The eviction-policy interface: small enough for vLLM's block pool and for the simulator's cache.

A policy sees opaque integer block keys (kvbench chained block hashes, in the simulator and inside vLLM
alike, so seeded random choices agree between the two) and a stream
of events; it never owns memory. The owner (``kvbench.cache.prefix.PrefixCache`` or the vLLM adapter)
guarantees:

- ``on_request()`` before the accesses and inserts of each new request (RLT marks a request's path).
- ``on_insert(key, parent)`` for a newly cached block, which is in use (pinned) at that moment; ``parent``
  is the previous block of the same sequence, or None for the first block.
- ``on_access(key)`` each time a new request hits a cached block (whether or not it is pinned).
- ``on_pin(key)``: an evictable block (reference count 0) is taken back into use.
- ``on_unpin(keys)``: blocks of one finished request whose reference count dropped to 0, in sequence
  order (head first); they become evictable.
- ``victim()`` is called only while at least one block is evictable; the policy removes the chosen key from
  its own state and returns it. A block with cached children is never returned while one of its
  descendants is evictable, so eviction stays leaf-first (children of pinned blocks are pinned too).
- ``on_remove(key)``: a block left the cache for another reason (e.g. a cache reset).

The batch calls ``victims(n)``, ``on_insert_chain(keys, parent)`` and ``on_hits(keys, revived)`` stand for
runs of the single calls above (``PrefixCache`` makes them; the vLLM plugin makes single calls). Here each
is a loop over the single calls, so a policy that defines only those is complete. A policy may override a
batch call with a faster equivalent, which must fall back to this loop when a subclass or the instance
itself replaces one of the single calls it stands for (``_replaced``): a policy that records or alters its
events by wrapping a single call must still hear every event.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence


class EvictionPolicy(ABC):
    name: str = ""

    def on_request(self) -> None:
        """A new request's ``on_access``/``on_insert`` calls follow."""

    @abstractmethod
    def on_insert(self, key: int, parent: int | None) -> None: ...

    @abstractmethod
    def on_access(self, key: int) -> None: ...

    @abstractmethod
    def on_pin(self, key: int) -> None: ...

    @abstractmethod
    def on_unpin(self, keys: Sequence[int]) -> None: ...

    @abstractmethod
    def victim(self) -> int: ...

    @abstractmethod
    def on_remove(self, key: int) -> None: ...

    @abstractmethod
    def evictable_count(self) -> int:
        """Blocks the policy could return from ``victim`` now (owners check their own count against it)."""

    # --- batch calls: each means exactly the single calls its default makes, in that order -----------------
    def victims(self, n: int) -> Iterable[int]:
        """``n`` calls of ``victim()``, their keys in order (``n`` at most the evictable blocks). Lazy: each
        call is made when the owner asks for the next key, once it has evicted the previous one, so anything
        watching the owner from a single call sees it as it did between single calls. An override may choose
        all ``n`` at once (the owner's state does not change which blocks the policy picks)."""
        victim = self.victim
        return (victim() for _ in range(n))

    def on_insert_chain(self, keys: Sequence[int], parent: int | None) -> None:
        """``on_insert`` for each of ``keys`` in order, the first under ``parent``, each next under the previous."""
        on_insert = self.on_insert
        for key in keys:
            on_insert(key, parent)
            parent = key

    def on_hits(self, keys: Sequence[int], revived: Sequence[int]) -> None:
        """The owner takes cached ``keys`` into use, in order: for each, ``on_pin`` if it is among
        ``revived`` (those whose reference count was 0, in the same order; only a key's first occurrence
        in ``keys`` can be one), then ``on_access``."""
        on_pin, on_access = self.on_pin, self.on_access
        pending = iter(revived)
        nxt = next(pending, None)
        for key in keys:
            if key == nxt:
                on_pin(key)
                nxt = next(pending, None)
            on_access(key)

    def _replaced(self, cls: type, *names: str) -> bool:
        """Whether a subclass of ``cls`` or this instance replaced any of ``cls``'s single calls ``names``:
        a batch override in ``cls`` then runs the default loop instead, so every event is heard."""
        if not vars(self).keys().isdisjoint(names):
            return True
        kind = type(self)
        return kind is not cls and any(getattr(kind, name) is not getattr(cls, name) for name in names)

    def clear(self, keys: Iterable[int] = ()) -> None:
        for k in keys:
            self.on_remove(k)
