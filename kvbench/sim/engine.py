"""A discrete-event cluster simulator: a router in front of N workers, each a continuous-batching engine
with a prefix cache (:class:`kvbench.cache.PrefixCache`) driven by one eviction policy.

Each worker follows vLLM v1's scheduler (FCFS) and KV-cache manager (0.32):

- A step first gives the running requests, in admission order, the tokens they need next: one for a
  decoding request, the rest of its prompt (up to the step's budget, ``max_batched_tokens``) for one
  still in prefill. Then, unless the step preempted someone, it admits waiting requests in order while
  the budget and ``max_num_seqs`` allow; the first that cannot be admitted stops the queue.
- A request holds KV blocks for the tokens computed so far, taken step by step for the tokens each step
  computes (the last sampled token never is). Every full block is cached when the step computing its
  last token is scheduled: prompt blocks chunk by chunk, output blocks as decoding fills them (output
  block keys: :meth:`SimRequest.block_keys`). Cached blocks stay cached, evictable, once freed.
- A waiting request is admitted when blocks for its whole known sequence fit (vLLM's default
  ``scheduler_reserve_full_isl``), hits included; its hit is its longest cached prefix, at most
  ``(tokens - 1) // block_size`` blocks (the last token is always recomputed).
- A running request that cannot get a block preempts the last admitted running request, possibly
  itself: its blocks are freed (tail first), it goes back to the front of the waiting queue and later
  recomputes its prompt and output so far, hitting what is left of its own blocks. Its
  ``cached_tokens`` stay those of its first admission, and only first admissions count as cache
  queries, as in vLLM's counters.
- ``--cache-tokens`` is a server's ``num_gpu_blocks * block_size``: one block is vLLM's null block.

A token is sampled at the end of each step that computes a request's last known token; the first ends
its TTFT, and the request is released when its last token is out. With ``chunked_prefill=False`` a
request's prompt is computed in one step, and a step takes a new prompt only while it fits the budget
(a prompt larger than the budget runs alone).

Times come from :class:`kvbench.sim.latency.LatencyProfile`. Requests are released open loop at
``arrival_s * time_scale``; later turns of a session are released closed loop, ``think_s * time_scale``
after the previous turn finished. A released request is routed at once (the router sits in front of the
servers) and joins its worker's waiting queue the profile's front-end time later (``request_s``, spread by
``request_sigma``: :func:`kvbench.sim.latency.frontend_delay`): a server's front end (HTTP, tokenization)
works before its engine can schedule the request, and works on many requests at once, so the term is a
delay, not a queue. TTFT and end-to-end times count from the release, so they include it.
The router sees routing decisions and completions only.
"""

from __future__ import annotations

import hashlib
import heapq
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from kvbench.cache import PrefixCache
from kvbench.routing.base import Completion, Router, RouteRequest
from kvbench.sim.latency import LatencyProfile, attn_pairs, frontend_delay

_ARRIVE, _STEP, _READY = 0, 1, 2
NULL_BLOCKS = 1  # blocks of a vLLM worker's pool that never hold KV (block 0, the null block)


class SimRequest:
    """Mutable state of one request in the simulation."""

    __slots__ = ("adm", "cached", "computed", "done_s", "error", "first_s", "full_blocks", "generated",
                 "hashes", "idx", "input", "keys", "max_hit", "next_turn", "output", "preemptions",
                 "prefill_end", "release_s", "route", "status", "think_s", "token_s", "total_blocks",
                 "worker")

    def __init__(self, idx: int, route: RouteRequest, hashes: list[int], block_size: int):
        self.idx = idx
        self.route = route
        self.input = route.input_tokens
        self.output = max(1, route.output_tokens)  # one sampled token ends any prefill
        self.hashes = hashes  # the prompt's full blocks (the trace's hash ids)
        # KV slots as vLLM allocates them: the prompt plus every generated token but the last, which is
        # sampled and never fed back through the model.
        self.total_blocks = -(-(self.input + self.output - 1) // block_size)
        self.full_blocks = (self.input + self.output - 1) // block_size  # the blocks it ever caches
        self.keys: list[int] | None = None  # their keys (block_keys), made when first needed
        self.max_hit = max(0, (self.input - 1) // block_size)
        self.release_s: float | None = None
        self.worker = -1
        self.adm = None  # the blocks it holds (its latest admission)
        self.computed = 0  # tokens whose KV is computed (hits count), of the input + generated known ones
        self.prefill_end = 0  # tokens known at its latest admission: computing them is its prefill
        self.cached = 0  # hit tokens at its first admission
        self.generated = 0
        self.preemptions = 0
        self.first_s: float | None = None
        self.done_s: float | None = None
        self.token_s: list[float] = []
        self.status = "cancelled"
        self.error: str | None = None
        self.next_turn: SimRequest | None = None
        self.think_s = 0.0

    def block_keys(self) -> list[int]:
        """Keys of the request's full blocks: the prompt's hash ids, then keys for the blocks that hold
        output (the first may also hold the prompt's last tokens).

        The trace cannot know what a server generates, so an output block's key is made from the
        request id and chained from the prompt's last key: no other request's prompt can hit it, and the
        request itself hits it when it recomputes after a preemption. ``use_generated_history`` gives
        session turns the keys of the next turn's prompt instead."""
        keys = self.keys
        if keys is None:
            n = self.full_blocks - len(self.hashes)
            keys = self.hashes
            if n > 0:
                keys = keys + output_keys(self.route.request_id, keys[-1] if keys else None, n)
            self.keys = keys
        return keys


_MASK64 = (1 << 64) - 1


def _mix64(x: int) -> int:
    """splitmix64's finaliser: a bijection of 64-bit integers that scatters every input bit."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def output_keys(request_id: str, after: int | None, n: int) -> list[int]:
    """``n`` chained int64 block keys (like trace hash ids) for a request's output blocks, following the
    prompt's last key ``after`` (None: the prompt has no full block); a pure function of its arguments,
    so reruns agree."""
    if n <= 0:
        return []
    seed = int.from_bytes(hashlib.blake2b(request_id.encode(), digest_size=8, person=b"kvbench-output")
                          .digest(), "little")
    key = (0 if after is None else after) & _MASK64
    out = []
    for _ in range(n):
        key = _mix64(key ^ seed)
        out.append(key - (1 << 64) if key >> 63 else key)
    return out


def use_generated_history(requests: Iterable[SimRequest]) -> int:
    """Model ``--history generated``: a session turn's output blocks get the keys of the next turn's
    prompt blocks that hold the answer, so the next turn hits them as it would on a server that is sent
    the answer it generated. A turn is linked only when the next prompt extends its prompt (equal hash
    ids) by at least its output; the trace's recorded answer stands for the generated one. Returns how
    many turns were linked."""
    linked = 0
    for r in requests:
        nxt = r.next_turn
        if nxt is None:
            continue
        p = len(r.hashes)
        end = r.full_blocks
        if (nxt.input < r.input + r.route.output_tokens or len(nxt.hashes) < end
                or nxt.hashes[:p] != r.hashes):
            continue
        r.keys = r.hashes + nxt.hashes[p:end]
        linked += 1
    return linked


@dataclass
class SchedulerConfig:
    max_batched_tokens: int = 8192
    max_num_seqs: int = 256
    chunked_prefill: bool = True


class Worker:
    """One vLLM engine: its scheduler's queues and its KV cache, whose capacity (the server's
    ``num_gpu_blocks``) loses the null block here."""

    def __init__(self, index: int, cache: PrefixCache, profile: LatencyProfile, sched: SchedulerConfig):
        self.index = index
        # --cache-tokens is the server's KV capacity, num_gpu_blocks * block_size; vLLM's pool gives one
        # of those blocks to its null block, which never holds KV
        cache.set_aside(NULL_BLOCKS)
        self.cache = cache
        self.profile = profile
        self.sched = sched
        self.waiting: deque[SimRequest] = deque()
        self.running: list[SimRequest] = []  # in admission order: the last is preempted first
        self.busy = False
        self.batch: list[tuple[SimRequest, int]] = []  # the planned step: requests and tokens they compute
        self.steps = 0
        self.busy_s = 0.0
        self.preemptions = 0
        # offline policies (belady) index their future by the request's position in replay order; a
        # worker admits only its share, out of that order, so tell the policy where it is when it can listen
        self.seek = getattr(cache.policy, "seek", None)

    def plan_step(self) -> float | None:
        """Choose the next step's work (vLLM's ``Scheduler.schedule``); its duration, or None when there is
        nothing to do."""
        cache = self.cache
        bs = cache.block_size
        budget = self.sched.max_batched_tokens
        chunked = self.sched.chunked_prefill
        running = self.running
        batch: list[tuple[SimRequest, int]] = []
        p_tokens = 0
        pairs = 0.0
        decodes = 0
        d_ctx = 0
        preempted = False
        i = 0
        while i < len(running) and budget > 0:
            r = running[i]
            n = min(r.input + r.generated - r.computed, budget)
            upto = r.computed + n
            adm = r.adm
            blocks = -(-upto // bs)
            if blocks > len(adm.pinned) + adm.fresh_blocks and not cache.grow(adm, blocks):
                preempted = True
                if not self._preempt_for(r, blocks):
                    break  # r itself went back to waiting: there is no room for those after it either
            if upto // bs > len(adm.pinned):
                cache.commit(adm, upto // bs)
            batch.append((r, n))
            budget -= n
            if r.computed >= r.prefill_end:
                decodes += 1
                d_ctx += upto
            else:
                p_tokens += n
                pairs += attn_pairs(n, r.computed)
            i += 1
        waiting = self.waiting
        # vLLM admits no one in a step that preempted
        while not preempted and waiting and budget > 0 and len(running) < self.sched.max_num_seqs:
            r = waiting[0]
            known = r.input + r.generated  # the prompt, and the output so far of a preempted request
            keys = r.block_keys()
            max_hit = (known - 1) // bs
            first = r.adm is None
            if not chunked and batch:
                hit = min(cache.match(keys), max_hit)
                if known - hit * bs > budget:
                    break
            if first and self.seek is not None:
                self.seek(r.idx)
            adm = cache.admit(keys, -(-known // bs), max_hit, r.input, allocate=0, new_request=first)
            if adm is None:
                break  # its whole sequence does not fit now: it and everyone behind it wait (FCFS)
            waiting.popleft()
            running.append(r)
            r.adm = adm
            if first:
                r.cached = adm.hit_tokens
            r.computed = adm.hit_tokens
            r.prefill_end = known
            n = known - r.computed
            if chunked and n > budget:
                n = budget
            upto = r.computed + n
            cache.grow(adm, -(-upto // bs))  # cannot fail: admit found room for all known tokens
            cache.commit(adm, upto // bs)
            batch.append((r, n))
            budget -= n
            p_tokens += n
            pairs += attn_pairs(n, r.computed)
        if not batch:
            if running or waiting:
                # a request alone always fits (larger ones fail on arrival), so this is a bug
                raise RuntimeError(f"worker {self.index}: requests wait but none can be scheduled")
            return None
        self.batch = batch
        return self.profile.step_time(p_tokens, pairs, decodes, d_ctx)

    def _preempt_for(self, r: SimRequest, blocks: int) -> bool:
        """Preempt the last admitted running requests until ``r`` can hold ``blocks`` blocks; False if
        ``r`` itself had to go. The victims come after ``r`` in ``running``: none of them is in the step yet."""
        running = self.running
        while True:
            victim = running.pop()
            self._preempt(victim)
            if victim is r:
                return False
            if self.cache.grow(r.adm, blocks):
                return True

    def _preempt(self, r: SimRequest) -> None:
        """Free all of ``r``'s blocks (cached ones stay cached, evictable) and put it first in the queue
        to recompute everything it knows (vLLM's recompute preemption). Preempting several requests one
        after another, newest first, leaves them in admission order at the queue's head."""
        self.cache.release(r.adm)
        r.computed = 0
        r.preemptions += 1
        self.preemptions += 1
        self.waiting.appendleft(r)


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
        # called with each event's time before the event is handled (--scrape-interval's SimSampler)
        self.on_time: Callable[[float], None] | None = None

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
        on_time = self.on_time
        while events:
            t, _, kind, payload = pop(events)
            if on_time is not None:
                on_time(t)
            self.now = t
            if kind == _STEP:
                self._step_done(payload, t)  # type: ignore[arg-type]
            elif kind == _ARRIVE:
                self._arrive(payload, t)  # type: ignore[arg-type]
            else:
                self._ready(payload, t)  # type: ignore[arg-type]

    def _arrive(self, r: SimRequest, now: float) -> None:
        cap = self.workers[0].cache.capacity_blocks
        if cap is not None and r.total_blocks > cap:
            bs = self.workers[0].cache.block_size
            r.status = "error"
            r.error = (f"request needs {r.total_blocks} KV blocks ({r.input} prompt + {r.output} output tokens) "
                       f"but a worker's cache holds {cap} blocks ({cap * bs} tokens; vLLM keeps one block of "
                       f"--cache-tokens as its null block); raise --cache-tokens")
            r.done_s = now
            self._finish(r, now)
            return
        w = self.router.route(r.route, now)
        r.worker = w
        delay = frontend_delay(self.workers[w].profile, r.route.request_id)
        if delay > 0:
            self.push(now + delay, _READY, r)
        else:  # no event: with request_s = 0 the order of simultaneous events stays what it always was
            self._ready(r, now)

    def _ready(self, r: SimRequest, now: float) -> None:
        """The server's front end has handed ``r`` to its engine's scheduler."""
        worker = self.workers[r.worker]
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
        ended: list[SimRequest] = []
        for r, n in worker.batch:
            r.computed += n
            if r.computed == r.input + r.generated:  # every known token computed: the step samples one
                r.generated += 1
                r.token_s.append(now)
                if r.first_s is None:
                    r.first_s = now
                if r.generated >= r.output:
                    ended.append(r)
        if ended:
            gone = {id(r) for r in ended}
            worker.running = [r for r in worker.running if id(r) not in gone]
            cache = worker.cache
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
        nxt = r.next_turn
        if nxt is not None:  # closed loop: the session's next turn after its think time
            self.release(nxt, now + nxt.think_s)
        if self.on_done is not None:
            self.on_done(r)
