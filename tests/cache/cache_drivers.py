"""Small drivers shared by the cache tests: request generators and ways to push them through a cache."""

from __future__ import annotations

from kvbench.cache import PrefixCache, make_policy

ONLINE = ["lru", "rlt", "rlt_reuse", "arc", "dbl", "lfu", "fifo", "random", "s3fifo"]


class KeyChains:
    """Turns (group, shared length, suffix id, suffix length) into chained block keys: equal key, equal prefix."""

    def __init__(self) -> None:
        self._ids: dict[tuple, int] = {}

    def _key(self, label: tuple) -> int:
        return self._ids.setdefault(label, len(self._ids) * 7919 + 13)

    def request(self, group: int, shared: int, suffix_id: int, suffix: int) -> list[int]:
        keys = [self._key(("g", group, i)) for i in range(shared)]
        keys += [self._key(("s", group, shared, suffix_id, j)) for j in range(suffix)]
        return keys


def build(
    name: str, capacity: int | None, trace: list[list[int]] | None = None, seed: int = 0, block_size: int = 16
):
    policy = make_policy(name, seed=seed, future=trace if name == "belady" else None)
    return PrefixCache(capacity, policy, block_size)


def run_sequential(cache: PrefixCache, trace: list[list[int]], extra_blocks: int = 0) -> None:
    """One request at a time: admit, commit, release."""
    for keys in trace:
        adm = cache.admit(keys, len(keys) + extra_blocks)
        assert adm is not None
        cache.commit(adm)
        cache.release(adm)
