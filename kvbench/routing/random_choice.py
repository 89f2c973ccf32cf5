"""``random``: a uniformly random live worker (seeded), the baseline every other router must beat."""

from __future__ import annotations

import numpy as np

from kvbench.routing.base import Router, RouterConfig, RouteRequest


class RandomRouter(Router):
    name = "random"

    def __init__(self, config: RouterConfig):
        super().__init__(config)
        self.rng = np.random.default_rng(config.seed)

    def choose(self, req: RouteRequest, now: float) -> int:
        live = self.live_workers()
        return live[int(self.rng.integers(len(live)))]
