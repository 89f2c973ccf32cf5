"""Run one trace through the simulator and hand back rows in the result schema (a ``BackendResult``)."""

from __future__ import annotations

import math
from dataclasses import fields, replace
from typing import Any

import numpy as np
import pandas as pd

from kvbench.cache import POLICIES, PrefixCache, make_policy
from kvbench.cache.prefix import CacheStats
from kvbench.errors import fail
from kvbench.replay import BackendResult, ReplaySpec
from kvbench.routing import Completion, Router, RouterConfig, RouteRequest, make_router
from kvbench.sim.engine import (
    NULL_BLOCKS,
    ClusterSimulator,
    SchedulerConfig,
    SimRequest,
    Worker,
    use_generated_history,
)
from kvbench.sim.latency import LatencyProfile, load_profile, warn_outside_fit
from kvbench.timeline import SimSampler
from kvbench.trace import Trace, replay_order, warmup_mask


def _none(v: Any) -> Any:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    return v


def build_requests(trace: Trace, spec: ReplaySpec, order: np.ndarray | None = None
                   ) -> tuple[list[SimRequest], list[tuple[float, SimRequest]]]:
    """Requests in replay order, sessions chained turn to turn; returns them and the open-loop releases.
    With ``--warmup`` the warm-up's requests come first (``order``: :func:`replay_positions`' rows, if the
    caller has them already)."""
    df = trace.df
    if order is None:
        order = replay_positions(trace, spec)[0]
    hashes = trace.hash_ids_at(spec.block_size)
    cols = {c: df[c].to_numpy() for c in ("request_id", "input_tokens", "output_tokens", "session_id", "turn",
                                          "arrival_s", "think_s", "prompt", "prompt_token_ids")}
    reqs: list[SimRequest] = []
    sessions: dict[str, list[SimRequest]] = {}
    first: list[tuple[float, SimRequest]] = []
    scale = spec.time_scale
    for k, i in enumerate(order.tolist()):
        session = _none(cols["session_id"][i])
        h = hashes[i]
        route = RouteRequest(
            request_id=str(cols["request_id"][i]), input_tokens=int(cols["input_tokens"][i]),
            output_tokens=int(cols["output_tokens"][i]), hash_ids=h,
            prompt_token_ids=_none(cols["prompt_token_ids"][i]), prompt=_none(cols["prompt"][i]),
            session_id=session)
        r = SimRequest(k, route, h.tolist(), spec.block_size)
        r.think_s = float(cols["think_s"][i]) * scale
        reqs.append(r)
        if session is None:
            first.append((float(cols["arrival_s"][i]) * scale, r))
        else:
            sessions.setdefault(session, []).append(r)
    turn = cols["turn"]
    for turns in sessions.values():
        turns.sort(key=lambda r: (int(turn[order[r.idx]]), r.idx))
        head = turns[0]
        first.append((float(cols["arrival_s"][order[head.idx]]) * scale, head))
        for a, b in zip(turns, turns[1:]):
            a.next_turn = b
    first.sort(key=lambda x: (x[0], x[1].idx))
    return reqs, first


def replay_positions(trace: Trace, spec: ReplaySpec) -> tuple[np.ndarray, int]:
    """Trace rows in the order the simulator numbers its requests, and how many of them are warm-up.

    Replay order cut by ``--max-requests``, with the warm-up's rows moved first: they are released first,
    and belady's future, indexed by this number, then follows the order requests really arrive in.
    """
    order = replay_order(trace.df)
    if spec.max_requests is not None:
        order = order[: spec.max_requests]
    if not spec.warmup:
        return order, 0
    warm = warmup_mask(trace.df.iloc[order].reset_index(drop=True), spec.warmup)
    return np.concatenate([order[warm], order[~warm]]), int(warm.sum())


def run_sim(spec: ReplaySpec, trace: Trace, profile: LatencyProfile | None = None) -> BackendResult:
    """``profile`` (a profile object, e.g. one being fitted) replaces ``spec.profile`` and is not warned about."""
    if spec.eviction not in POLICIES:
        raise fail(f"--eviction {spec.eviction}: unknown eviction policy (known: {', '.join(POLICIES)})")
    if profile is None:
        profile = load_profile(spec.profile)
        range_warning = warn_outside_fit(profile, trace, spec.max_requests)
    else:
        range_warning = None
    capacity = None if spec.cache_tokens is None else spec.cache_tokens // spec.block_size
    belady: dict[str, Any] = {}
    if spec.eviction == "belady":
        run, router, belady = _belady_passes(spec, trace, profile, capacity)
    else:
        run = _Pass(spec, trace, profile, capacity)
        router = run.router
    reqs, workers, sim, interrupted = run.reqs, run.workers, run.sim, run.interrupted
    rows = result_rows(trace, reqs, run.n_warmup)
    stats = run.measured_stats()  # the counters since the warm-up's barrier
    queried = sum(s.queries_tokens for s in stats)
    config = {
        "profile": {**profile.to_config(), "range_warning": range_warning},
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
    return BackendResult(rows=rows, workers=[f"sim-{w}" for w in range(spec.workers)], config=config,
                         hit_rates=hit_rates, interrupted=interrupted,
                         timeline=None if run.sampler is None else run.sampler.frame())


class _Pass:
    """One simulation: its requests, workers, router, clock and whether Ctrl-C cut it short.

    ``futures`` (per worker: belady's future and hittable counts) and ``replay`` (a previous pass's
    routing to repeat instead of consulting the router) serve ``belady`` only.
    """

    def __init__(self, spec: ReplaySpec, trace: Trace, profile: LatencyProfile, capacity: int | None,
                 futures: list[tuple[list[list[int]], list[int]]] | None = None,
                 replay: list[int] | None = None, label: str = "") -> None:
        order, self.n_warmup = replay_positions(trace, spec)  # the warm-up's requests are numbered first
        self.reqs, first = build_requests(trace, spec, order)
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
                                 **spec.eviction_params)
            self.workers.append(Worker(w, PrefixCache(capacity, policy, spec.block_size), profile, sched))
        self.router = make_router(spec.router, RouterConfig(workers=spec.workers, block_size=spec.block_size,
                                                            seed=spec.seed, params=dict(spec.router_params),
                                                            cache_blocks=capacity))
        routing: Any = self.router
        if replay is not None:
            routing = _ReplayRouting(replay, self.reqs)
        elif futures is not None and spec.workers > 1:
            routing = _DropElsewhere(self.router, self.reqs, [w.cache.policy for w in self.workers])
        progress = _Progress(len(self.reqs), f"sim {spec.eviction} x {spec.router}{label}", spec.progress)
        self.sim = ClusterSimulator(self.workers, routing, self.reqs, on_done=progress.done)
        self.sampler = SimSampler(self.workers, spec.scrape_interval_s) if spec.scrape_interval_s else None
        self.sim.on_time = self.sampler
        self.interrupted = False
        with progress:
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
            keys.append(r.hashes)
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


def _belady_passes(spec: ReplaySpec, trace: Trace, profile: LatencyProfile,
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
    reqs = build_requests(trace, spec)[0]
    n = spec.workers
    knobs = make_policy("belady", future=[], **spec.eviction_params)
    max_passes, force = (knobs.passes, knobs.force_final) if n > 1 else (1, False)
    futures = [_policy_future(reqs, capacity)] * n
    assumed: list[int] | None = None
    router: Router | None = None
    history: list[dict[str, Any]] = []
    converged = n == 1  # one worker: the whole trace is its future
    for k in range(1, max_passes + 1):
        replay = assumed if force and k == max_passes else None
        run = _Pass(spec, trace, profile, capacity, futures, replay,
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


def result_rows(trace: Trace, reqs: list[SimRequest], warmup: int = 0) -> pd.DataFrame:
    """One row per request; the first ``warmup`` (numbered first by build_requests) are marked warm-up."""
    df = trace.df
    by_id = pd.Series(np.arange(len(df)), index=df["request_id"].astype(str))
    rows_idx = by_id[[r.route.request_id for r in reqs]].to_numpy()
    nan = float("nan")
    arrival, sent, first_s, done_s, ttft, e2e, tpot, itl, cached, status, error, worker = ([] for _ in range(12))
    for r in reqs:
        rel = nan if r.release_s is None else r.release_s
        ok = r.status == "ok"
        arrival.append(rel)
        sent.append(rel if r.worker >= 0 else nan)
        first_s.append(r.first_s if r.first_s is not None else nan)
        done_s.append(r.done_s if r.done_s is not None else nan)
        ttft.append(r.first_s - rel if ok else nan)
        e2e.append(r.done_s - rel if ok else nan)
        tpot.append((r.done_s - r.first_s) / (r.output - 1) if ok and r.output > 1 else nan)
        itl.append(np.diff(r.token_s).tolist() if ok and len(r.token_s) > 1 else None)
        cached.append(r.cached if r.adm is not None else None)
        status.append(r.status)
        error.append(r.error)
        worker.append(r.worker)
    sub = df.iloc[rows_idx]
    return pd.DataFrame({
        "request_id": [r.route.request_id for r in reqs],
        "session_id": sub["session_id"].to_numpy(),
        "turn": sub["turn"].to_numpy(),
        "group_id": sub["group_id"].to_numpy(),
        "worker": worker, "arrival_s": arrival, "sent_s": sent, "first_token_s": first_s, "done_s": done_s,
        "ttft_s": ttft, "e2e_s": e2e, "tpot_s": tpot, "itl_s": itl,
        # output_tokens: what was generated (the engine samples at least one token), not the trace's value
        "input_tokens": [r.input for r in reqs], "output_tokens": [r.generated for r in reqs],
        "cached_tokens": pd.array(cached, dtype="Int64"), "status": status, "error": error,
        "warmup": [r.idx < warmup for r in reqs],
    })


class _Progress:
    """A rich progress bar over finished requests, refreshed every ~0.5% to keep the hot loop cheap."""

    def __init__(self, total: int, label: str, enabled: bool):
        self.total = total
        self.enabled = enabled
        self.count = 0
        self.every = max(1, total // 200)
        self._bar = None
        self.label = label

    def __enter__(self) -> "_Progress":
        if self.enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), transient=False)
            self._bar.start()
            self._task = self._bar.add_task(self.label, total=self.total)
        return self

    def done(self, _r: SimRequest) -> None:
        self.count += 1
        if self._bar is not None and (self.count % self.every == 0 or self.count == self.total):
            self._bar.update(self._task, completed=self.count)

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=self.count)
            self._bar.stop()
