"""``make_policy`` and ``policy_params``: the defaults they fill in and the errors they name."""

from __future__ import annotations

import pytest
from tests.cache.cache_drivers import run_sequential

from kvbench.cache import PrefixCache, _typed_defaults, make_policy
from kvbench.cache.lru import LRUPolicy
from kvbench.errors import KvbenchError


def _victims(policy) -> list[int]:
    taken: list[int] = []
    choose = policy.victim
    policy.victim = lambda: taken.append(choose()) or taken[-1]
    cache = PrefixCache(6, policy, block_size=16)
    run_sequential(cache, [[i, 100 + i] for i in range(20)] + [[i, 200 + i] for i in range(0, 20, 3)])
    return taken


@pytest.mark.parametrize("name", ["rlt", "rlt_reuse", "random"])
def test_the_default_seed_is_zero(name):
    assert _victims(make_policy(name)) == _victims(make_policy(name, seed=0))
    assert _victims(make_policy(name)) != _victims(make_policy(name, seed=1))


def test_an_offline_policy_without_its_future_is_refused_by_name():
    with pytest.raises(KvbenchError, match="'belady' is offline and needs the future request sequence"):
        make_policy("belady")


def test_a_value_the_policy_rejects_is_one_kvbench_error():
    with pytest.raises(KvbenchError, match="bad parameters for eviction policy 's3fifo': small_fraction"):
        make_policy("s3fifo", small_fraction=1.5)


def test_typed_defaults_keep_a_default_and_type_a_none_by_its_annotation():
    class Odd(LRUPolicy):
        def __init__(self, plain=5, flag: bool = True, cap: int | None = None, ratio: float | None = None,
                   label=None, seed: int = 0):
            super().__init__()

    assert _typed_defaults(Odd) == {"plain": 5, "flag": True, "cap": 0, "ratio": 0.0, "label": None}


def test_class_defaults_match_what_make_policy_builds():
    from kvbench.cache.prefix import PrefixCache as Cache
    from kvbench.cache.randomleaf import RandomPolicy
    from kvbench.cache.rlt import RLTPolicy, RLTReusePolicy

    assert _victims(RandomPolicy()) == _victims(make_policy("random"))
    assert _victims(RLTPolicy()) == _victims(make_policy("rlt"))
    assert _victims(RLTReusePolicy()) == _victims(make_policy("rlt_reuse"))
    assert Cache(None, make_policy("lru")).block_size == 16


def test_setting_aside_more_than_the_capacity_leaves_none():
    cache = PrefixCache(0, make_policy("lru"), block_size=16)
    cache.set_aside(1)  # a --cache-tokens below one block: vLLM's null block takes it all
    assert cache.capacity_blocks == 0
    cache = PrefixCache(5, make_policy("lru"), block_size=16)
    cache.set_aside(1)
    assert cache.capacity_blocks == 4


@pytest.mark.parametrize("fraction", [0.0, 1.0, 1.5])
def test_s3fifo_small_queue_fraction_is_strictly_between_0_and_1(fraction):
    with pytest.raises(KvbenchError, match="small_fraction must be in"):
        make_policy("s3fifo", small_fraction=fraction)
