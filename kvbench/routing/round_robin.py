"""``round_robin``: live workers in turn; with no failures the request counts differ by at most one."""

from __future__ import annotations

from kvbench.routing.base import Router, RouterConfig, RouteRequest


class RoundRobinRouter(Router):
    name = "round_robin"

    def __init__(self, config: RouterConfig):
        super().__init__(config)
        self.next = 0

    def choose(self, req: RouteRequest, now: float) -> int:
        for _ in range(self.n):
            w = self.next
            self.next = (self.next + 1) % self.n
            if self.alive[w]:
                return w
        return self.live_workers()[0]  # raises: nothing alive
