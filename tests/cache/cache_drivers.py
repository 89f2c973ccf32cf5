"""Small drivers shared by the cache tests: request generators and ways to push them through a cache."""

from __future__ import annotations

import random
from typing import NamedTuple

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


# --- requests as the simulator sees them (kvbench.sim.engine) ----------------------------------------------
class Request(NamedTuple):
    """A prompt of ``input_tokens`` whose full blocks have the chained ``keys``, and its output length."""

    keys: list[int]
    input_tokens: int
    output_tokens: int

    def hittable(self, block_size: int) -> int:
        """Blocks that can hit: vLLM recomputes the last prompt token, so never an aligned prompt's last."""
        return min(len(self.keys), (self.input_tokens - 1) // block_size)

    def total_blocks(self, block_size: int) -> int:
        """KV blocks held while running: the prompt and every generated token but the last."""
        return -(-(self.input_tokens + self.output_tokens - 1) // block_size)


def random_requests(rng: random.Random, n: int, block_size: int, aligned: float, groups: int = 2,
                    shared: int = 4, suffix: int = 2) -> list[Request]:
    """``n`` requests over a few shared-prefix groups; a fraction ``aligned`` of prompts end on a block
    boundary (so their last block can never hit)."""
    chains = KeyChains()
    out = []
    for _ in range(n):
        sh, sf = rng.randint(0, shared), rng.randint(0, suffix)
        keys = chains.request(rng.randrange(groups), sh if sh + sf else 1, rng.randrange(2), sf)
        extra = 0 if rng.random() < aligned else rng.randint(1, block_size - 1)
        out.append(Request(keys, len(keys) * block_size + extra, rng.randint(1, 2 * block_size)))
    return out


def belady_for(requests: list[Request], block_size: int):
    """The offline policy given what the simulator gives it: every request's blocks and how many can hit."""
    return make_policy("belady", future=[r.keys for r in requests],
                       hittable=[r.hittable(block_size) for r in requests])


def run_like_simulator(cache: PrefixCache, requests: list[Request]) -> int:
    """One request at a time, admitted as the simulator admits them (hit cap, whole sequence up front);
    returns the hit blocks."""
    bs = cache.block_size
    seek = getattr(cache.policy, "seek", None)
    for i, r in enumerate(requests):
        if seek is not None:
            seek(i)
        adm = cache.admit(r.keys, r.total_blocks(bs), r.hittable(bs), r.input_tokens)
        assert adm is not None
        cache.commit(adm)
        cache.release(adm)
    return cache.stats.hit_tokens // bs
