"""A router's own estimate of which blocks each worker holds, built only from what it routed.

Real routers without KV events (Dynamo's approximate mode, llm-d's estimated prefix index, the RLT paper's
router) remember the block hashes of the prompts they sent to each worker and forget the least recently
used ones beyond a capacity. Blocks of a prompt are refreshed tail first, so the head of every prefix is the
most recent and LRU forgetting drops tails before heads: each worker's set stays prefix closed, which lets
:meth:`match` binary-search the matched length instead of scanning every block.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np


class BlockView:
    def __init__(self, workers: int, capacity_blocks: int | None):
        self.capacity = capacity_blocks
        self.blocks: list[OrderedDict[int, None]] = [OrderedDict() for _ in range(workers)]

    def match(self, worker: int, hash_ids: np.ndarray | list[int]) -> int:
        """Number of leading blocks of the prompt the router believes ``worker`` has cached."""
        held = self.blocks[worker]
        n = len(hash_ids)
        if n == 0 or not held:
            return 0
        hs = hash_ids if isinstance(hash_ids, list) else hash_ids.tolist()
        if hs[-1] in held:
            return n
        lo, hi = 0, n - 1  # hs[:lo] held (assumed), hs[hi] not held
        while lo < hi:
            mid = (lo + hi) // 2
            if hs[mid] in held:
                lo = mid + 1
            else:
                hi = mid
        return lo

    def insert(self, worker: int, hash_ids: np.ndarray | list[int]) -> None:
        held = self.blocks[worker]
        hs = hash_ids if isinstance(hash_ids, list) else hash_ids.tolist()
        for h in reversed(hs):
            held[h] = None
            held.move_to_end(h)
        if self.capacity is not None:
            while len(held) > self.capacity:
                held.popitem(last=False)

    def size(self, worker: int) -> int:
        return len(self.blocks[worker])
