"""``belady`` at the edges of its future: blocks re-cached by the running request, requests the future does
not list, and ``drop`` of indices outside it. Block size 1, so one key is one block and one token."""

from __future__ import annotations

from kvbench.cache import PrefixCache
from kvbench.cache.belady import _NEVER, BeladyPolicy


def serve(cache: PrefixCache, index: int, keys: list[int], hittable: int) -> int:
    """Admit, commit and release one request as the simulator does (seek first); returns its hit blocks."""
    cache.policy.seek(index)
    adm = cache.admit(keys, len(keys), hittable)
    assert adm is not None
    cache.commit(adm)
    cache.release(adm)
    return adm.hit_blocks


def test_a_block_the_running_request_recaches_goes_before_one_behind_a_pending_reload():
    """Request 2 cannot hit block 2 (its hittable is 0) and re-caches it at its commit: evicting 2 costs
    nothing. Block 1's next occurrence is request 3, a reload, so its next use also counts as "never"; but
    request 3 may still go to another worker (``drop``), and then 1 is used by request 4. Request 2 needs one
    victim out of {1, 2}: 2 must go first, whatever else is "never" used."""
    future = [[1], [2], [2], [1], [1]]
    hittable = [1, 1, 0, 0, 1]
    cache = PrefixCache(2, BeladyPolicy(future, hittable), block_size=1)
    assert serve(cache, 0, [1], 1) == 0
    assert serve(cache, 1, [2], 1) == 0  # the cache is full: {1, 2}, both evictable
    assert serve(cache, 2, [2], 0) == 0  # one victim: 2, put back at the commit
    assert 1 in cache and 2 in cache and cache.stats.evicted_blocks == 1
    cache.policy.drop(3)  # request 3 went elsewhere: block 1's next use is now request 4
    assert cache.policy.next_use(1) == 4
    assert serve(cache, 4, [1], 1) == 1


def test_a_request_outside_the_future_is_served_and_its_blocks_are_never_used():
    """The future lists requests 0..2; a request the simulator did not plan for (index 3, beyond it) is
    served without touching the plan: its block 3 counts as never used, and its one victim is block 2
    (never used again) rather than 1 (used by the pending request 2)."""
    future = [[1], [2], [1]]
    cache = PrefixCache(2, BeladyPolicy(future), block_size=1)
    serve(cache, 0, [1], 1)
    serve(cache, 1, [2], 1)
    assert serve(cache, 3, [3], 1) == 0
    assert 1 in cache and 2 not in cache and cache.policy.next_use(3) == _NEVER
    assert serve(cache, 2, [1], 1) == 1
    # and without seek: the next request after the last planned one is past the future as well
    plain = PrefixCache(2, BeladyPolicy([[1], [2]]), block_size=1)
    for keys in ([1], [2], [3]):
        adm = plain.admit(keys, 1)
        plain.commit(adm)
        plain.release(adm)
    assert 3 in plain


def test_drop_ignores_indices_outside_the_future():
    """``drop(-1)`` must not wrap around to the last request, nor ``drop(len(future))`` fail: neither names
    a planned request, so every next use stays as it was."""
    policy = BeladyPolicy([[1], [2], [3]])
    for index in (-1, 3, 100):
        policy.drop(index)
    assert [policy.next_use(k) for k in (1, 2, 3)] == [0, 1, 2]
    policy.drop(2)  # a real one
    assert policy.next_use(3) == _NEVER
