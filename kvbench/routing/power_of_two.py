"""``power_of_two``: sample two distinct live workers (seeded) and take the less loaded one; nearly the
balance of least-load with only two probes (Mitzenmacher's power of two choices)."""

from __future__ import annotations

import numpy as np

from kvbench.routing.base import Router, RouterConfig, RouteRequest
from kvbench.routing.least_load import check_by, load_vector


class PowerOfTwoRouter(Router):
    name = "power_of_two"
    defaults = {"by": "requests"}

    def __init__(self, config: RouterConfig):
        super().__init__(config)
        self.by = check_by(self.name, self.params["by"])
        self.rng = np.random.default_rng(config.seed)

    def choose(self, req: RouteRequest, now: float) -> int:
        live = self.live_workers()
        if len(live) == 1:
            return live[0]
        a, b = self.rng.choice(len(live), size=2, replace=False)
        wa, wb = live[int(a)], live[int(b)]
        load = load_vector(self, self.by)
        if load[wa] == load[wb]:
            return min(wa, wb)
        return wa if load[wa] < load[wb] else wb
