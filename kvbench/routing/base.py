"""The router interface, shared by the simulator and the real HTTP path (client and gateway).

A router sees only what a real router can see: the requests it routes, their completions (times, cached
tokens when the server reports them), and worker up/down changes. Time is ``now`` in seconds on the
caller's clock (simulated time, or monotonic wall time in the HTTP path), so time-based decays work the
same in both.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from kvbench.params import resolve_params as _resolve


@dataclass
class RouteRequest:
    request_id: str
    input_tokens: int
    output_tokens: int
    hash_ids: np.ndarray  # chained block hashes at the router's block size
    prompt_token_ids: Sequence[int] | None = None
    prompt: str | None = None
    session_id: str | None = None


@dataclass
class Completion:
    """What a router learns when a request it routed ends."""

    ttft_s: float | None
    e2e_s: float | None
    cached_tokens: int | None
    output_tokens: int
    ok: bool = True


@dataclass
class RouterConfig:
    workers: int
    block_size: int = 16
    seed: int = 0
    params: dict[str, Any] = field(default_factory=dict)
    cache_blocks: int | None = None  # per-worker KV capacity the operator configured (None = unknown)


class Router(ABC):
    """One routing policy. Subclasses set ``name`` and implement :meth:`choose`."""

    name: str = ""
    # Accepted ``params`` and their defaults; values given as strings (``--router-param k=v``) are
    # converted to the default's type. Unknown keys are a user error.
    defaults: dict[str, Any] = {}

    def __init__(self, config: RouterConfig):
        self.config = config
        self.params = resolve_params(self.name, self.defaults, config.params)
        self.n = config.workers
        self.alive = [True] * config.workers
        self.outstanding = [0] * config.workers  # requests routed and not finished
        self.outstanding_tokens = [0] * config.workers

    def live_workers(self) -> list[int]:
        live = [i for i in range(self.n) if self.alive[i]]
        if not live:
            raise RuntimeError("no live workers left to route to")
        return live

    def route(self, req: RouteRequest, now: float) -> int:
        """Pick a worker and account the request as outstanding there."""
        w = self.choose(req, now)
        self.outstanding[w] += 1
        self.outstanding_tokens[w] += req.input_tokens + req.output_tokens
        self.on_routed(req, w, now)
        return w

    @abstractmethod
    def choose(self, req: RouteRequest, now: float) -> int: ...

    def on_routed(self, req: RouteRequest, worker: int, now: float) -> None:
        """Hook after ``choose``: update the router's own view (trees, load estimates)."""

    def complete(self, req: RouteRequest, worker: int, now: float, result: Completion) -> None:
        self.outstanding[worker] -= 1
        self.outstanding_tokens[worker] -= req.input_tokens + req.output_tokens
        self.on_complete(req, worker, now, result)

    def on_complete(self, req: RouteRequest, worker: int, now: float, result: Completion) -> None:
        """Hook for learning routers."""

    def set_alive(self, worker: int, alive: bool) -> None:
        self.alive[worker] = alive

    def describe(self) -> dict[str, Any]:
        """Parameters recorded in run.json (defaults included, so a run is reproducible)."""
        return {"name": self.name, **self.params}


def resolve_params(router: str, defaults: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    """``--router-param`` values checked and typed like the router's defaults (shared with eviction policies)."""
    return _resolve(f"router '{router}'", defaults, given, "--router-param")
