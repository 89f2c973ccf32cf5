"""Run one trace through the simulator and hand back rows in the result schema (a ``BackendResult``)."""

from __future__ import annotations

import gc
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import fields, replace
from typing import Any

import pandas as pd

from kvbench.cache import PrefixCache, make_policy
from kvbench.cache.prefix import CacheStats
from kvbench.plan import ReplayPlan, make_plan
from kvbench.progress import ReplayProgress
from kvbench.record import BackendResult, RowRecorder
from kvbench.resolve import Resolved, resolve
from kvbench.routing import Completion, Router, RouterConfig, RouteRequest, make_router
from kvbench.sim.engine import (
    NULL_BLOCKS,
    ClusterSimulator,
    SchedulerConfig,
    SimRequest,
    Worker,
    use_generated_history,
)
from kvbench.sim.latency import LatencyProfile, warn_outside_fit
from kvbench.spec import ReplaySpec
from kvbench.timeline import SimSampler
from kvbench.trace import Trace


def build_requests(plan: ReplayPlan) -> tuple[list[SimRequest], list[tuple[float, SimRequest]]]:
    """The plan's requests numbered by position, each session's turns chained; returns them and the
    releases of the plan's units (open-loop requests and session heads)."""
    df = plan.trace.df
    hashes = plan.hashes
    cols = {c: df[c].to_numpy() for c in ("request_id", "input_tokens", "output_tokens", "session_id",
                                          "prompt", "prompt_token_ids")}
    think = plan.think_s
    reqs: list[SimRequest] = []
    for k, i in enumerate(plan.order.tolist()):
        h = hashes[i]
        route = RouteRequest(
            request_id=str(cols["request_id"][i]), input_tokens=int(cols["input_tokens"][i]),
            output_tokens=int(cols["output_tokens"][i]), hash_ids=h,
            prompt_token_ids=_none(cols["prompt_token_ids"][i]), prompt=_none(cols["prompt"][i]),
            session_id=_none(cols["session_id"][i]))
        r = SimRequest(k, route, h, plan.block_size)
        r.think_s = float(think[i])
        reqs.append(r)
    first = []
    for unit in plan.units:
        turns = [reqs[k] for k in unit.positions]
        first.append((unit.start_s, turns[0]))
        for a, b in zip(turns, turns[1:]):
            a.next_turn = b
    return reqs, first


def _none(v: Any) -> Any:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    return v


def run_sim(spec: ReplaySpec | Resolved, trace: Trace, profile: LatencyProfile | None = None,
            plan: ReplayPlan | None = None) -> BackendResult:
    """Simulate a resolved replay (a bare spec is resolved here). ``profile`` (a profile object, e.g. one being
    fitted) replaces the spec's and is not warned about."""
    resolved = spec if isinstance(spec, Resolved) else resolve(spec, trace, profile=profile)
    plan = plan or make_plan(resolved, trace)
    spec = resolved.spec
    profile_obj = resolved.profile
    assert profile_obj is not None
    range_warning = warn_outside_fit(profile_obj, trace, spec.max_requests) if profile is None else None
    capacity = None if spec.cache_tokens is None else spec.cache_tokens // plan.block_size
    belady: dict[str, Any] = {}
    if spec.eviction == "belady":
        run, router, belady = _belady_passes(resolved, plan, capacity)
    else:
        run = _Pass(resolved, plan, capacity)
        router = run.router
    reqs, workers, sim, interrupted = run.reqs, run.workers, run.sim, run.interrupted
    rows = result_rows(plan, reqs)
    stats = run.measured_stats()  # the counters since the warm-up's barrier
    queried = sum(s.queries_tokens for s in stats)
    config = {
        "profile": {**profile_obj.to_config(), "range_warning": range_warning},
        "simulator": {"chunked_prefill": spec.chunked_prefill, "cache_blocks_per_worker": capacity,
                      "allocation": "block by block per step, preempting the last admitted (vLLM v1)",
                      "usable_blocks_per_worker": None if capacity is None else capacity - NULL_BLOCKS,
                      "preemptions_per_worker": [w.preemptions for w in workers], "simulated_s": sim.now,
                      "steps_per_worker": [w.steps for w in workers],
                      "busy_s_per_worker": [w.busy_s for w in workers],
                      "history": spec.history, "history_linked_turns": run.linked},
        "router_state": router.describe(),
        "cache_stats": [{"queries_tokens": s.queries_tokens, "hit_tokens": s.hit_tokens,
                         "inserted_blocks": s.inserted_blocks, "evicted_blocks": s.evicted_blocks} for s in stats],
    }
    config["simulator"].update(belady)
    if run.n_warmup:
        config["simulator"]["warmup"] = {"requests": run.n_warmup, "barrier_s": run.barrier_s,
                                         "shift_s": run.shift_s}
    hit_rates = {"cache_counters": (sum(s.hit_tokens for s in stats) / queried) if queried else None}
    return BackendResult(rows=rows, workers=[f"sim-{w}" for w in range(spec.workers)], resolved=resolved,
                         config=config, hit_rates=hit_rates, interrupted=interrupted,
                         timeline=None if run.sampler is None else run.sampler.frame())


@contextmanager
def _no_gc_walks() -> Iterator[None]:
    """No cyclic garbage collection during the simulation.

    The simulation allocates millions of small containers (block keys, token times) that live until its end,
    and each collection walked them again (0.5-1 s of a 15 s one-hour trace). Its objects form no reference
    cycles, so reference counting frees them as before; the collector resumes afterwards (peak memory was the
    same in the measurements)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


class _Pass:
    """One simulation: its requests, workers, router, clock and whether Ctrl-C cut it short.

    ``futures`` (per worker: belady's future and hittable counts) and ``replay`` (a previous pass's
    routing to repeat instead of consulting the router) serve ``belady`` only.
    """

    def __init__(self, resolved: Resolved, plan: ReplayPlan, capacity: int | None,
                 futures: list[tuple[list[list[int]], list[int]]] | None = None,
                 replay: list[int] | None = None, label: str = "") -> None:
        spec = resolved.spec
        self.n_warmup = plan.n_warmup  # the warm-up's requests are numbered first
        self.reqs, first = build_requests(plan)
        self.barrier_s: float | None = None
        self.shift_s: float | None = None
        self._at_barrier: list[CacheStats] | None = None
        # --history generated: a turn's output blocks are the next turn's prompt blocks holding the answer
        self.linked = use_generated_history(self.reqs) if spec.history == "generated" else None
        sched = SchedulerConfig(spec.max_batched_tokens, spec.max_num_seqs, spec.chunked_prefill)
        self.workers = []
        for w in range(spec.workers):
            future, hittable = futures[w] if futures is not None else (None, None)
            policy = make_policy(spec.eviction, seed=spec.seed * 1000 + w, future=future, hittable=hittable,
                                 typed=True, **spec.eviction_params)
            self.workers.append(Worker(w, PrefixCache(capacity, policy, plan.block_size), resolved.profile, sched))
        self.router = make_router(spec.router, RouterConfig(workers=spec.workers, block_size=plan.block_size,
                                                            seed=spec.seed, params=dict(spec.router_params),
                                                            cache_blocks=capacity))
        routing: Any = self.router
        if replay is not None:
            routing = _ReplayRouting(replay, self.reqs)
        elif futures is not None and spec.workers > 1:
            routing = _DropElsewhere(self.router, self.reqs, [w.cache.policy for w in self.workers])
        progress = ReplayProgress(len(self.reqs), f"sim {spec.eviction} x {spec.router}{label}", spec.progress)
        self.sim = ClusterSimulator(self.workers, routing, self.reqs, on_done=lambda _r: progress.advance())
        self.sampler = SimSampler(self.workers, spec.scrape_interval_s) if spec.scrape_interval_s else None
        self.sim.on_time = self.sampler
        self.interrupted = False
        with progress, _no_gc_walks():
            try:
                self._run(first)
                if self.sampler is not None:
                    self.sampler.finish(self.sim.now)
            except KeyboardInterrupt:
                self.interrupted = True

    def _run(self, first: list[tuple[float, SimRequest]]) -> None:
        """Without warm-up, one run. With it, a barrier: the warm-up's releases run until every warm-up
        request has finished, then the measured releases follow, shifted so the first is at that moment.
        Caches and router carry over, as on a real cluster."""
        if not self.n_warmup:
            self.sim.run(first)
            return
        warm = [(t, r) for t, r in first if r.idx < self.n_warmup]
        rest = [(t, r) for t, r in first if r.idx >= self.n_warmup]
        self.sim.run(warm)
        self.barrier_s = max((r.done_s for r in self.reqs[: self.n_warmup] if r.done_s is not None),
                             default=self.sim.now)
        self._at_barrier = [replace(w.cache.stats) for w in self.workers]
        if rest:
            self.shift_s = self.barrier_s - rest[0][0]  # ``first`` is sorted by time
            self.sim.run([(t + self.shift_s, r) for t, r in rest])

    def measured_stats(self) -> list[CacheStats]:
        """Each worker's cache counters over the measured requests (all of them without warm-up)."""
        now = [w.cache.stats for w in self.workers]
        if self._at_barrier is None:
            return now
        return [CacheStats(*(getattr(a, f.name) - getattr(b, f.name) for f in fields(CacheStats)))
                for a, b in zip(now, self._at_barrier)]

    def hit_rate(self) -> float | None:
        stats = self.measured_stats()
        queried = sum(s.queries_tokens for s in stats)
        return sum(s.hit_tokens for s in stats) / queried if queried else None


# --- belady: each worker's future is the requests routed to it ---------------------------------------
def _policy_future(reqs: list[SimRequest], capacity: int | None, assignment: list[int] | None = None,
                   worker: int = 0) -> tuple[list[list[int]], list[int]]:
    """belady's future for one worker, indexed by replay position (what ``seek`` counts): each request's
    prompt blocks and how many can hit (at most ``(input - 1) // block_size``: the last prompt token is
    always recomputed). Empty for a request that will fail (larger than a worker's cache) and, given the
    ``assignment`` of a previous pass, for one routed to another worker."""
    keys: list[list[int]] = []
    hittable: list[int] = []
    for r in reqs:
        fails = capacity is not None and r.total_blocks > capacity - NULL_BLOCKS
        if fails or (assignment is not None and assignment[r.idx] != worker):
            keys.append([])
            hittable.append(0)
        else:
            keys.append(r.hashes.tolist())
            hittable.append(min(len(r.hashes), r.max_hit))
    return keys, hittable


class _DropElsewhere:
    """Wraps the router: a request routed to one worker is dropped from every other worker's future, so
    blocks whose remaining uses went elsewhere stop looking urgent there."""

    def __init__(self, router: Router, reqs: list[SimRequest], policies: list) -> None:
        self.router = router
        self._idx = {id(r.route): r.idx for r in reqs}
        self._policies = policies

    def route(self, req: RouteRequest, now: float) -> int:
        w = self.router.route(req, now)
        i = self._idx[id(req)]
        for v, policy in enumerate(self._policies):
            if v != w:
                policy.drop(i)
        return w

    def complete(self, req: RouteRequest, worker: int, now: float, result: Completion) -> None:
        self.router.complete(req, worker, now, result)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.router, name)  # anything else the simulator may ask of its router


class _ReplayRouting:
    """Stands in for the router in belady's forced final pass: sends each request where a previous pass's
    routing (by the real router) sent it, so every worker's future is exact."""

    def __init__(self, assignment: list[int], reqs: list[SimRequest]) -> None:
        self._where = {id(r.route): assignment[r.idx] for r in reqs}

    def route(self, req: RouteRequest, now: float) -> int:
        return self._where[id(req)]

    def complete(self, req: RouteRequest, worker: int, now: float, result: Completion) -> None:
        pass


def _belady_passes(resolved: Resolved, plan: ReplayPlan,
                   capacity: int | None) -> tuple[_Pass, Router, dict[str, Any]]:
    """Runs belady so that each worker's future is the requests routed to it.

    Pass 1 gives every worker the whole trace and drops a request from a worker's future when it is routed
    elsewhere. Pass k > 1 gives each worker the requests pass k-1 routed to it. Routing depends on timing,
    which depends on the hits, so the routing can move: passes stop when one reproduces its assumed routing
    (a fixed point: every worker's future was exact) or after ``passes``; if that last pass would not be
    exact and ``force_final`` is set, it replays the previous pass's routing instead of consulting the
    router, so every worker's future is exact for that routing. Returns the final pass, the router whose
    state to record (the last one consulted) and the run.json entries.
    """
    spec = resolved.spec
    reqs = build_requests(plan)[0]
    n = spec.workers
    knobs = make_policy("belady", future=[], typed=True, **spec.eviction_params)
    max_passes, force = (knobs.passes, knobs.force_final) if n > 1 else (1, False)
    futures = [_policy_future(reqs, capacity)] * n
    assumed: list[int] | None = None
    router: Router | None = None
    history: list[dict[str, Any]] = []
    converged = n == 1  # one worker: the whole trace is its future
    for k in range(1, max_passes + 1):
        replay = assumed if force and k == max_passes else None
        run = _Pass(resolved, plan, capacity, futures, replay,
                    f" (belady pass {k}/{max_passes})" if max_passes > 1 else "")
        if replay is None:
            router = run.router
        got = [r.worker for r in run.reqs]
        share = None
        if assumed is not None:
            routed = [i for i, w in enumerate(got) if w >= 0]
            share = sum(got[i] == assumed[i] for i in routed) / len(routed) if routed else 1.0
        history.append({"pass": k, "future": "whole trace" if assumed is None else f"pass {k - 1} routing",
                        "routing": "router" if replay is None else f"replayed from pass {k - 1}",
                        "routed_as_assumed": share, "hit_rate": run.hit_rate()})
        if run.interrupted or replay is not None:
            break
        if assumed is not None and got == assumed:
            converged = True
            break
        assumed = got
        futures = [_policy_future(reqs, capacity, assumed, w) for w in range(n)]
    assert router is not None
    last = history[-1]
    info = {"passes": len(history), "max_passes": max_passes, "force_final": force, "converged": converged,
            "final_routing": last["routing"], "routed_as_assumed": last["routed_as_assumed"],
            "exact_futures": converged or last["routing"] != "router", "per_pass": history}
    return run, router, {"belady": info, "belady_note": _belady_statement(n, info)}


def _belady_statement(workers: int, info: dict[str, Any]) -> str:
    """What this run's belady hit rate is, exactly (docs/belady.md)."""
    rule = ("each worker evicts the evictable leaf whose next use is furthest (the first not yet admitted "
            "request, in replay order, that can hit the block; never, if one that re-caches it without a hit "
            "comes first), blocks an admitted request will re-cache first. On one cache serving one request "
            "at a time in replay order this is the optimum unless a block-aligned prompt is a proper prefix "
            "of another prompt; with batching and queueing it is the same rule, not a proven optimum")
    if workers == 1:
        return "One worker, whose future is the whole trace: " + rule + "."
    k = info["passes"]
    if info["converged"]:
        how = (f"pass {k} routed every request as pass {k - 1} did, so each worker's future was exactly the "
               "requests the router sent it")
    elif info["exact_futures"]:
        how = (f"the router ran in passes 1-{k - 1}; pass {k} replayed pass {k - 1}'s routing without "
               "consulting the router, so each worker's future was exactly the requests sent to it")
    elif k == 1:
        how = ("one pass: each worker's future was the whole trace minus the requests already routed "
               "elsewhere (approximate)")
    else:
        how = (f"not converged after {k} passes: {info['routed_as_assumed']:.1%} of the requests went to "
               f"the worker pass {k - 1} sent them to, the others were planned for the wrong worker "
               "(approximate)")
    return (f"{workers} workers; {how}; {rule}. It bounds online policies only under the same routing of "
            "requests to workers, and another policy under the same router may route differently.")


def result_rows(plan: ReplayPlan, reqs: list[SimRequest]) -> pd.DataFrame:
    """One row per request, in plan order (the warm-up's first, marked by the plan)."""
    rec = RowRecorder(plan)
    for r in reqs:
        routed = r.worker >= 0
        rec.record(int(plan.order[r.idx]), worker=r.worker, status=r.status, error=r.error,
                   arrival_s=r.release_s, sent_s=r.release_s if routed else None, first_token_s=r.first_s,
                   done_s=r.done_s, token_times=r.token_s, input_tokens=r.input,
                   # what was generated (the engine samples at least one token), not the trace's value
                   output_tokens=r.generated, cached_tokens=r.cached if r.adm is not None else None)
    return rec.frame(plan.order)
