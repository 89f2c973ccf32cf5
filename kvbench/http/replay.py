"""Replay a trace against real OpenAI-compatible workers (the HTTP backend of ``kvbench replay``).

Open-loop requests are sent at their trace time by one scheduler that sleeps until each arrival and records
how late every send was. Sessions are closed loop: a turn is released when the previous one has finished
plus its think time, with the recorded prompt (``--history recorded``) or the prompt actually sent plus the
output actually generated (``--history generated``). Routing uses the same router objects as the simulator.
Ctrl-C keeps everything gathered so far: requests in flight or never sent become ``cancelled`` rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import aiohttp
import numpy as np
import pandas as pd

from kvbench.errors import fail
from kvbench.hashing import block_hashes
from kvbench.http import metrics
from kvbench.http.client import ClientSettings, Outcome, Prompt, send
from kvbench.http.hygiene import reset_and_verify
from kvbench.http.prompts import PromptSource, SessionHistory
from kvbench.http.request_options import session_headers
from kvbench.http.targets import Target
from kvbench.http.timeline import TimelineScraper
from kvbench.plan import ReplayPlan, make_plan
from kvbench.progress import ReplayProgress
from kvbench.record import BackendResult, RowRecorder
from kvbench.resolve import Resolved, resolve
from kvbench.routing import Completion, RouterConfig, RouteRequest, make_router
from kvbench.spec import ReplaySpec
from kvbench.trace import Trace

PREFLIGHT_TIMEOUT_S = 10.0
# No session-wide limit (aiohttp's default caps every request at 300 s): each request's own --timeout is the
# only one; connecting still fails fast.
SESSION_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=30)
# Test hook: ``on_event(kind, row, worker)`` with kind "sending" (routed to ``worker``, about to be sent),
# "first_token" (the request's first output chunk has arrived, so it is in flight on ``worker``) or "done"
# (its row is filled). Called on the replay's event loop,
# so tests can act on an event (kill a worker, press Ctrl-C) instead of racing a wall-clock timer.
ReplayEvent = Callable[[str, int, int], None]
LATENCY_ORIGIN = ("ttft_s/e2e_s are measured from sent_s, as vllm bench serve does; "
                  "sent_s - arrival_s is client-side wait / send lag")


@dataclass
class Preflight:
    model: str
    served: dict[str, list[str]] = field(default_factory=dict)
    cards: dict[str, list[dict]] = field(default_factory=dict)  # /v1/models entries per URL

    def max_model_len(self, url: str) -> int | None:
        """The context length ``url`` serves the chosen model with (vLLM lists it in /v1/models), if known."""
        for card in self.cards.get(url, []):
            n = card.get("max_model_len")
            if str(card.get("id")) == self.model and isinstance(n, int) and not isinstance(n, bool) and n > 0:
                return n
        return None


async def _models(session: aiohttp.ClientSession, url: str) -> tuple[list[dict] | None, str | None]:
    """Served model entries (None if the server has no /v1/models), or an error if the URL is unreachable."""
    try:
        async with session.get(f"{url}/v1/models", timeout=aiohttp.ClientTimeout(total=PREFLIGHT_TIMEOUT_S)) as r:
            if r.status != 200:
                return None, None
            data = await r.json(content_type=None)
            return [m for m in data.get("data", []) if isinstance(m, dict)], None
    except aiohttp.ClientConnectorError as exc:
        return None, f"cannot connect ({exc.os_error or exc})"
    except (aiohttp.ClientError, TimeoutError, ValueError, AttributeError) as exc:
        return None, f"{type(exc).__name__}: {exc}".rstrip(": ") if str(exc) else type(exc).__name__


async def preflight(session: aiohttp.ClientSession, target: Target, model: str | None) -> Preflight:
    """Check every worker answers before any work starts; resolve the model name to send."""
    results = await asyncio.gather(*(_models(session, u) for u in target.urls))
    bad = [f"{u} ({err})" for u, (_, err) in zip(target.urls, results) if err]
    if bad:
        raise fail(f"worker unreachable: {'; '.join(bad)}; start it or fix --target")
    cards = {u: c for u, (c, _) in zip(target.urls, results) if c is not None}
    served = {u: [str(m.get("id")) for m in c] for u, c in cards.items()}
    if model:
        missing = [u for u, ids in served.items() if ids and model not in ids]
        if missing:
            raise fail(f"--model {model}: not served by {missing[0]} (it serves {', '.join(served[missing[0]])})")
        return Preflight(model=model, served=served, cards=cards)
    if target.model and all(not ids or target.model in ids for ids in served.values()):
        return Preflight(model=target.model, served=served, cards=cards)
    for u in target.urls:
        if served.get(u):
            return Preflight(model=served[u][0], served=served, cards=cards)
    raise fail(f"{target.urls[0]}: no /v1/models list to take the model name from; pass --model NAME")


def check_context_length(pre: Preflight, urls: list[str], df: pd.DataFrame) -> dict[str, Any]:
    """Say up front how many requests a server will refuse for their length (prompt + output tokens over its
    max_model_len, as vLLM checks), instead of only counting failures afterwards."""
    lens = {u: pre.max_model_len(u) for u in urls}
    known = [n for n in lens.values() if n is not None]
    out: dict[str, Any] = {"max_model_len": lens, "requests_over_max_model_len": None}
    if not known:
        return out
    limit = min(known)  # a request may be routed to any worker
    need = df["input_tokens"].to_numpy(dtype=np.int64) + df["output_tokens"].to_numpy(dtype=np.int64)
    over = int((need > limit).sum())
    out["requests_over_max_model_len"] = over
    if over:
        where = next(u for u, n in lens.items() if n == limit)
        print(f"kvbench: warning: {over} of {len(df)} requests need more than max_model_len {limit} tokens "
              f"(prompt + output; the largest needs {int(need.max())}) served at {where}; the server will refuse "
              f"them. Serve with a larger --max-model-len or use a trace with shorter requests", file=sys.stderr)
    return out


class _PreciseWaker:
    """Sub-millisecond wake-ups without spinning.

    The event loop's timers wake up to 1 ms late (epoll counts whole milliseconds), and spinning on the loop
    for the last stretch keeps the client on a core: on a machine it shares with the server, the OS then
    makes the busy client wait its turn, which costs far more than the spin saves (send lag p99 of 18-39 ms
    at 4 req/s on 2 cores, against 6 ms without the spin). One thread sleeps to the earliest deadline
    (precise OS sleep, no CPU) and wakes the loop through its thread-safe queue.
    """

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, asyncio.AbstractEventLoop, asyncio.Future]] = []
        self._cv = threading.Condition()
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None

    def wait(self, deadline: float) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        with self._cv:
            heapq.heappush(self._heap, (deadline, next(self._seq), loop, fut))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="kvbench-waker", daemon=True)
                self._thread.start()
            self._cv.notify()
        return fut

    def _run(self) -> None:
        with self._cv:
            while True:
                now = time.monotonic()
                while self._heap and self._heap[0][0] <= now:
                    _, _, loop, fut = heapq.heappop(self._heap)
                    with contextlib.suppress(RuntimeError):  # that loop has closed: nobody waits any more
                        loop.call_soon_threadsafe(_wake, fut)
                self._cv.wait(self._heap[0][0] - now if self._heap else None)


def _wake(fut: asyncio.Future) -> None:
    if not fut.done():  # a cancelled waiter has gone already
        fut.set_result(None)


_WAKER = _PreciseWaker()


async def sleep_until(deadline: float, coarse_slack_s: float = 0.0015) -> None:
    """Sleep to a monotonic deadline: the loop's coarse timer for all but the last ``coarse_slack_s``, then
    :class:`_PreciseWaker` for the rest (only that short tail is in the thread, so Ctrl-C is never held up)."""
    delay = deadline - time.monotonic()
    if delay > coarse_slack_s:
        await asyncio.sleep(delay - coarse_slack_s)
    if deadline > time.monotonic():
        await _WAKER.wait(deadline)


def _lag_stats(lags: np.ndarray) -> dict[str, Any]:
    if not len(lags):
        return {"n": 0}
    ms = lags * 1000.0
    return {"n": len(ms), "mean_ms": float(ms.mean()), "p50_ms": float(np.percentile(ms, 50)),
            "p99_ms": float(np.percentile(ms, 99)), "max_ms": float(ms.max())}


class HttpReplay:
    def __init__(self, resolved: Resolved, plan: ReplayPlan, on_event: ReplayEvent | None = None):
        self.resolved = resolved
        self.spec = resolved.spec
        self.plan = plan
        self.on_event = on_event
        self.target = resolved.target
        self.urls = self.target.urls
        self.n = len(self.urls)
        self.df = plan.trace.df
        self.output_tokens = self.df["output_tokens"].to_numpy(dtype=np.int64).tolist()  # read once, not per request
        self.warm = plan.warm  # sent before the barrier, marked in their rows
        self.warmup_info: dict[str, Any] | None = None
        self.rec = RowRecorder(plan)
        self.rows = self.rec.rows
        self.accepts_ids = [True] * self.n
        self.text_fallbacks = [0] * self.n  # token-id prompts re-sent as text because the format was refused
        self.fallback_reason: list[str | None] = [None] * self.n
        self.dead: dict[int, str] = {}
        self.interrupted = False
        self.t0 = 0.0

    # ------------------------------------------------------------------------------------------- run
    async def run(self) -> BackendResult:
        spec = self.spec
        connector = aiohttp.TCPConnector(limit=0, force_close=False)
        headers = session_headers(spec.headers, spec.api_key)
        async with aiohttp.ClientSession(connector=connector, timeout=SESSION_TIMEOUT, headers=headers) as session:
            pre = await preflight(session, self.target, spec.model)
            self.context = check_context_length(pre, self.urls, self.df)
            self.settings = ClientSettings(model=pre.model, api=spec.api, timeout_s=spec.timeout_s,
                                           return_token_ids=spec.history == "generated",
                                           extra_body=dict(spec.extra_body))
            config_snaps = await asyncio.gather(*(metrics.scrape(session, u) for u in self.urls))
            # the servers have the last word on what they block by: hash at their block size, record it
            bs, bs_source = metrics.choose_block_size(
                config_snaps, [(self.resolved.block_size, self.resolved.block_size_source)])
            self.resolved = self.resolved.at_server(self.plan.trace, bs, bs_source, pre.model)
            self.plan = replace(self.plan, block_size=bs)
            self.hashes, self.router_bs = self.plan.hashes, bs
            num_blocks = metrics.server_num_blocks(config_snaps)
            self.router = make_router(spec.router, RouterConfig(
                workers=self.n, block_size=self.router_bs, seed=spec.seed, params=dict(spec.router_params),
                cache_blocks=num_blocks))
            self.prompts = PromptSource(self.df, self.plan.trace.block_size, self.plan.trace.meta.tokenizer,
                                        self.plan.trace.meta)
            if spec.reset_cache:
                recs = await asyncio.gather(*(reset_and_verify(session, u, self.settings, bs) for u in self.urls))
                hygiene: Any = [r.to_json() for r in recs]
            else:
                hygiene = "skipped (--no-reset-cache)"
            self.sem = asyncio.Semaphore(spec.max_concurrency) if spec.max_concurrency else None
            self.session = session
            interval = spec.scrape_interval_s
            scraper = TimelineScraper(session, self.urls, interval) if interval else None
            with ReplayProgress(len(self.rows), f"replay -> {self.n} worker(s)", spec.progress, errors=True) as prog:
                self.progress = prog
                async with scraper or contextlib.nullcontext():  # --scrape-interval: /metrics over time
                    before = await self._drive()  # the counters' start: after the warm-up, if any
            after_timeout = 3.0 if self.interrupted else 10.0
            after = await asyncio.gather(*(metrics.scrape(session, u, after_timeout) for u in self.urls))
        result = self._result(pre, bs, bs_source, config_snaps, hygiene, before, after)
        if scraper is not None:
            result.timeline = scraper.frame(self.t0) if self.t0 else None  # t0 unset: nothing was replayed
        return result

    async def _drive(self) -> list[metrics.MetricsSnapshot]:
        """Replay the schedule and return the /metrics snapshot the server counters count from.

        With ``--warmup`` that is a barrier: the warm-up (after the cache reset) runs at its trace times until
        every warm-up request has finished, /metrics is scraped, and the measured requests follow, shifted so
        the first is sent at that moment (their spacing kept). Ctrl-C during the warm-up sends none of them.
        """
        schedule = self._schedule()
        warm_unit = [bool(self.warm[key if kind == "single" else key[0]]) for _, kind, key in schedule]
        warm = [item for item, w in zip(schedule, warm_unit) if w]
        measured = [item for item, w in zip(schedule, warm_unit) if not w]
        if warm:
            self.t0 = time.monotonic()
            await self._launch(warm)
        timeout = 3.0 if self.interrupted else 10.0
        before = list(await asyncio.gather(*(metrics.scrape(self.session, u, timeout) for u in self.urls)))
        if self.interrupted or not measured:
            return before
        shift = 0.0
        if warm:
            shift = (time.monotonic() - self.t0) - measured[0][0]
            self.warmup_info = {"requests": int(self.warm.sum()), "barrier_s": measured[0][0] + shift,
                                "shift_s": shift}
        else:
            self.t0 = time.monotonic()
        await self._launch([(t + shift, kind, key) for t, kind, key in measured])
        return before

    async def _launch(self, schedule: list[tuple[float, str, Any]]) -> None:
        """Launch open-loop requests and session heads at their times (from ``t0``), wait for them all;
        Ctrl-C cancels and keeps rows."""
        tasks: list[asyncio.Task] = []
        try:
            for start_s, kind, key in schedule:
                self.prompts.prepare(key if kind == "single" else key[0])
                await sleep_until(self.t0 + start_s)
                if kind == "single":
                    tasks.append(asyncio.create_task(self._request(key, start_s, None)))
                else:
                    tasks.append(asyncio.create_task(self._session(key, start_s)))
            await asyncio.gather(*tasks)
        except asyncio.CancelledError:
            self.interrupted = True
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            current = asyncio.current_task()
            if current is not None:
                current.uncancel()

    def _schedule(self) -> list[tuple[float, str, Any]]:
        """The plan's units as (start, "single", row) or (start, "session", rows turn by turn)."""
        order = self.plan.order
        sessions = self.df["session_id"].isna().to_numpy()
        items: list[tuple[float, str, Any]] = []
        for unit in self.plan.units:
            rows = [int(order[k]) for k in unit.positions]
            if len(rows) == 1 and sessions[rows[0]]:
                items.append((unit.start_s, "single", rows[0]))
            else:
                items.append((unit.start_s, "session", rows))
        return items

    async def _session(self, idx: list[int], start_s: float) -> None:
        history = SessionHistory() if self.spec.history == "generated" else None
        release = start_s
        for k, i in enumerate(idx):
            if k:
                release = (time.monotonic() - self.t0) + max(0.0, float(self.plan.think_s[i]))
                await sleep_until(self.t0 + release)
            await self._request(i, release, history)

    async def _request(self, i: int, scheduled_s: float, history: SessionHistory | None) -> None:
        row = self.rows[i]
        row["arrival_s"] = scheduled_s
        row["error"] = "in flight when the run was interrupted"
        sem = self.sem or contextlib.nullcontext()
        route_req: RouteRequest | None = None
        worker = -1
        try:
            async with sem:
                prompt = self.prompts.prompt(i, history, chat=self.spec.api == "chat")
                text, ids = self.prompts.route_units(i, prompt)
                route_req = RouteRequest(
                    request_id=row["request_id"], input_tokens=self.prompts.length(i, prompt),
                    output_tokens=self.output_tokens[i], hash_ids=self._route_hashes(i, prompt),
                    prompt_token_ids=ids, prompt=text, session_id=row["session_id"])
                out, worker = await self._send_routed(route_req, prompt, self.output_tokens[i], i)
            self._fill(i, out, worker)
            if self.on_event is not None:
                self.on_event("done", i, worker)
            if history is not None:
                history.record(prompt, out)
        except asyncio.CancelledError:
            row["status"] = "cancelled"
            row["worker"] = worker
            if route_req is not None and worker >= 0:
                self.router.complete(route_req, worker, time.monotonic() - self.t0,
                                     Completion(None, None, None, 0, ok=False))
            raise
        finally:
            self.progress.advance(row["status"])

    def _route_hashes(self, i: int, prompt: Prompt) -> np.ndarray:
        if prompt.recorded:
            return self.hashes[i]
        ids = prompt.token_ids if prompt.token_ids is not None else self.prompts.encode(prompt.text or "")
        return block_hashes(np.asarray(ids, dtype=np.int64), self.router_bs)

    async def _send_routed(self, req: RouteRequest, prompt: Prompt, max_tokens: int,
                           i: int = -1) -> tuple[Outcome, int]:
        """Route, send, and on a refused connection mark the worker dead and route again (``i``: the row)."""
        last: Outcome | None = None
        last_w = -1
        for _ in range(self.n):
            now = time.monotonic() - self.t0
            try:
                w = self.router.route(req, now)
            except RuntimeError:
                break
            first = None if self.on_event is None else (lambda w=w: self.on_event("first_token", i, w))
            if self.on_event is not None:
                self.on_event("sending", i, w)
            out = await send(self.session, self.urls[w], self.settings, prompt, max_tokens, self.accepts_ids[w],
                             first)
            if out.rejected_token_ids:
                self.text_fallbacks[w] += 1
                self.fallback_reason[w] = self.fallback_reason[w] or out.error
                retry = await send(self.session, self.urls[w], self.settings, prompt, max_tokens, use_ids=False,
                                   on_first_token=first)
                if retry.status == "ok":
                    self.accepts_ids[w] = False
                    out = retry
            done_now = time.monotonic() - self.t0
            ttft, e2e = _latencies(out)
            self.router.complete(req, w, done_now, Completion(
                ttft_s=ttft, e2e_s=e2e,
                cached_tokens=out.cached_tokens, output_tokens=out.completion_tokens or len(out.chunk_times),
                ok=out.status == "ok"))
            if out.worker_lost and self.router.alive[w]:
                self.router.set_alive(w, False)
                self.dead[w] = out.error or "connection lost"
            if not out.connect_failed:
                return out, w
            last, last_w = out, w
        if last is None:
            last = Outcome(status="error", error="no live workers left to route to", done=time.monotonic())
        return last, last_w

    def _fill(self, i: int, out: Outcome, worker: int) -> None:
        rel = (lambda t: None if t is None else t - self.t0)
        n_out = out.completion_tokens if out.completion_tokens is not None else len(out.chunk_times)
        self.rec.record(i, worker=worker, status=out.status, error=out.error,
                        sent_s=rel(out.sent), first_token_s=rel(out.first_token), done_s=rel(out.done),
                        output_tokens=n_out, token_times=out.chunk_times, cached_tokens=out.cached_tokens,
                        input_tokens=out.prompt_tokens)

    # ---------------------------------------------------------------------------------------- result
    def _result(self, pre: Preflight, bs: int, bs_source: str, config_snaps, hygiene, before, after) -> BackendResult:
        df = self.rec.frame()
        sent = df[df["sent_s"].notna()]
        lags = (sent["sent_s"] - sent["arrival_s"]).to_numpy(dtype=float)
        pairs = list(zip(before, after))
        counters = metrics.counter_hit_rate(pairs)
        server_ttft = [metrics.server_ttft_mean(b, a) for b, a in pairs]
        config = {
            "backend": "http",
            "target": {"source": self.target.source, "urls": self.urls, "cluster": self.target.cluster or None},
            "model": pre.model,
            "served_models": pre.served,
            **self.context,
            "api": self.spec.api,
            "history": self.spec.history,
            "prompt_format": ["token_ids" if ok else "text" for ok in self.accepts_ids]
            if self.spec.api == "completions" else ["chat"] * self.n,
            "text_fallbacks": [{"url": u, "count": c, "first_reason": why}
                               for u, c, why in zip(self.urls, self.text_fallbacks, self.fallback_reason)],
            "latency_origin": LATENCY_ORIGIN,
            "block_size": bs,
            "block_size_source": bs_source,
            "router_block_size": self.router_bs,
            "router": self.router.describe(),
            "eviction_reported_by_target": self.target.eviction,
            "server_cache": [{"url": s.url, "block_size": s.block_size, "num_blocks": s.num_blocks,
                              "cache_config": s.cache_config, "error": s.error} for s in config_snaps],
            "cache_hygiene": hygiene,
            "metrics_before": [s.to_json() for s in before],
            "metrics_after": [s.to_json() for s in after],
            "server_counters": counters,
            "server_ttft_mean_ms": [None if v is None else v * 1000.0 for v in server_ttft],
            "send_lag": _lag_stats(lags),
            "dead_workers": {self.urls[w]: why for w, why in self.dead.items()},
            "max_concurrency": self.spec.max_concurrency,
            "timeout_s": self.spec.timeout_s,
            "warmup": self.warmup_info,  # barrier_s: the warm-up had finished, the measured part began
        }
        return BackendResult(rows=df, workers=list(self.urls), resolved=self.resolved, config=config,
                             hit_rates={"server_counters": counters["hit_rate"]}, interrupted=self.interrupted)


def _latencies(out: Outcome) -> tuple[float | None, float | None]:
    """(TTFT, end-to-end) counted from the moment the request was sent (what the row and router both use)."""
    if out.sent is None:
        return None, None
    ttft = None if out.first_token is None else out.first_token - out.sent
    e2e = None if out.done is None else out.done - out.sent
    return ttft, e2e


def run_http(spec: ReplaySpec | Resolved, trace: Trace, on_event: ReplayEvent | None = None,
             plan: ReplayPlan | None = None) -> BackendResult:
    """The HTTP backend of ``kvbench replay`` (see module docstring) for a resolved replay (a bare spec is
    resolved here); ``on_event`` is a test hook (see :data:`ReplayEvent`)."""
    resolved = spec if isinstance(spec, Resolved) else resolve(spec, trace)
    return asyncio.run(HttpReplay(resolved, plan or make_plan(resolved, trace), on_event).run())
