"""``llmd``: the llm-d inference scheduler's weighted scorers, highest total wins.

Each scorer maps a worker to [0, 1]:

- prefix: matched / total prompt blocks on the router's own block index (llm-d's estimated prefix cache);
- queue: ``1 - (q - q_min) / (q_max - q_min)`` over outstanding requests (1 for all when equal);
- kv_usage: ``1 - usage`` with usage = outstanding KV blocks / ``cache_blocks`` when the capacity is
  configured, else outstanding tokens normalised like the queue score.

``score = prefix_weight * prefix + queue_weight * queue + kv_weight * kv_usage``; ties go to the lower
queue then the lower index. The weights are kvbench defaults (equal), to be set per experiment like
llm-d's scheduling profiles.
"""

from __future__ import annotations

from kvbench.routing.base import Router, RouterConfig, RouteRequest
from kvbench.routing.block_view import BlockView
from kvbench.routing.kv_cost import blocks_of


def _spread_score(values: list[float]) -> list[float]:
    lo, hi = min(values), max(values)
    if hi == lo:
        return [1.0] * len(values)
    return [1.0 - (v - lo) / (hi - lo) for v in values]


class LlmdRouter(Router):
    name = "llmd"
    defaults = {"prefix_weight": 1.0, "queue_weight": 1.0, "kv_weight": 1.0}

    def __init__(self, config: RouterConfig):
        super().__init__(config)
        self.view = BlockView(self.n, config.cache_blocks)

    def scores(self, req: RouteRequest, live: list[int]) -> list[float]:
        p = self.params
        hs = req.hash_ids.tolist()
        total = max(len(hs), 1)
        prefix = [self.view.match(w, hs) / total for w in live]
        queue = _spread_score([self.outstanding[w] for w in live])
        if self.config.cache_blocks:
            bs = self.config.block_size
            kv = [max(0.0, 1.0 - blocks_of(self.outstanding_tokens[w], bs) / self.config.cache_blocks)
                  for w in live]
        else:
            kv = _spread_score([self.outstanding_tokens[w] for w in live])
        return [p["prefix_weight"] * a + p["queue_weight"] * b + p["kv_weight"] * c
                for a, b, c in zip(prefix, queue, kv)]

    def choose(self, req: RouteRequest, now: float) -> int:
        live = self.live_workers()
        s = self.scores(req, live)
        best = max(range(len(live)), key=lambda i: (s[i], -self.outstanding[live[i]], -live[i]))
        return live[best]

    def on_routed(self, req: RouteRequest, worker: int, now: float) -> None:
        self.view.insert(worker, req.hash_ids)
