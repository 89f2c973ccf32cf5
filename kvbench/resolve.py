"""From what was asked to what runs: ``resolve(spec, trace)`` decides every effective value once.

Backends consume only a :class:`Resolved` and the record writes it as what ran, so nothing downstream
re-checks a name or a block size, and run.json cannot disagree with the run. On a real target the servers
have the last word on their block size and the model; :meth:`Resolved.at_server` folds that in, through the
same check.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from kvbench.errors import fail
from kvbench.spec import ReplaySpec
from kvbench.vllm_plugin.config import NATIVE as SERVER_EVICTION

if TYPE_CHECKING:
    from kvbench.http.targets import Target
    from kvbench.sim.latency import LatencyProfile
    from kvbench.trace import Trace

SIM_EVICTION = "lru"  # the simulator's policy when none is named
FLAG_SOURCE = "--block-size"


@dataclass(frozen=True)
class Resolved:
    """The effective configuration of one replay (``spec`` carries the effective eviction and parameters)."""

    spec: ReplaySpec
    block_size: int  # what caches and routers block by
    block_size_source: str  # "--block-size", a cluster.json path or "server /metrics cache_config_info"
    cluster_eviction: str | None = None  # what the real target says it runs (None: the simulator)
    model: str | None = None  # the model sent to real servers (known after their preflight)
    profile: LatencyProfile | None = None  # the simulator's latency profile
    target: Target | None = None  # real workers' endpoints
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def eviction(self) -> str:
        return self.spec.eviction or SIM_EVICTION

    @property
    def eviction_params(self) -> dict[str, Any]:
        return self.spec.eviction_params

    @property
    def is_sim(self) -> bool:
        return self.spec.is_sim

    def at_server(self, trace: Trace, block_size: int, source: str, model: str | None) -> "Resolved":
        """The servers' own block size and served model, once their preflight and /metrics have answered."""
        check_block_multiple(block_size, source, trace)
        return replace(self, block_size=block_size, block_size_source=source, model=model)

    def to_config(self) -> dict[str, Any]:
        """run.json's top level: the spec as asked, overwritten by what ran."""
        out = {**self.spec.to_config(), "eviction": self.eviction, "eviction_params": dict(self.eviction_params),
               "block_size": self.block_size, "block_size_source": self.block_size_source}
        if self.block_size != self.spec.block_size:
            out["requested_block_size"] = self.spec.block_size
        if not self.is_sim:
            out["model"] = self.model
            out["cluster_eviction"] = self.cluster_eviction
        return out


def split_list(value: str, flag: str) -> list[str]:
    items = [v.strip() for v in value.split(",")]
    if not items or any(not v for v in items):
        raise fail(f"{flag} {value!r}: give one name or a comma list without empty items")
    if len(set(items)) != len(items):
        raise fail(f"{flag} {value!r}: a name is repeated")
    return items


def resolve_evictions(eviction: str | None, target: str) -> list[str]:
    """The eviction label(s) of a replay. A real cluster's policy is fixed when it starts, so the HTTP path
    takes it from cluster.json (or 'vllm', the server's own, for bare URLs) and refuses a contradiction."""
    if target == "sim":
        return split_list(eviction or SIM_EVICTION, "--eviction")
    from kvbench.http.targets import parse_target

    running = parse_target(target).eviction or SERVER_EVICTION
    if eviction is None:
        return [running]
    asked = split_list(eviction, "--eviction")
    if len(asked) > 1:
        raise fail(f"--eviction {eviction}: a real cluster runs one policy, chosen at `kvbench cluster up`; "
                   f"start one cluster per policy")
    if "://" not in target and asked[0] != running:
        raise fail(f"--eviction {asked[0]}: {target} runs '{running}'; omit --eviction or start a cluster with it")
    return asked


def check_block_multiple(block_size: int, source: str, trace: Trace) -> None:
    """Hash ids coarsen only to multiples of the trace's block size; anything else would count blocks that
    no cache forms. The one place this is checked."""
    base = trace.block_size
    if block_size % base == 0:
        return
    who = f"{FLAG_SOURCE} {block_size}" if source == FLAG_SOURCE else f"block size {block_size} (from {source})"
    fix = f"use e.g. {FLAG_SOURCE} {base}" if source == FLAG_SOURCE else \
        f"serve with a block size that is a multiple of {base}"
    raise fail(f"{who}: must be a multiple of the trace's block size {base} ({trace.path or 'trace'}); {fix}, "
               f"or regenerate the trace with {FLAG_SOURCE} {math.gcd(block_size, base)}")


def check_eviction_name(name: str, real: bool) -> None:
    """A kvbench policy, or on a real target also the servers' own; one wording wherever it is asked."""
    from kvbench.cache import POLICIES

    if name not in POLICIES and not (real and name == SERVER_EVICTION):
        raise fail(f"--eviction {name}: unknown eviction policy (known: {', '.join(POLICIES)})")


def resolve(spec: ReplaySpec, trace: Trace | None = None, profile: LatencyProfile | None = None) -> Resolved:
    """The effective values of ``spec`` (and, given the trace, the checks that need it); refuses what the
    target cannot run. ``profile``: a latency profile object to simulate with instead of ``spec.profile``."""
    if spec.is_sim:
        resolved = _resolve_sim(spec, profile)
    else:
        resolved = _resolve_http(spec)
    if trace is not None and spec.is_sim:  # a real target's is checked once its servers report theirs
        check_block_multiple(resolved.block_size, resolved.block_size_source, trace)
    return resolved


def _resolve_sim(spec: ReplaySpec, profile: LatencyProfile | None) -> Resolved:
    from kvbench.cache import make_policy, policy_params
    from kvbench.routing import RouterConfig, make_router
    from kvbench.sim.latency import load_profile

    eviction = spec.eviction or SIM_EVICTION
    check_eviction_name(eviction, real=False)
    params = policy_params(eviction, spec.eviction_params)  # typed like the defaults; errors name the flag
    make_policy(eviction, seed=spec.seed, future=[[]], typed=True, **params)  # the constructor's own checks
    make_router(spec.router, RouterConfig(workers=spec.workers, block_size=spec.block_size, seed=spec.seed,
                                          params=dict(spec.router_params)))
    return Resolved(spec=replace(spec, eviction=eviction, eviction_params=params), block_size=spec.block_size,
                    block_size_source=FLAG_SOURCE, profile=profile or load_profile(spec.profile))


def _resolve_http(spec: ReplaySpec) -> Resolved:
    from kvbench.http.targets import parse_target
    from kvbench.routing import RouterConfig, make_router

    if spec.eviction_params:
        # a real server's policy and its parameters are fixed when it starts: taking them here would record
        # parameters that never ran
        raise fail("--eviction-param: a real cluster's eviction parameters are set when it starts "
                   "(`kvbench cluster up --eviction-param ...`); drop them here")
    (eviction,) = resolve_evictions(spec.eviction, spec.target)
    check_eviction_name(eviction, real=True)
    target = parse_target(spec.target)
    make_router(spec.router, RouterConfig(workers=len(target.urls), block_size=spec.block_size, seed=spec.seed,
                                          params=dict(spec.router_params)))
    block_size, source = (target.block_size, target.source) if target.block_size else (spec.block_size, FLAG_SOURCE)
    return Resolved(spec=replace(spec, eviction=eviction), block_size=block_size, block_size_source=source,
                    cluster_eviction=target.eviction or SERVER_EVICTION, model=spec.model or target.model,
                    target=target)


def validate_spec(spec: ReplaySpec) -> None:
    """Every check that needs no trace, before any work starts (a sweep or an experiment: all jobs first)."""
    resolve(spec)
