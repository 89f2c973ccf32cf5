"""RLT's marking phases, pinned through the cache a request stream really drives.

When no unmarked evictable leaf is left, a new phase clears every mark *except those on the newest request's
path*. Those kept marks decide a later eviction here: with them, the only candidate is the block nobody has
touched since the phase began; without them, the block the newest request just reused competes with it.
"""

from __future__ import annotations

import pytest

from kvbench.cache import PrefixCache, make_policy

A, B, C, E = 11, 22, 33, 55  # one-block prompts: each key is its own root


def serve(cache: PrefixCache, keys: list[int], total_blocks: int) -> None:
    adm = cache.admit(keys, total_blocks)
    assert adm is not None
    cache.commit(adm)
    cache.release(adm)


@pytest.mark.parametrize("name", ["rlt", "rlt_reuse"])
@pytest.mark.parametrize("seed", range(12))
def test_a_new_phase_keeps_the_newest_paths_marks(name, seed):
    cache = PrefixCache(3, make_policy(name, seed=seed), block_size=16)
    for key in (A, B, C):  # cache A, B, C
        serve(cache, [key], 1)
    for key in (A, B, C):  # reuse each: every block is marked, under both variants
        serve(cache, [key], 1)
    # A is hit again and needs one more (uncached) block: nothing unmarked is evictable, so a phase starts
    # with A, the newest path, still marked; B or C goes
    serve(cache, [A], 2)
    assert cache.policy.phases == 1 and cache.stats.evicted_blocks == 1
    other = B if B in cache else C
    assert A in cache and (B in cache) != (C in cache)
    # E needs two blocks with one free: the one victim must be the unmarked survivor of B and C, never A
    serve(cache, [E], 2)
    assert A in cache and other not in cache and E in cache
    assert cache.policy.phases == 1 and cache.stats.evicted_blocks == 2
