"""``lru`` follows vLLM v1's free-block queue: least recently freed first, a request's tail first."""

from kvbench.cache import PrefixCache, make_policy


def run(cache, keys, total=None):
    adm = cache.admit(keys, total or len(keys))
    cache.commit(adm)
    return adm


def test_freed_request_tail_blocks_come_first_and_hits_requeue():
    cache = PrefixCache(None, make_policy("lru"), block_size=16)
    a = run(cache, [1, 2, 3])
    b = run(cache, [7, 8])
    cache.release(b)  # b finishes first
    cache.release(a)
    assert cache.policy.order() == [8, 7, 3, 2, 1]
    c = run(cache, [7, 9])  # hit on 7 takes it out of the queue
    assert cache.policy.order() == [8, 3, 2, 1]
    cache.release(c)
    assert cache.policy.order() == [8, 3, 2, 1, 9, 7]


def test_shared_prefix_reenters_only_when_its_last_user_finishes():
    cache = PrefixCache(None, make_policy("lru"), block_size=16)
    a = run(cache, [1, 2, 3])
    b = run(cache, [1, 2, 4])
    cache.release(a)
    assert cache.policy.order() == [3]  # 1 and 2 are still used by b
    cache.release(b)
    assert cache.policy.order() == [3, 4, 2, 1]


def test_eviction_takes_the_queue_head():
    cache = PrefixCache(5, make_policy("lru"), block_size=16)
    for keys in ([1, 2], [3, 4], [1, 5]):
        cache.release(run(cache, keys))
    assert cache.policy.order() == [2, 4, 3, 5, 1]  # the hit on 1 moved it behind the others
    cache.release(run(cache, [6, 7]))
    assert not any(k in cache for k in (2, 4)) and all(k in cache for k in (3, 5, 1, 6, 7))
