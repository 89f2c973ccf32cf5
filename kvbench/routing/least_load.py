"""``least_load``: fewest outstanding requests (``by=requests``) or tokens (``by=tokens``) on the router's
own counters; ties go to the lowest worker index so runs are reproducible."""

from __future__ import annotations

from kvbench.errors import fail
from kvbench.routing.base import Router, RouterConfig, RouteRequest


def load_vector(router: Router, by: str) -> list[int]:
    return router.outstanding if by == "requests" else router.outstanding_tokens


def check_by(router: str, by: str) -> str:
    if by not in ("requests", "tokens"):
        raise fail(f"--router-param by={by}: router '{router}' counts load by 'requests' or 'tokens'")
    return by


class LeastLoadRouter(Router):
    name = "least_load"
    defaults = {"by": "requests"}

    def __init__(self, config: RouterConfig):
        super().__init__(config)
        self.by = check_by(self.name, self.params["by"])

    def choose(self, req: RouteRequest, now: float) -> int:
        load = load_vector(self, self.by)
        return min(self.live_workers(), key=lambda w: load[w])
