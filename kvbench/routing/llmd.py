"""``llmd``: the llm-d inference scheduler's weighted scorers, highest total wins.

``preset=llm-d`` (default) is llm-d's standard scheduling profile (the ``default`` profile of
llm-d/llm-d-inference-scheduler ``config/charts/epplib/templates/_config.yaml``): ``prefix-cache-scorer``
weight 3, ``queue-scorer`` weight 2, ``kv-cache-utilization-scorer`` weight 2, then ``max-score-picker``.
Each scorer maps a worker to [0, 1] (the scheduler clamps to that range) and
``score = 3 * prefix + 2 * queue + 2 * kv``:

- prefix (``scorer/prefix``): ``matched_blocks / total_blocks`` (0 when the prompt has no block), where the
  prompt is cut to its first ``max_prefix_blocks`` blocks (llm-d's ``maxPrefixBlocksToMatch``, 256) and the
  match is the prefix the router's own block index (llm-d's approximate prefix cache, filled from the
  prompts it routed, one LRU of ``cache_blocks`` entries per worker) believes the worker holds. llm-d hashes
  blocks of ``4 * block_size`` characters; kvbench uses its token blocks.
- queue (``scorer/queuedepth``): ``(q_max - q) / (q_max - q_min)``, 1 for every worker when all are equal.
  llm-d reads ``q`` from the server's waiting-queue metric, which a kvbench router cannot see; ``q`` here is
  the router's own count of requests it sent to the worker that have not completed.
- kv (``scorer/kvcacheutilization``): ``1 - usage``. llm-d reads the server's KV-cache usage; the router's
  estimate is the KV blocks of the requests it has outstanding on the worker (full prompt blocks shared by
  several of them counted once, plus each one's partial tail and output blocks) over ``cache_blocks``. With
  no known capacity the usage is taken as 0 (an unbounded cache never fills) and the scorer is neutral.

Ties go to a seeded random choice among the best (the picker shuffles before a stable sort).

``preset=kvbench-0.1`` is kvbench's earlier variant, kept under its own name: equal weights 1/1/1, no cap on
the prompt blocks, kv usage = ``ceil(outstanding tokens / block_size) / cache_blocks`` (without a capacity:
the queue formula over outstanding tokens), ties to the lower queue then the lower index.
Explicit ``prefix_weight``, ``queue_weight``, ``kv_weight`` and ``max_prefix_blocks`` (0 = no cap) override
either preset.
"""

from __future__ import annotations

import numpy as np

from kvbench.routing.base import Completion, Router, RouterConfig, RouteRequest
from kvbench.routing.block_view import BlockView
from kvbench.routing.cache_aware import apply_preset
from kvbench.routing.kv_cost import ActiveSequences, blocks_of

PRESETS = {
    "llm-d": {"prefix_weight": 3.0, "queue_weight": 2.0, "kv_weight": 2.0, "max_prefix_blocks": 256},
    "kvbench-0.1": {"prefix_weight": 1.0, "queue_weight": 1.0, "kv_weight": 1.0, "max_prefix_blocks": 0},
}


def queue_score(values: list[float]) -> list[float]:
    """llm-d's queue scorer: ``(max - v) / (max - min)``, 1 for all when every value is equal."""
    lo, hi = min(values), max(values)
    if hi == lo:
        return [1.0] * len(values)
    return [(hi - v) / (hi - lo) for v in values]


def _spread_score_v01(values: list[float]) -> list[float]:
    """The kvbench-0.1 spelling of the same normalisation (kept bit for bit)."""
    lo, hi = min(values), max(values)
    if hi == lo:
        return [1.0] * len(values)
    return [1.0 - (v - lo) / (hi - lo) for v in values]


def _clamp(x: float) -> float:
    return min(1.0, max(0.0, x))


class LlmdRouter(Router):
    name = "llmd"
    defaults = {"preset": "llm-d", "prefix_weight": None, "queue_weight": None, "kv_weight": None,
                "max_prefix_blocks": None}

    def __init__(self, config: RouterConfig):
        super().__init__(config)
        apply_preset(self, PRESETS, "preset")
        self.preset = self.params["preset"]
        self.view = BlockView(self.n, config.cache_blocks)
        self.rng = np.random.default_rng(config.seed)
        self.active = [ActiveSequences() for _ in range(self.n)]
        self.private_blocks = [0] * self.n  # partial-tail and output blocks of the outstanding requests
        self.max_blocks = int(self.params["max_prefix_blocks"])

    def kv_usage(self, worker: int) -> float:
        return (self.active[worker].active_blocks() + self.private_blocks[worker]) / self.config.cache_blocks

    def scores(self, req: RouteRequest, live: list[int]) -> list[float]:
        p = self.params
        hs = req.hash_ids.tolist()
        if self.max_blocks > 0:
            hs = hs[: self.max_blocks]
        if self.preset == "kvbench-0.1":
            queue = _spread_score_v01([self.outstanding[w] for w in live])
            total = max(len(hs), 1)
            prefix = [self.view.match(w, hs) / total for w in live]
            if self.config.cache_blocks:
                bs = self.config.block_size
                kv = [max(0.0, 1.0 - blocks_of(self.outstanding_tokens[w], bs) / self.config.cache_blocks)
                      for w in live]
            else:
                kv = _spread_score_v01([self.outstanding_tokens[w] for w in live])
        else:
            queue = queue_score([self.outstanding[w] for w in live])
            prefix = [self.view.match(w, hs) / len(hs) if hs else 0.0 for w in live]
            if self.config.cache_blocks:
                kv = [_clamp(1.0 - self.kv_usage(w)) for w in live]
            else:
                kv = [1.0] * len(live)
        return [p["prefix_weight"] * _clamp(a) + p["queue_weight"] * b + p["kv_weight"] * c
                for a, b, c in zip(prefix, queue, kv)]

    def choose(self, req: RouteRequest, now: float) -> int:
        live = self.live_workers()
        s = self.scores(req, live)
        if self.preset == "kvbench-0.1":
            best = max(range(len(live)), key=lambda i: (s[i], -self.outstanding[live[i]], -live[i]))
            return live[best]
        top = max(s)
        tied = [w for w, x in zip(live, s) if x == top]
        return tied[0] if len(tied) == 1 else tied[int(self.rng.integers(len(tied)))]

    def on_routed(self, req: RouteRequest, worker: int, now: float) -> None:
        if self.preset != "kvbench-0.1":
            hs = req.hash_ids.tolist()
            self.active[worker].add(req.request_id, hs, 0)
            self.private_blocks[worker] += self._private(req, len(hs))
        self.view.insert(worker, req.hash_ids)

    def on_complete(self, req: RouteRequest, worker: int, now: float, result: Completion) -> None:
        if self.preset != "kvbench-0.1":
            self.active[worker].free(req.request_id)
            self.private_blocks[worker] -= self._private(req, len(req.hash_ids))

    def _private(self, req: RouteRequest, full_blocks: int) -> int:
        return max(0, blocks_of(req.input_tokens + req.output_tokens, self.config.block_size) - full_blocks)
