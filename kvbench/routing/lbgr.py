"""``lbgr``: the RLT paper's learning-based greedy router as its released code runs it, in tokens.

The paper's router (policy ``eta_online_3d`` in its sgl-router fork) works in milliseconds and prompt
characters. kvbench keeps every term and only changes the unit of prompt length: one token counts as
``chars_per_token`` characters (default 4, the usual English-text ratio), so a per-character constant
``c`` becomes ``c * chars_per_token`` per token. For worker ``w`` and a prompt of ``n`` tokens of which
the router believes ``m`` are cached on ``w``:

    base(w) = max(1, ms_per_uncached_char * chars_per_token * (n - m))      [ms; cached work costs 0]
    pred(w) = max(1, base(w) + queue_weight * load(w) + bias(w))             [ms]

Workers are scanned in order and a later worker replaces the best only when ``pred + tie_margin_ms <
best`` (so ties, within 1 ms, keep the earlier worker). Routing the request adds ``round(base)`` to the
chosen worker's integer load, and the prompt goes into that worker's approximate prefix tree.

- ``load(w)``: integer milliseconds. Every ``decay_interval_ms`` (20) of the router's clock every load
  becomes ``floor(load * 31 / 32)``. When a request ends, successful or not, what is left of its increment,
  ``round(inc * (31/32) ** ticks)`` with ``ticks = elapsed_ms // 20`` since it was routed, is subtracted
  (saturating at 0).
- ``bias(w)``: recursive least squares on the constant feature only (forgetting ``rls_lambda`` 0.992,
  initial covariance ``rls_p0`` 1e6), updated on each successful completion with
  ``max(1, e2e_ms - (base + queue_weight * load_at_route))``: the end-to-end latency the router measured,
  minus what it predicted without the bias, clamped at 1 ms.
- Prefix match: each worker's radix tree over the prompt's token ids (its block hashes when the trace has
  no ids, each counting ``block_size`` tokens), matched without touching, inserted at routing and again
  at completion, pruned least-recently-used to ``max_tree_tokens`` every ``eviction_interval_s``.

kvbench's own variant with more features is ``lbgr_ext`` (kvbench/routing/lbgr_ext.py).
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np

from kvbench.errors import fail
from kvbench.routing.base import Completion, Router, RouterConfig, RouteRequest
from kvbench.routing.radix import WorkerTrees
from kvbench.routing.rls import RecursiveLeastSquares

_BIAS = np.ones(1)


def round_half_up(x: float) -> int:
    """Rust's ``f64::round`` for the non-negative values used here (Python's round is banker's)."""
    return int(math.floor(x + 0.5))


class LbgrRouter(Router):
    name = "lbgr"
    defaults = {
        "chars_per_token": 4.0,
        "ms_per_uncached_char": 1.0,  # SLOPE_UNCACHED_MS / LEN_SCALE in the paper's code
        "queue_weight": 1.0,  # ALPHA_QUEUE
        "load_decay": 31 / 32,
        "decay_interval_ms": 20,
        "rls_lambda": 0.992,
        "rls_p0": 1e6,
        "tie_margin_ms": 1.0,
        "max_tree_tokens": 2**24 // 4,  # the router's 2**24-character tree at 4 characters per token
        "eviction_interval_s": 60.0,
    }

    def __init__(self, config: RouterConfig):
        super().__init__(config)
        p = self.params
        if float(p["chars_per_token"]) <= 0 or float(p["ms_per_uncached_char"]) < 0:
            raise fail("--router-param chars_per_token must be > 0 and ms_per_uncached_char >= 0 for lbgr")
        if not 0.0 < float(p["load_decay"]) <= 1.0 or int(p["decay_interval_ms"]) < 1:
            raise fail("--router-param load_decay must be in (0, 1] and decay_interval_ms >= 1 for lbgr")
        if not 0.0 < float(p["rls_lambda"]) <= 1.0 or float(p["rls_p0"]) <= 0:
            raise fail(f"--router-param rls_lambda={p['rls_lambda']}: must be in (0, 1], rls_p0 > 0")
        self.ms_per_token = float(p["ms_per_uncached_char"]) * float(p["chars_per_token"])
        self.alpha_queue = float(p["queue_weight"])
        self.decay = float(p["load_decay"])
        ratio = Fraction(self.decay).limit_denominator(1 << 16)  # 31/32 exactly: integer arithmetic per tick
        self.decay_ratio = (ratio.numerator, ratio.denominator)
        self.tick_ms = int(p["decay_interval_ms"])
        self.margin = float(p["tie_margin_ms"])
        self.models = [RecursiveLeastSquares(1, float(p["rls_lambda"]), float(p["rls_p0"]), max_trace=math.inf)
                       for _ in range(self.n)]
        self.trees = WorkerTrees(self.n, float(p["eviction_interval_s"]))
        self.max_tree_tokens = int(p["max_tree_tokens"])
        self.tokens_per_symbol = 1  # block-hash symbols stand for block_size tokens each
        self.load = [0] * self.n  # integer milliseconds, as the paper's atomic counters
        self.ticks_done = [0] * self.n  # decay ticks already applied to each load
        self.origin: float | None = None  # the decay clock starts with the router
        # request -> (base_ms, load_ms at routing, increment, routed at, symbols, tokens per symbol)
        self.pending: dict[str, tuple[float, float, int, float, np.ndarray, int]] = {}
        self._scan: dict[int, tuple[float, float]] = {}  # worker -> (base, load) of the last choose()

    # --- the load counters -------------------------------------------------------------------------
    def _ticks(self, now: float) -> int:
        if self.origin is None:
            self.origin = now
        # a small epsilon keeps 0.06 s from counting as 2.999... ticks of 20 ms
        return int(math.floor((now - self.origin) * 1000.0 / self.tick_ms + 1e-9))

    def load_at(self, w: int, now: float) -> int:
        """Worker ``w``'s load after every decay tick up to ``now`` (integer floor each tick, as the paper)."""
        target = self._ticks(now)
        n = target - self.ticks_done[w]
        self.ticks_done[w] = max(target, self.ticks_done[w])
        v = self.load[w]
        num, den = self.decay_ratio
        while n > 0 and v > 0:  # floor(v * 31/32) drops v by >= 1 a tick, so this ends within ~32 ln v ticks
            v = v * num // den
            n -= 1
        self.load[w] = v
        return v

    # --- prediction --------------------------------------------------------------------------------
    def _symbols(self, req: RouteRequest) -> tuple[np.ndarray, int]:
        """The prompt as the tree sees it, and how many tokens one symbol stands for."""
        if req.prompt_token_ids is not None and len(req.prompt_token_ids):
            return np.asarray(req.prompt_token_ids, dtype=np.int64), 1
        return np.asarray(req.hash_ids, dtype=np.int64), self.config.block_size

    def base_ms(self, uncached_tokens: int) -> float:
        return max(1.0, self.ms_per_token * uncached_tokens)

    def bias(self, w: int) -> float:
        return self.models[w].predict(_BIAS)

    def predict(self, req: RouteRequest, w: int, now: float) -> tuple[float, float, float]:
        """(prediction, base, load) in ms for ``req`` on worker ``w``."""
        seq, per = self._symbols(req)
        cached = min(self.trees[w].match(seq) * per, req.input_tokens)
        base = self.base_ms(req.input_tokens - cached)
        load = float(self.load_at(w, now))
        return max(1.0, base + self.alpha_queue * load + self.bias(w)), base, load

    def choose(self, req: RouteRequest, now: float) -> int:
        self.trees.maybe_prune(now, self.max_tree_tokens // self.tokens_per_symbol)
        best, best_pred = -1, math.inf
        self._scan.clear()
        for w in self.live_workers():
            pred, base, load = self.predict(req, w, now)
            self._scan[w] = (base, load)
            if best < 0 or pred + self.margin < best_pred:
                best, best_pred = w, pred
        return best

    def on_routed(self, req: RouteRequest, worker: int, now: float) -> None:
        got = self._scan.get(worker)
        if got is None:  # placed by a caller's own choice: price it now
            _, base, load = self.predict(req, worker, now)
        else:
            base, load = got
        self._scan.clear()
        inc = round_half_up(base)
        self.load_at(worker, now)
        self.load[worker] += inc
        seq, per = self._symbols(req)
        self.tokens_per_symbol = per
        self.trees[worker].insert(seq, now)
        self.pending[req.request_id] = (base, load, inc, now, seq, per)

    def on_complete(self, req: RouteRequest, worker: int, now: float, result: Completion) -> None:
        got = self.pending.pop(req.request_id, None)
        if got is None:
            return
        base, load, inc, routed_at, seq, _ = got
        # what is left of this request's increment leaves the load, whatever the outcome
        ticks = int(math.floor(max(0.0, now - routed_at) * 1000.0 / self.tick_ms + 1e-9))
        left = round_half_up(inc * self.decay ** ticks)
        self.load[worker] = max(0, self.load_at(worker, now) - left)
        if not result.ok or result.e2e_s is None:
            return
        residual = max(1.0, result.e2e_s * 1000.0 - (base + self.alpha_queue * load))
        self.models[worker].update(_BIAS, residual)
        self.trees[worker].insert(seq, now)

    def describe(self) -> dict:
        out = super().describe()
        out["bias_ms"] = [round(self.bias(w), 3) for w in range(self.n)]
        return out
