"""``lbgr_ext``: kvbench's extension of the RLT paper's router (``lbgr`` is the paper's code as it runs).

For a request and each live worker ``w`` the router predicts a latency and picks the minimum:

    predicted(w) = service_s_per_token * (uncached(w) + load(w, now)) + service_base_s + residual_w(x)

What it changes against ``lbgr``, and why:

- Load is in tokens, not milliseconds, and decays continuously as ``load_decay ** (dt / decay_interval_s)``
  (31/32 per 20 ms by default) so a reading never depends on when the decay thread last ran; a finished
  request's decayed increment is subtracted as in the paper.
- The prefix estimate is a :class:`~kvbench.routing.block_view.BlockView` of block hashes (LRU-bounded by the
  configured cache size) instead of a character radix tree pruned by size.
- The residual is per-worker recursive least squares on ``x = (1, uncached/1000, load/1000)``
  (``features=full``, default) or ``x = (1,)`` (``features=const``), fitted to TTFT by default
  (``target=ttft``; ``e2e`` as the paper) and without the paper's 1 ms clamp. With ``features=full`` the
  learned slopes let a worker that is slow per token (or slow under load) be priced as such, which a bias
  cannot express.
- ``monotone`` (default on): at prediction time negative slopes are clipped to 0, so more uncached work or
  more load never lowers a prediction. Fitted on delayed, queue-dominated outcomes, unclipped RLS learns
  negative load weights and herds requests onto the busiest worker (RLT GSP trace in the simulator: mean
  TTFT 95 s instead of 5 s). The RLS itself keeps the unclipped estimate; clipping only guards the choice.
  The paper's router cannot herd this way: it has no load slope to learn.

When ``lbgr`` and ``lbgr_ext`` disagree in results/, the rows say which one ran.
"""

from __future__ import annotations

import numpy as np

from kvbench.errors import fail
from kvbench.routing.base import Completion, Router, RouterConfig, RouteRequest
from kvbench.routing.block_view import BlockView
from kvbench.routing.rls import RecursiveLeastSquares


class LbgrExtRouter(Router):
    name = "lbgr_ext"
    defaults = {
        # The paper's code charges 1 ms per uncached character (about 4 ms per token); the scale matters
        # because it weighs service and load against the learned residual.
        "service_s_per_token": 4e-3,
        "service_base_s": 0.02,
        "load_decay": 31 / 32,
        "decay_interval_s": 0.02,
        "forgetting": 0.992,
        "rls_delta": 100.0,
        "features": "full",
        "target": "ttft",
        "monotone": True,
    }

    def __init__(self, config: RouterConfig):
        super().__init__(config)
        p = self.params
        if p["features"] not in ("full", "const"):
            raise fail(f"--router-param features={p['features']}: lbgr_ext features are 'full' or 'const'")
        if p["target"] not in ("ttft", "e2e"):
            raise fail(f"--router-param target={p['target']}: lbgr_ext learns from 'ttft' or 'e2e'")
        if not 0.0 < float(p["load_decay"]) <= 1.0 or float(p["decay_interval_s"]) <= 0:
            raise fail("--router-param load_decay must be in (0, 1] and decay_interval_s > 0 for lbgr_ext")
        if not 0.0 < float(p["forgetting"]) <= 1.0:
            raise fail(f"--router-param forgetting={p['forgetting']}: must be in (0, 1]")
        self.alpha = float(p["service_s_per_token"])
        self.beta = float(p["service_base_s"])
        self.log_decay = float(np.log(float(p["load_decay"]))) / float(p["decay_interval_s"])
        self.full = p["features"] == "full"
        self.monotone = bool(p["monotone"])
        dim = 3 if self.full else 1
        self.models = [RecursiveLeastSquares(dim, float(p["forgetting"]), float(p["rls_delta"]))
                       for _ in range(self.n)]
        self.view = BlockView(self.n, config.cache_blocks)
        self.load = [0.0] * self.n
        self.load_t = [0.0] * self.n
        self.pending: dict[str, tuple[np.ndarray, float]] = {}  # request -> (features, base prediction)
        self._last: dict[int, tuple[np.ndarray, float, int]] = {}

    def load_at(self, w: int, now: float) -> float:
        dt = max(0.0, now - self.load_t[w])
        if dt:
            self.load[w] *= float(np.exp(self.log_decay * dt))
            self.load_t[w] = now
        return self.load[w]

    def features(self, uncached: int, load: float) -> np.ndarray:
        if self.full:
            return np.array([1.0, uncached / 1000.0, load / 1000.0])
        return np.array([1.0])

    def predict(self, req: RouteRequest, w: int, now: float, hs: list[int] | None = None) -> tuple[float, np.ndarray, float, int]:
        """(predicted latency, features, base prediction, uncached tokens) for ``req`` on worker ``w``."""
        hs = req.hash_ids.tolist() if hs is None else hs
        cached = min(self.view.match(w, hs) * self.config.block_size, max(req.input_tokens - 1, 0))
        uncached = req.input_tokens - cached
        load = self.load_at(w, now)
        base = self.alpha * (uncached + load) + self.beta
        x = self.features(uncached, load)
        return base + self.residual(w, x), x, base, uncached

    def residual(self, w: int, x: np.ndarray) -> float:
        theta = self.models[w].theta
        if self.monotone and len(theta) > 1:
            # more uncached work or more load may never *lower* a prediction
            return float(theta[0] + np.maximum(theta[1:], 0.0) @ x[1:])
        return float(theta @ x)

    def choose(self, req: RouteRequest, now: float) -> int:
        hs = req.hash_ids.tolist()
        best, best_pred = -1, float("inf")
        self._last.clear()
        for w in self.live_workers():
            pred, x, base, uncached = self.predict(req, w, now, hs)
            self._last[w] = (x, base, uncached)
            if pred < best_pred:
                best, best_pred = w, pred
        return best

    def on_routed(self, req: RouteRequest, worker: int, now: float) -> None:
        got = self._last.get(worker)
        if got is None:  # routed by someone else's choice (e.g. a pinned session): compute now
            _, x, base, uncached = self.predict(req, worker, now)
        else:
            x, base, uncached = got
        self._last.clear()
        self.pending[req.request_id] = (x, base, uncached, now)
        self.load_at(worker, now)
        self.load[worker] += uncached
        self.view.insert(worker, req.hash_ids)

    def on_complete(self, req: RouteRequest, worker: int, now: float, result: Completion) -> None:
        x, base, added, routed_at = self.pending.pop(req.request_id, (None, 0.0, 0, now))
        if x is None:
            return
        # the finished request's work leaves the load: what is left of its (decayed) increment
        remaining = added * float(np.exp(self.log_decay * max(0.0, now - routed_at)))
        self.load[worker] = max(0.0, self.load_at(worker, now) - remaining)
        if not result.ok:
            return
        observed = result.ttft_s if self.params["target"] == "ttft" else result.e2e_s
        if observed is None:
            observed = result.e2e_s
        if observed is None:
            return
        self.models[worker].update(x, observed - base)

    def describe(self) -> dict:
        out = super().describe()
        out["residual_theta"] = [m.theta.round(6).tolist() for m in self.models]
        return out
