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

Runs of pure-decode steps are fast-forwarded (:class:`ClusterSimulator`): same results, bit for bit, without
an event and a loop over the batch per step.
"""

from __future__ import annotations

import hashlib
import heapq
from bisect import bisect_left
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cmp_to_key

import numpy as np

from kvbench.cache import PrefixCache
from kvbench.routing.base import Completion, Router, RouteRequest
from kvbench.sim.latency import LatencyProfile, attn_pairs, frontend_delay

_ARRIVE, _STEP, _READY = 0, 1, 2
NULL_BLOCKS = 1  # blocks of a vLLM worker's pool that never hold KV (block 0, the null block)
# Fast-forward runs of pure-decode steps (see ClusterSimulator); results are identical either way, so this
# is a switch for tests and for checking that claim. ClusterSimulator(fast_forward=...) overrides it.
FAST_FORWARD = True
_FF_CHUNK, _FF_CHUNK_MAX = 16, 512  # step times a run computes ahead at first, and at most, at a time


class SimRequest:
    """Mutable state of one request in the simulation."""

    __slots__ = ("adm", "cached", "computed", "done_s", "error", "first_s", "full_blocks", "generated",
                 "hashes", "idx", "input", "keys", "max_hit", "next_turn", "output", "preemptions",
                 "prefill_end", "release_s", "route", "status", "think_s", "token_s", "total_blocks",
                 "worker")

    def __init__(self, idx: int, route: RouteRequest, hashes: np.ndarray, block_size: int):
        self.idx = idx
        self.route = route
        self.input = route.input_tokens
        self.output = max(1, route.output_tokens)  # one sampled token ends any prefill
        self.hashes = np.asarray(hashes, dtype=np.int64)  # the prompt's full blocks (the trace's hash ids)
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
            # a list of Python ints only while the request is in the engine (the cache looks keys up one by
            # one); the trace's numpy ids otherwise: a one-hour trace has 9M prompt blocks at block size 16
            n = self.full_blocks - len(self.hashes)
            keys = self.hashes.tolist()
            if n > 0:
                keys += output_keys(self.route.request_id, keys[-1] if keys else None, n)
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
                or not np.array_equal(nxt.hashes[:p], r.hashes)):
            continue
        r.keys = nxt.hashes[:end].tolist()
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
        # the planned step decodes one token for every running request and does nothing else (no prefill,
        # admission or preemption); decode_ctx is its context sum (the step time's C)
        self.decode_only = False
        self.decode_ctx = 0
        # fast-forward is exact only when the policy hears nothing but this worker's own cache calls:
        # belady's seek (on admission attempts) and drop (when another worker is routed to) break that
        self.can_fast_forward = self.seek is None and getattr(cache.policy, "drop", None) is None
        self.run: _Run | None = None  # the fast-forwarded run of decode steps under way
        self._head_keys: tuple[SimRequest | None, frozenset[int]] = (None, frozenset())

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
        self.decode_only = decodes == len(batch) == len(running) and not preempted
        self.decode_ctx = d_ctx
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


class _Run:
    """A worker's run of pure-decode steps being fast-forwarded (see :class:`ClusterSimulator`).

    Step ``k`` of the run (step 0 is the one ``_start_step`` planned) ends at ``times[k]`` and took ``dts[k]``.
    The ends of steps ``0 .. end - 1`` are virtual: no heap event, their work is done when the run lands.
    Step ``end``'s is a real STEP event, pushed when the ordinary path would push it (when step ``end - 1``
    ends). Times are computed ahead a chunk at a time (``_extend``)."""

    __slots__ = ("base", "chunk", "ctx", "ctx_s", "decodes", "dts", "end", "gen", "s0", "start", "step_time",
                 "times", "worker")

    def __init__(self, worker: Worker, start: float, s0: int, dt: float, end: int) -> None:
        self.worker = worker
        self.start = start  # when the real event that planned step 0 was handled
        self.s0 = s0  # the sequence number step 0's STEP event would have had
        self.times = [start + dt]
        self.dts = [dt]
        self.end = end
        self.gen = 0  # bumped when a pending _Due becomes stale
        self.ctx = worker.decode_ctx
        self.decodes = len(worker.running)
        self.chunk = _FF_CHUNK
        p = worker.profile
        # LatencyProfile.step_time(0, 0.0, D, C) is ((((base + pt*0) + pa*0.0) + ds*D) + dc*C): the same
        # float operations in the same order, with the constant prefix computed once; checked on step 0
        self.base = p.step_base_s + p.prefill_token_s * 0 + p.prefill_attn_s * 0.0 + p.decode_seq_s * self.decodes
        self.ctx_s = p.decode_ctx_s
        inline = type(p) is LatencyProfile and self.base + self.ctx_s * self.ctx == dt
        self.step_time = None if inline else p.step_time


def _vbefore(a: _Run, k: int, b: _Run, m: int) -> bool:
    """Whether, on the ordinary path, the end of step ``k`` of run ``a`` is handled before the end of step
    ``m`` of run ``b``. The heap orders events by time, then by push order; a step's end is pushed when the
    previous step ends, and step 0's by the real event that started the run (handled at ``start``), which
    precedes every virtual step end at its time (the invariant ``ClusterSimulator`` keeps)."""
    if a is b:
        return k < m
    ta, tb = a.times, b.times
    while ta[k] == tb[m]:
        if k == 0 and m == 0:
            return a.s0 < b.s0
        if k == 0:
            return a.start <= tb[m - 1]
        if m == 0:
            return ta[k - 1] < b.start
        k -= 1
        m -= 1
    return ta[k] < tb[m]


class _Due:
    """A dues-heap entry: the moment the end of step ``k`` of ``run`` is handled; then the run either pushes
    its last step's STEP event or computes more step times. Equal times are ordered as the ordinary path
    would handle them."""

    __slots__ = ("gen", "k", "run")

    def __init__(self, run: _Run, k: int) -> None:
        self.run = run
        self.k = k
        self.gen = run.gen

    def __lt__(self, other: _Due) -> bool:
        return _vbefore(self.run, self.k, other.run, other.k)


def _grow_bound(running: list[SimRequest], bs: int, room: int, e: int) -> int:
    """The most decode steps after step 0 (at most ``e``) whose block grows all succeed: request ``r`` takes a
    block in step ``s`` when its token ``r.computed + s`` starts one, each takes one free or evictable block,
    and commits in such a run never make fewer available."""
    cs = [r.computed for r in running]

    def grows(k: int) -> int:
        return sum((c + k) // bs - c // bs for c in cs)

    if grows(e) <= room:
        return e
    lo, hi = 0, e
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if grows(mid) <= room:
            lo = mid
        else:
            hi = mid
    return lo


class ClusterSimulator:
    """The event loop: releases, routing, front-end delays and every worker's steps, in time order (equal
    times in push order).

    **Fast-forward.** Most of a long replay's steps are pure decode: every running request decodes one token,
    nobody is admitted or preempted. When ``Worker.plan_step`` plans such a step, the worker's next steps are
    known in advance, up to the first of:

    - a request finishing (the run's last step is the one sampling its last token);
    - a grow that could fail: each decode grow takes one free or evictable block and no commit makes fewer
      available (a new key's block goes from held to cached and pinned; committing a key already cached
      frees the request's copy), so the first free + evictable grows are certain to succeed
      (``_grow_bound``);
    - a request joining an empty waiting queue (``_ready``): it could be admitted at the next step;
    - with a waiting request that the step tried to admit (budget and ``max_num_seqs`` allowed): a commit
      that could help it: of a key already cached (sharing frees a block, and may pin one of its hits), of
      one of its keys (a longer hit) or of a key committed earlier in the run (``_commit_bound``).

    A waiting head that failed to be admitted stays unadmittable through such a run: ``PrefixCache.admit``
    admits when ``total - hits <= free + evictable - revived``; a grow lowers the right side by one (taking a
    free block, or evicting a leaf: if that leaf was one of the head's hits, hits and revived drop by the same
    count), and the commit of a key that is neither cached nor the head's changes none of the terms (the
    not-chunked prefill check only sees the head's hits, which only evictions change). With ``--history
    generated``, a turn's output keys are the next turn's prompt blocks, but the next turn is released only
    after this one finishes, so it cannot be the head; any other coincidence is caught by the commit check.
    A failed admission and ``match`` have no side effects. New requests behind an unadmittable head change
    nothing. Routers see routing decisions and completions only (none of them holds a worker or cache), and
    nothing else of a worker is read by other workers' events, so a run's steps interact with the rest of the
    simulation only through requests joining this worker's queue.

    So those steps' events are not pushed (they are *virtual*) and their work is done when the run lands, in
    the order the ordinary path does it: per step, in running order, the grow when a token starts a block and
    the commit when it fills one (eviction policies see the same calls in the same order), then each
    request's token times (one per step, the step end times), counters, ``steps`` and ``busy_s`` (summed step
    by step). Step times are computed with the same float operations (``_Run``), so every time is identical.
    The run's last step is a real STEP event, handled by the ordinary ``_step_done``.

    **Event order.** The heap orders equal times by push order, and a virtual step end is never pushed, so
    ties are kept exact by one invariant: *every real event at the time of a virtual step end of an active run
    is handled before it* (as if a virtual end were pushed last). It holds when a run starts (events already
    in the heap were pushed before its step ends would have been), and ``push`` keeps it: an event pushed at
    a virtual step end's time, after the ordinary path would have pushed that step end, cuts the run there
    (``_cut``: that step becomes the run's real last step, pushed first). With the invariant, a run's virtual
    step ``k`` is handled once no real event at or before ``times[k]`` is left, so its last step is pushed
    exactly when the ordinary path pushes it (the dues heap, before each pop), and a request joining the queue
    at ``t`` is seen by the plan at the first step end ``>= t``. Equal virtual times of different runs are
    ordered by :func:`_vbefore`.

    Fast-forward is off while a sampler watches each event (``on_time``) and for policies that hear more than
    their own cache's calls (belady's ``seek`` and ``drop``); ``fast_forward=False`` (or module-level
    ``FAST_FORWARD``) turns it off.
    """

    def __init__(self, workers: list[Worker], router: Router, requests: list[SimRequest],
                 on_done: Callable[[SimRequest], None] | None = None, fast_forward: bool | None = None):
        self.workers = workers
        self.router = router
        self.requests = requests
        self.on_done = on_done
        self.events: list[tuple[float, int, int, object]] = []
        self.seq = 0
        self.now = 0.0
        # called with each event's time before the event is handled (--scrape-interval's SimSampler)
        self.on_time: Callable[[float], None] | None = None
        self.fast_forward = FAST_FORWARD if fast_forward is None else fast_forward
        self._ff = False  # fast-forwarding in this run()
        self.dues: list[tuple[float, _Due]] = []  # when a run's next virtual step end needs attention
        self.active: dict[_Run, None] = {}  # the runs under way (insertion-ordered)
        self.virtual_steps = 0  # steps fast-forwarded (a diagnostic)

    def push(self, t: float, kind: int, payload: object, born: tuple[_Run, int] | None = None) -> None:
        """Queue an event; ``born`` names a run's step whose end this is (pushed by that run's previous step)."""
        if self.active:
            self._make_way(t, born)
        self.seq += 1
        heapq.heappush(self.events, (t, self.seq, kind, payload))

    def release(self, r: SimRequest, t: float) -> None:
        r.release_s = t
        self.push(t, _ARRIVE, r)

    def run(self, first: list[tuple[float, SimRequest]]) -> None:
        for t, r in first:
            self.release(r, t)
        events = self.events
        dues = self.dues
        pop = heapq.heappop
        on_time = self.on_time
        self._ff = self.fast_forward and on_time is None
        try:
            while True:
                # a virtual step end is handled after every real event at its time (the invariant)
                if dues and (not events or dues[0][0] < events[0][0]):
                    self._due(pop(dues)[1])
                    continue
                if not events:
                    break
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
        except BaseException:  # Ctrl-C: leave every worker as the ordinary path would have at this event
            self._settle()
            raise

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
        run = worker.run
        if run is not None and not worker.waiting:
            # r is the new head: the first step to end at or after now (a virtual step end at now comes after
            # this event) plans with it, so the run's last step is that one
            k = bisect_left(run.times, now)
            if k < run.end:
                self._cut(run, k)
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
        if self._ff and worker.decode_only and worker.can_fast_forward and self._start_run(worker, now, dt):
            return
        self.push(now + dt, _STEP, worker)

    def _step_done(self, worker: Worker, now: float) -> None:
        if worker.run is not None:
            self._land(worker)
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
                r.keys = None  # done: nothing looks its blocks up again
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

    # --- fast-forward ------------------------------------------------------------------------------
    def _start_run(self, worker: Worker, now: float, dt: float) -> bool:
        """Fast-forward from the pure-decode step just planned (step 0, taking ``dt``), if at least one
        more step is certain to be the same kind; True when a run started (no STEP event pushed)."""
        running = worker.running
        e = min(r.output - r.generated for r in running) - 1  # steps 0 .. e-1 finish no one
        if e < 1:
            return False
        cache = worker.cache
        free = cache.free_blocks
        if free is not None:
            room = free + cache.evictable_blocks
            if len(running) * (e // cache.block_size + 1) > room:  # else even a block per request per bs steps fits
                e = _grow_bound(running, cache.block_size, room, e)
                if e < 1:
                    return False
        sched = worker.sched
        d = len(running)
        if worker.waiting and d < sched.max_num_seqs and sched.max_batched_tokens > d:  # the head is tried
            e = self._commit_bound(worker, e)
            if e < 1:
                return False
        # every step end must be later than the one before (virtual ends are told apart by time): the step
        # time only grows along the run, so that holds when it is well above the rounding of the latest end
        last = now + (e + 1) * worker.profile.step_time(0, 0.0, d, worker.decode_ctx + d * e)
        if not dt > last * 2.0 ** -48:
            return False
        self.seq += 1  # the sequence number step 0's STEP event takes on the ordinary path
        run = _Run(worker, now, self.seq, dt, e)
        worker.run = run
        self.active[run] = None
        self._extend(run)
        return True

    def _commit_bound(self, worker: Worker, e: int) -> int:
        """The most steps after step 0 (at most ``e``) whose commits cannot help the waiting head: each
        commits a key that is not cached, not one of the head's and not committed earlier in the run."""
        head = worker.waiting[0]
        if worker._head_keys[0] is not head:
            worker._head_keys = (head, frozenset(head.block_keys()))
        theirs = worker._head_keys[1]
        cache = worker.cache
        bs = cache.block_size
        ops = []
        for i, r in enumerate(worker.running):
            c1 = r.computed + 1  # step s computes up to token c1 + s and fills a block when that is a multiple
            s = -c1 % bs or bs
            if s <= e:
                keys = r.block_keys()
                ops.extend((s, i, keys[(c1 + s) // bs - 1]) for s in range(s, e + 1, bs))
        ops.sort()
        seen: set[int] = set()
        for s, _, key in ops:
            if key in theirs or key in cache or key in seen:
                return s - 1
            seen.add(key)
        return e

    def _extend(self, run: _Run) -> None:
        """Compute the next chunk of the run's step times and queue a due for its last virtual step end: that
        moment (the ordinary path pushing the next step's event) is when to push the real last step or to
        compute more. Events already queued at the new times were pushed before those steps' ends would be."""
        times, dts, e = run.times, run.dts, run.end
        n = len(times)
        hi = min(n - 1 + run.chunk, e)
        if hi == e - 1:
            hi = e
        run.chunk = min(2 * run.chunk, _FF_CHUNK_MAX)
        t = times[-1]
        ctx, d = run.ctx, run.decodes
        base, ctx_s, step_time = run.base, run.ctx_s, run.step_time
        add_time, add_dt = times.append, dts.append
        if step_time is None:
            for _ in range(n, hi + 1):
                ctx += d
                dt = base + ctx_s * ctx
                t = t + dt
                add_time(t)
                add_dt(dt)
        else:
            for _ in range(n, hi + 1):
                ctx += d
                dt = step_time(0, 0.0, d, ctx)
                t = t + dt
                add_time(t)
                add_dt(dt)
        run.ctx = ctx
        k = min(hi, e - 1)
        heapq.heappush(self.dues, (times[k], _Due(run, k)))

    def _due(self, due: _Due) -> None:
        run = due.run
        if due.gen != run.gen:
            return
        if due.k == run.end - 1:  # the step before the last ends: push the last one's event
            run.gen += 1
            self.push(run.times[run.end], _STEP, run.worker, (run, run.end))
        else:
            self._extend(run)

    def _make_way(self, t: float, born: tuple[_Run, int] | None) -> None:
        """An event is pushed at a virtual step end's time ``t``: if that step end would have been pushed
        first, make it real now (cut its run there), so the heap orders the two as the ordinary path does.
        It would have been when its step's predecessor has ended already: before now (an event being
        handled at that time precedes it, by the invariant), or, for an event ``born`` of another run's
        step, by :func:`_vbefore`; step 0's end is pushed when its run starts."""
        ahead = []
        for run in self.active:
            times = run.times
            last = min(len(times), run.end) - 1  # the last virtual step end computed
            if last < 0 or t > times[last] or (born is not None and run is born[0]):
                continue
            k = bisect_left(times, t, 0, last)
            if times[k] != t:
                continue
            if born is None:
                first = k == 0 or run.times[k - 1] < self.now
            else:
                first = _vbefore(run, k, born[0], born[1])
            if first:
                ahead.append((run, k))
        if len(ahead) > 1:
            ahead.sort(key=cmp_to_key(lambda a, b: -1 if _vbefore(a[0], a[1], b[0], b[1]) else 1))
        for run, k in ahead:
            if run.worker.run is run and k < run.end:  # not cut meanwhile
                self._cut(run, k)

    def _cut(self, run: _Run, k: int) -> None:
        """End the run with step ``k``: its end becomes a real STEP event, pushed now."""
        run.end = k
        run.gen += 1
        self.push(run.times[k], _STEP, run.worker, (run, k))

    def _land(self, worker: Worker) -> None:
        """The run's last step has ended: do the work of its virtual steps; the ordinary ``_step_done``
        takes the last one."""
        run = worker.run
        assert run is not None
        del self.active[run]
        worker.run = None
        run.gen += 1
        self._materialize(worker, run, run.end)

    def _settle(self) -> None:
        """Leave every worker with a run as it would be at ``now``: the steps ended before it done, the one
        under way planned."""
        self.active.clear()
        self.dues.clear()
        for worker in self.workers:
            run = worker.run
            if run is not None:
                worker.run = None
                run.gen += 1
                self._materialize(worker, run, min(bisect_left(run.times, self.now), run.end))

    def _materialize(self, worker: Worker, run: _Run, m: int) -> None:
        """Do what the ordinary path does in the run's steps 1..m's plans (in order, grows and commits) and
        at the ends of its steps 0..m-1 (one token each)."""
        if m <= 0:
            return
        self.virtual_steps += m
        worker.steps += m
        busy = worker.busy_s
        dts = run.dts
        for k in range(1, m + 1):
            busy += dts[k]
        worker.busy_s = busy
        running = worker.running
        cache = worker.cache
        bs = cache.block_size
        ops = []
        for i, r in enumerate(running):
            c = r.computed  # step s computes token c + s (0-based), up to c + s + 1 tokens
            ops.extend((s, i, 0) for s in range(-c % bs or bs, m + 1, bs))  # token c + s starts a block
            ops.extend((s, i, 1) for s in range(-(c + 1) % bs or bs, m + 1, bs))  # and fills one
        ops.sort()
        for s, i, fills in ops:
            r = running[i]
            adm = r.adm
            upto = r.computed + 1 + s
            if fills:
                if upto // bs > len(adm.pinned):
                    cache.commit(adm, upto // bs)
            else:
                blocks = -(-upto // bs)
                if blocks > len(adm.pinned) + adm.fresh_blocks and not cache.grow(adm, blocks):
                    raise RuntimeError(f"worker {worker.index}: a fast-forwarded grow failed")
        times = run.times[:m]
        for r in running:
            r.computed += m
            r.generated += m
            r.token_s.extend(times)
