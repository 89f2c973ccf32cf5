"""A discrete-event cluster simulator: a router in front of N workers, each a continuous-batching engine
with a prefix cache (:class:`kvbench.cache.PrefixCache`) driven by one eviction policy.

Scheduling follows vLLM v1's shape. Each step first gives one token to every decoding sequence, then
continues unfinished prompt chunks, then admits waiting requests in FIFO order while the step's token
budget (``max_batched_tokens``) and ``max_num_seqs`` allow. A request is admitted only when the cache can
hold its whole sequence (prompt + output blocks, allocated up front instead of vLLM's incremental
allocation with preemption); when it cannot, it and everything behind it wait (head-of-line, as FCFS).
The cached prefix is skipped (at most ``(input - 1) // block_size`` blocks: the last prompt token is always
recomputed). The first token appears at the end of the step that completes the prompt; the prompt's
blocks become cached then (``commit``) and the whole sequence is released when the last token is out.
With ``chunked_prefill=False`` a prompt is computed in one step and a step holds new prompts only while
they fit the budget (a prompt larger than the budget runs alone).

Times come from :class:`kvbench.sim.latency.LatencyProfile`. Requests are released open loop at
``arrival_s * time_scale``; later turns of a session are released closed loop, ``think_s * time_scale``
after the previous turn finished. The router sees routing decisions and completions only.
"""

from __future__ import annotations

import heapq
from collections import deque
from dataclasses import dataclass
from typing import Callable

from kvbench.cache import PrefixCache
from kvbench.routing.base import Completion, Router, RouteRequest
from kvbench.sim.latency import LatencyProfile, attn_pairs

_ARRIVE, _STEP = 0, 1


class SimRequest:
    """Mutable state of one request in the simulation."""

    __slots__ = ("idx", "route", "input", "output", "hashes", "total_blocks", "max_hit", "release_s",
                 "worker", "adm", "computed", "cached", "generated", "first_s", "done_s", "token_s",
                 "status", "error", "next_turn", "think_s")

    def __init__(self, idx: int, route: RouteRequest, hashes: list[int], block_size: int):
        self.idx = idx
        self.route = route
        self.input = route.input_tokens
        self.output = max(1, route.output_tokens)  # one sampled token ends any prefill
        self.hashes = hashes
        # KV slots as vLLM allocates them: the prompt plus every generated token but the last, which is
        # sampled and never fed back through the model.
        self.total_blocks = -(-(self.input + self.output - 1) // block_size)
        self.max_hit = max(0, (self.input - 1) // block_size)
        self.release_s: float | None = None
        self.worker = -1
        self.adm = None
        self.computed = 0  # prompt tokens done (cached ones count as done)
        self.cached = 0
        self.generated = 0
        self.first_s: float | None = None
        self.done_s: float | None = None
        self.token_s: list[float] = []
        self.status = "cancelled"
        self.error: str | None = None
        self.next_turn: SimRequest | None = None
        self.think_s = 0.0


@dataclass
class SchedulerConfig:
    max_batched_tokens: int = 8192
    max_num_seqs: int = 256
    chunked_prefill: bool = True


class Worker:
    def __init__(self, index: int, cache: PrefixCache, profile: LatencyProfile, sched: SchedulerConfig):
        self.index = index
        self.cache = cache
        self.profile = profile
        self.sched = sched
        self.waiting: deque[SimRequest] = deque()
        self.running: list[SimRequest] = []
        self.busy = False
        self.step_prefill: list[tuple[SimRequest, int]] = []
        self.step_decode: list[SimRequest] = []
        self.steps = 0
        self.busy_s = 0.0
        # offline policies (belady) index their future by the request's position in replay order; a
        # worker admits only its share, out of that order, so tell the policy where it is when it can listen
        self.seek = getattr(cache.policy, "seek", None)

    def plan_step(self) -> float | None:
        """Choose the next step's work; its duration, or None when there is nothing to do."""
        budget = self.sched.max_batched_tokens
        chunked = self.sched.chunked_prefill
        decode: list[SimRequest] = []
        prefill: list[tuple[SimRequest, int]] = []
        d_ctx = 0
        pairs = 0.0
        p_tokens = 0
        for r in self.running:
            if r.first_s is not None:
                decode.append(r)
                d_ctx += r.input + r.generated
        budget -= len(decode)
        for r in self.running:
            if r.first_s is None and budget > 0:
                c = min(r.input - r.computed, budget)
                prefill.append((r, c))
                pairs += attn_pairs(c, r.computed)
                p_tokens += c
                budget -= c
        cache = self.cache
        waiting = self.waiting
        while waiting and budget > 0 and len(self.running) < self.sched.max_num_seqs:
            r = waiting[0]
            if not chunked and (decode or prefill):
                hit = min(cache.match(r.hashes), r.max_hit)
                if r.input - hit * cache.block_size > budget:
                    break
            if self.seek is not None:
                self.seek(r.idx)
            adm = cache.admit(r.hashes, r.total_blocks, r.max_hit, r.input)
            if adm is None:
                break  # memory is short: wait for a running request to finish (FCFS)
            waiting.popleft()
            r.adm = adm
            r.cached = adm.hit_tokens
            r.computed = adm.hit_tokens
            self.running.append(r)
            remaining = r.input - r.computed
            c = min(remaining, budget) if chunked else remaining
            prefill.append((r, c))
            pairs += attn_pairs(c, r.computed)
            p_tokens += c
            budget -= c
        if not decode and not prefill:
            return None
        self.step_prefill = prefill
        self.step_decode = decode
        return self.profile.step_time(p_tokens, pairs, len(decode), d_ctx)


class ClusterSimulator:
    def __init__(self, workers: list[Worker], router: Router, requests: list[SimRequest],
                 on_done: Callable[[SimRequest], None] | None = None):
        self.workers = workers
        self.router = router
        self.requests = requests
        self.on_done = on_done
        self.events: list[tuple[float, int, int, object]] = []
        self.seq = 0
        self.now = 0.0
        self.finished = 0

    def push(self, t: float, kind: int, payload: object) -> None:
        self.seq += 1
        heapq.heappush(self.events, (t, self.seq, kind, payload))

    def release(self, r: SimRequest, t: float) -> None:
        r.release_s = t
        self.push(t, _ARRIVE, r)

    def run(self, first: list[tuple[float, SimRequest]]) -> None:
        for t, r in first:
            self.release(r, t)
        events = self.events
        pop = heapq.heappop
        while events:
            t, _, kind, payload = pop(events)
            self.now = t
            if kind == _STEP:
                self._step_done(payload, t)  # type: ignore[arg-type]
            else:
                self._arrive(payload, t)  # type: ignore[arg-type]

    def _arrive(self, r: SimRequest, now: float) -> None:
        cap = self.workers[0].cache.capacity_blocks
        if cap is not None and r.total_blocks > cap:
            bs = self.workers[0].cache.block_size
            r.status = "error"
            r.error = (f"request needs {r.total_blocks} KV blocks ({r.input} prompt + {r.output} output tokens) "
                       f"but a worker's cache holds {cap} blocks ({cap * bs} tokens); raise --cache-tokens")
            r.done_s = now
            self._finish(r, now)
            return
        w = self.router.route(r.route, now)
        r.worker = w
        worker = self.workers[w]
        worker.waiting.append(r)
        if not worker.busy:
            self._start_step(worker, now)

    def _start_step(self, worker: Worker, now: float) -> None:
        dt = worker.plan_step()
        if dt is None:
            worker.busy = False
            return
        worker.busy = True
        worker.steps += 1
        worker.busy_s += dt
        self.push(now + dt, _STEP, worker)

    def _step_done(self, worker: Worker, now: float) -> None:
        cache = worker.cache
        ended: list[SimRequest] = []
        for r, c in worker.step_prefill:
            r.computed += c
            if r.computed >= r.input:
                cache.commit(r.adm)
                r.first_s = now
                r.generated = 1
                r.token_s.append(now)
                if r.generated >= r.output:
                    ended.append(r)
        for r in worker.step_decode:
            r.generated += 1
            r.token_s.append(now)
            if r.generated >= r.output:
                ended.append(r)
        if ended:
            gone = set(id(r) for r in ended)
            worker.running = [r for r in worker.running if id(r) not in gone]
            for r in ended:
                cache.release(r.adm)
                r.status = "ok"
                r.done_s = now
                self.router.complete(r.route, r.worker, now, Completion(
                    ttft_s=r.first_s - r.release_s, e2e_s=now - r.release_s, cached_tokens=r.cached,
                    output_tokens=r.output))
                self._finish(r, now)
        self._start_step(worker, now)

    def _finish(self, r: SimRequest, now: float) -> None:
        self.finished += 1
        nxt = r.next_turn
        if nxt is not None:  # closed loop: the session's next turn after its think time
            self.release(nxt, now + nxt.think_s)
        if self.on_done is not None:
            self.on_done(r)
