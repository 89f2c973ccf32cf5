import pytest

from kvbench.cache import POLICIES, PrefixCache, make_policy, policy_params
from kvbench.errors import KvbenchError


def test_registry_names_and_errors():
    assert list(POLICIES) == ["lru", "rlt", "rlt_reuse", "arc", "dbl", "lfu", "fifo", "random", "s3fifo", "belady"]
    with pytest.raises(KvbenchError, match="unknown eviction policy 'nope'; choose one of: lru, rlt"):
        make_policy("nope")
    with pytest.raises(KvbenchError, match="belady"):
        make_policy("belady")
    with pytest.raises(KvbenchError, match="colour: eviction policy 'lru' has no such parameter"):
        make_policy("lru", colour="red")
    assert make_policy("s3fifo", small_fraction=0.2).name == "s3fifo"


def test_string_params_take_the_type_of_the_init_default():
    # `--eviction-param k=v` gives strings; every caller (simulator, vLLM plugin) must build the same policy
    for text, want in (("False", False), ("false", False), ("0", False), ("no", False), ("True", True),
                       ("1", True), ("yes", True)):
        assert make_policy("rlt", mark_inserts=text).mark_inserts is want
    assert make_policy("rlt", mark_inserts=False).mark_inserts is False  # typed values (JSON) pass through
    s3 = make_policy("s3fifo", small_fraction="0.25", promote_threshold="2")
    assert s3._small_fraction == 0.25 and isinstance(s3._small_fraction, float)
    assert policy_params("s3fifo", {"promote_threshold": "2"}) == {"promote_threshold": 2}
    assert policy_params("arc", {"capacity": "64"}) == {"capacity": 64}  # None default: typed by annotation
    with pytest.raises(KvbenchError, match="promote_threshold=2x: eviction policy 's3fifo' expects an int"):
        make_policy("s3fifo", promote_threshold="2x")
    with pytest.raises(KvbenchError, match="mark_inserts=maybe: eviction policy 'rlt' expects a bool"):
        make_policy("rlt", mark_inserts="maybe")
    with pytest.raises(KvbenchError, match="seed: eviction policy 'random' has no such parameter"):
        policy_params("random", {"seed": "3"})  # set by kvbench (--seed), not a policy parameter


def test_hit_stops_at_first_missing_block_and_counts_tokens():
    cache = PrefixCache(None, make_policy("lru"), block_size=4)
    a = cache.admit([1, 2, 3], 3)
    cache.commit(a)
    cache.release(a)
    assert cache.match([1, 2, 9, 3]) == 2
    b = cache.admit([1, 2, 9], 3, query_tokens=11)
    assert (b.hit_blocks, b.hit_tokens) == (2, 8)
    assert (cache.stats.queries_tokens, cache.stats.hit_tokens) == (12 + 11, 8)
    assert cache.stats.hit_rate == pytest.approx(8 / 23)
    assert cache.free_blocks is None and cache.fits(10**9)


def test_max_hit_blocks_recomputes_the_last_block_and_shares_it():
    cache = PrefixCache(8, make_policy("lru"), block_size=4)
    a = cache.admit([1, 2, 3], 3)
    cache.commit(a)
    cache.release(a)
    b = cache.admit([1, 2, 3], 4, max_hit_blocks=2)  # vLLM recomputes the last prompt token
    assert b.hit_blocks == 2 and b.fresh_blocks == 2
    assert cache.used_blocks == 5
    cache.commit(b)  # block 3 is already cached: shared, our copy freed
    assert b.pinned == [1, 2, 3] and b.fresh_blocks == 1
    assert cache.used_blocks == 4 and cache.evictable_blocks == 0
    assert cache.stats.inserted_blocks == 3
    cache.release(b)
    assert cache.used_blocks == 3 and cache.evictable_blocks == 3


def test_admit_refuses_without_side_effects_when_memory_is_pinned():
    cache = PrefixCache(4, make_policy("lru"), block_size=16)
    a = cache.admit([1, 2, 3], 3)
    cache.commit(a)
    before = (cache.used_blocks, cache.stats.queries_tokens, cache.evictable_blocks)
    assert cache.admit([7, 8], 2) is None
    assert (cache.used_blocks, cache.stats.queries_tokens, cache.evictable_blocks) == before
    assert not cache.fits(5) and cache.fits(4)
    cache.release(a)
    # the hit blocks it would pin are not counted as evictable room
    assert cache.admit([1, 2, 3, 4, 5], 5) is None
    b = cache.admit([1, 2, 3, 4], 4)
    assert b is not None and b.hit_blocks == 3 and cache.evictable_blocks == 0
    with pytest.raises(ValueError):
        cache.release(b) or cache.release(b)


def test_uncached_blocks_are_used_before_evicting():
    cache = PrefixCache(6, make_policy("lru"), block_size=16)
    a = cache.admit([1, 2], 4)  # two decode blocks stay uncached
    cache.commit(a)
    assert cache.used_blocks == 4
    cache.release(a)
    assert cache.used_blocks == 2 and cache.free_blocks == 4
    b = cache.admit([5, 6, 7], 4)
    assert cache.stats.evicted_blocks == 0 and cache.free_blocks == 0
    cache.commit(b)
    cache.release(b)
    assert cache.free_blocks == 1
    c = cache.admit([9, 10], 2)
    # one free block, then one eviction: the least recently freed request's tail block
    assert cache.stats.evicted_blocks == 1 and 2 not in cache and all(k in cache for k in (1, 5, 6, 7))
    cache.release(c)


def test_flush_empties_evictable_blocks_without_counting_evictions():
    cache = PrefixCache(10, make_policy("rlt", seed=3), block_size=16)
    for keys in ([1, 2, 3], [1, 2, 4], [5]):
        adm = cache.admit(keys, len(keys))
        cache.commit(adm)
        cache.release(adm)
    pinned = cache.admit([5], 1)
    assert cache.flush() == 4
    assert cache.cached_blocks == 1 and cache.stats.evicted_blocks == 0
    cache.release(pinned)


def test_broken_policy_is_reported():
    class Bad(type(make_policy("lru"))):
        def victim(self):
            super().victim()
            return 1  # the root, which still has a child

    cache = PrefixCache(2, Bad(), block_size=16)
    a = cache.admit([1, 2], 2)
    cache.commit(a)
    cache.release(a)
    with pytest.raises(RuntimeError, match="not an evictable leaf"):
        cache.admit([3], 1)
