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

    def clear(self, keys: Iterable[int] = ()) -> None:
        for k in keys:
            self.on_remove(k)
