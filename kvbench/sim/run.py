"""Run one trace through the simulator and hand back rows in the result schema (a ``BackendResult``)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from kvbench.cache import POLICIES, PrefixCache, make_policy
from kvbench.errors import fail
from kvbench.replay import BackendResult, ReplaySpec
from kvbench.routing import RouterConfig, RouteRequest, make_router
from kvbench.sim.engine import ClusterSimulator, SchedulerConfig, SimRequest, Worker
from kvbench.sim.latency import load_profile
from kvbench.trace import Trace, replay_order


def _none(v: Any) -> Any:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    return v


def build_requests(trace: Trace, spec: ReplaySpec) -> tuple[list[SimRequest], list[tuple[float, SimRequest]]]:
    """Requests in replay order, sessions chained turn to turn; returns them and the open-loop releases."""
    df = trace.df
    order = replay_order(df)
    if spec.max_requests is not None:
        order = order[: spec.max_requests]
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


def _policy_future(reqs: list[SimRequest]) -> list[list[int]]:
    return [r.hashes for r in reqs]


def run_sim(spec: ReplaySpec, trace: Trace) -> BackendResult:
    if spec.eviction not in POLICIES:
        raise fail(f"--eviction {spec.eviction}: unknown eviction policy (known: {', '.join(POLICIES)})")
    profile = load_profile(spec.profile)
    reqs, first = build_requests(trace, spec)
    capacity = None if spec.cache_tokens is None else spec.cache_tokens // spec.block_size
    future = _policy_future(reqs) if spec.eviction == "belady" else None
    sched = SchedulerConfig(spec.max_batched_tokens, spec.max_num_seqs, spec.chunked_prefill)
    workers = []
    for w in range(spec.workers):
        policy = make_policy(spec.eviction, seed=spec.seed * 1000 + w, future=future, **spec.eviction_params)
        workers.append(Worker(w, PrefixCache(capacity, policy, spec.block_size), profile, sched))
    router = make_router(spec.router, RouterConfig(workers=spec.workers, block_size=spec.block_size,
                                                   seed=spec.seed, params=dict(spec.router_params),
                                                   cache_blocks=capacity))
    progress = _Progress(len(reqs), f"sim {spec.eviction} x {spec.router}", spec.progress)
    sim = ClusterSimulator(workers, router, reqs, on_done=progress.done)
    interrupted = False
    with progress:
        try:
            sim.run(first)
        except KeyboardInterrupt:
            interrupted = True
    rows = result_rows(trace, reqs)
    stats = [w.cache.stats for w in workers]
    queried = sum(s.queries_tokens for s in stats)
    config = {
        "profile": profile.to_config(),
        "simulator": {"chunked_prefill": spec.chunked_prefill, "cache_blocks_per_worker": capacity,
                      "allocation": "whole sequence at admission", "simulated_s": sim.now,
                      "steps_per_worker": [w.steps for w in workers],
                      "busy_s_per_worker": [w.busy_s for w in workers]},
        "router_state": router.describe(),
        "cache_stats": [{"queries_tokens": s.queries_tokens, "hit_tokens": s.hit_tokens,
                         "inserted_blocks": s.inserted_blocks, "evicted_blocks": s.evicted_blocks} for s in stats],
    }
    if future is not None:
        synced = workers[0].seek is not None
        config["simulator"]["belady_note"] = (
            "each worker's belady policy sees the whole trace's future (requests routed elsewhere included), "
            + ("positioned at each admitted request's replay index" if synced else
               "counting its own admissions as positions (approximate when workers > 1 or turns reorder)"))
    hit_rates = {"cache_counters": (sum(s.hit_tokens for s in stats) / queried) if queried else None}
    return BackendResult(rows=rows, workers=[f"sim-{w}" for w in range(spec.workers)], config=config,
                         hit_rates=hit_rates, interrupted=interrupted)


def result_rows(trace: Trace, reqs: list[SimRequest]) -> pd.DataFrame:
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
