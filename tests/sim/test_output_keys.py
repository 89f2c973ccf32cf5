"""The keys the simulator gives a request's output blocks: splitmix64-mixed, one per full output block."""

import numpy as np

from kvbench.routing import RouteRequest
from kvbench.sim.engine import SimRequest, _mix64, output_keys


def test_mix64_is_splitmix64():
    # splitmix64 seeded with 0 first outputs 0xE220A8397B1DCDAF (Vigna's reference generator)
    assert _mix64(0) == 0xE220A8397B1DCDAF


def test_one_output_block_past_the_prompt_gets_one_key():
    bs = 16
    route = RouteRequest("r", 32, 17, np.asarray([11, 12], dtype=np.int64))
    # full blocks: (32 + 17 - 1) // 16 = 3 -> the 2 prompt blocks and 1 output block
    keys = SimRequest(0, route, [11, 12], bs).block_keys()
    assert keys == [11, 12] + output_keys("r", 12, 1) and len(keys) == 3
    # one output token fewer: (32 + 16 - 1) // 16 = 2 -> the prompt's blocks only
    assert SimRequest(0, RouteRequest("r", 32, 16, route.hash_ids), [11, 12], bs).block_keys() == [11, 12]


def test_output_keys_are_distinct_signed_int64_and_reproducible():
    keys = output_keys("r", None, 64)
    assert len(set(keys)) == 64
    assert all(-(1 << 63) <= k < (1 << 63) for k in keys)  # stored like trace hash ids (int64)
    assert min(keys) < 0 < max(keys)  # the top bit of the mixed value becomes the sign
    assert keys == output_keys("r", None, 64) and keys != output_keys("s", None, 64)
    assert output_keys("r", None, 0) == [] and output_keys("r", 5, -1) == []
