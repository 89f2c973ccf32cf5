"""Routing policies, each written once and used by both the simulator and the real HTTP path.

``make_router(name, config)`` builds one; ``ROUTERS`` lists the names.
"""

from __future__ import annotations

from kvbench.errors import fail
from kvbench.routing.base import Completion, Router, RouterConfig, RouteRequest
from kvbench.routing.cache_aware import CacheAwareRouter
from kvbench.routing.kv_cost import KvCostRouter
from kvbench.routing.lbgr import LbgrRouter
from kvbench.routing.lbgr_ext import LbgrExtRouter
from kvbench.routing.least_load import LeastLoadRouter
from kvbench.routing.llmd import LlmdRouter
from kvbench.routing.power_of_two import PowerOfTwoRouter
from kvbench.routing.prefix_hash import PrefixHashRouter
from kvbench.routing.random_choice import RandomRouter
from kvbench.routing.round_robin import RoundRobinRouter

_CLASSES: dict[str, type[Router]] = {
    cls.name: cls
    for cls in (RandomRouter, RoundRobinRouter, LeastLoadRouter, PowerOfTwoRouter, PrefixHashRouter,
                CacheAwareRouter, KvCostRouter, LlmdRouter, LbgrRouter, LbgrExtRouter)
}
ROUTERS: tuple[str, ...] = tuple(_CLASSES)


def make_router(name: str, config: RouterConfig) -> Router:
    cls = _CLASSES.get(name)
    if cls is None:
        raise fail(f"--router {name}: unknown router (known: {', '.join(ROUTERS)})")
    if config.workers < 1:
        raise fail(f"--workers {config.workers}: need at least one worker")
    return cls(config)


__all__ = ["ROUTERS", "Completion", "RouteRequest", "Router", "RouterConfig", "make_router"]
