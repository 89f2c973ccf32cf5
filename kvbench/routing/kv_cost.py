"""``kv_cost``: Dynamo's KV-aware router cost, lowest wins.

``cost(w) = overlap_weight * uncached_prefill_blocks(w) + decode_blocks(w)`` where the uncached blocks are
the request's blocks minus the prefix the router believes worker ``w`` holds (its own
:class:`~kvbench.routing.block_view.BlockView`, filled from routed prompts) and ``decode_blocks`` are the
KV blocks of the requests outstanding on ``w`` plus this one (their prompts and outputs). With
``temperature > 0`` the worker is sampled from ``softmax(-cost / temperature)`` over costs normalised to
[0, 1] (Dynamo's optional sampling); the default 0 is the deterministic argmin, ties to the lowest index.
"""

from __future__ import annotations

import math

import numpy as np

from kvbench.routing.base import Router, RouterConfig, RouteRequest
from kvbench.routing.block_view import BlockView


def blocks_of(tokens: int, block_size: int) -> int:
    return -(-tokens // block_size)


class KvCostRouter(Router):
    name = "kv_cost"
    defaults = {"overlap_weight": 1.0, "temperature": 0.0}

    def __init__(self, config: RouterConfig):
        super().__init__(config)
        self.view = BlockView(self.n, config.cache_blocks)
        self.rng = np.random.default_rng(config.seed)
        self.weight = float(self.params["overlap_weight"])
        self.temperature = float(self.params["temperature"])

    def costs(self, req: RouteRequest, live: list[int]) -> list[float]:
        bs = self.config.block_size
        need = blocks_of(req.input_tokens, bs)
        hs = req.hash_ids.tolist()
        out = []
        for w in live:
            uncached = need - self.view.match(w, hs)
            decode = blocks_of(self.outstanding_tokens[w] + req.input_tokens + req.output_tokens, bs)
            out.append(self.weight * uncached + decode)
        return out

    def choose(self, req: RouteRequest, now: float) -> int:
        live = self.live_workers()
        costs = self.costs(req, live)
        if self.temperature <= 0:
            return live[int(np.argmin(costs))]
        lo, hi = min(costs), max(costs)
        span = (hi - lo) or 1.0
        logits = [-(c - lo) / span / self.temperature for c in costs]
        z = [math.exp(x) for x in logits]
        p = np.asarray(z) / sum(z)
        return live[int(self.rng.choice(len(live), p=p))]

    def on_routed(self, req: RouteRequest, worker: int, now: float) -> None:
        self.view.insert(worker, req.hash_ids)
