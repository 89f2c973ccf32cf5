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
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import numpy as np
import pandas as pd

from kvbench.errors import fail
from kvbench.hashing import block_hashes
from kvbench.http import metrics
from kvbench.http.client import ClientSettings, Outcome, Prompt, send
from kvbench.http.hygiene import reset_and_verify
from kvbench.http.progress import RunProgress
from kvbench.http.request_options import session_headers
from kvbench.http.prompts import PromptSource, SessionHistory
from kvbench.http.targets import Target, parse_target
from kvbench.http.timeline import TimelineScraper
from kvbench.replay import BackendResult, ReplaySpec
from kvbench.routing import Completion, RouterConfig, RouteRequest, make_router
from kvbench.trace import Trace, replay_order, warmup_mask

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


async def sleep_until(deadline: float, spin_s: float = 0.0015) -> None:
    """Sleep to a monotonic deadline; the event loop's timers are ~1 ms coarse, so the last
    ``spin_s`` is spent yielding to the loop (other requests keep running) rather than oversleeping."""
    delay = deadline - time.monotonic()
    if delay > spin_s:
        await asyncio.sleep(delay - spin_s)
    while time.monotonic() < deadline:
        await asyncio.sleep(0)


def _lag_stats(lags: np.ndarray) -> dict[str, Any]:
    if not len(lags):
        return {"n": 0}
    ms = lags * 1000.0
    return {"n": len(ms), "mean_ms": float(ms.mean()), "p50_ms": float(np.percentile(ms, 50)),
            "p99_ms": float(np.percentile(ms, 99)), "max_ms": float(ms.max())}


class HttpReplay:
    def __init__(self, spec: ReplaySpec, trace: Trace, target: Target, on_event: ReplayEvent | None = None):
        self.spec = spec
        self.on_event = on_event
        self.trace = trace
        self.target = target
        self.urls = target.urls
        self.n = len(self.urls)
        df = trace.df
        if spec.max_requests is not None and len(df) > spec.max_requests:
            keep = np.sort(replay_order(df)[: spec.max_requests])
            df = df.iloc[keep]
        self.df = df.reset_index(drop=True)
        self.warm = warmup_mask(self.df, spec.warmup)  # sent before the barrier, marked in their rows
        self.warmup_info: dict[str, Any] | None = None
        self.rows: list[dict[str, Any]] = [self._blank_row(i) for i in range(len(self.df))]
        self.accepts_ids = [True] * self.n
        self.text_fallbacks = [0] * self.n  # token-id prompts re-sent as text because the format was refused
        self.fallback_reason: list[str | None] = [None] * self.n
        self.dead: dict[int, str] = {}
        self.interrupted = False
        self.t0 = 0.0

    def _blank_row(self, i: int) -> dict[str, Any]:
        r = self.df.iloc[i]
        sid = r.get("session_id")
        return {"request_id": str(r["request_id"]), "session_id": None if pd.isna(sid) else str(sid),
                "turn": int(r.get("turn", 0)), "group_id": r.get("group_id"), "worker": -1,
                "arrival_s": np.nan, "sent_s": np.nan, "first_token_s": np.nan, "done_s": np.nan,
                "ttft_s": np.nan, "e2e_s": np.nan, "tpot_s": np.nan, "itl_s": None,
                "input_tokens": int(r["input_tokens"]), "output_tokens": 0, "cached_tokens": None,
                "status": "cancelled", "error": "not sent (run interrupted)", "warmup": bool(self.warm[i])}

    # ----------------------------------------------------------------------------------------- setup
    def _choose_block_size(self, snaps: list[metrics.MetricsSnapshot]) -> tuple[int, str]:
        return metrics.choose_block_size(snaps, [(self.target.block_size, self.target.source),
                                                 (self.spec.block_size, "--block-size")])

    def _hash_lists(self, bs: int, source: str) -> list[np.ndarray]:
        """Hash ids at the server's block size, so routers see the blocks the server caches.

        Refused (before anything is sent) when that block size is not a multiple of the trace's: the
        router and the ideal hit rate would otherwise count blocks the server never forms.
        """
        base = self.trace.block_size
        if bs % base:
            fine = math.gcd(bs, base)
            raise fail(f"block size {bs} (from {source}) is not a multiple of the trace's block size {base} "
                       f"({self.trace.path or 'trace'}); regenerate the trace with --block-size {fine} "
                       f"or serve with a block size that is a multiple of {base}")
        all_ids = self.trace.hash_ids_at(bs)
        if len(self.df) == len(self.trace.df):
            return all_ids
        pos = {rid: k for k, rid in enumerate(self.trace.df["request_id"])}
        return [all_ids[pos[rid]] for rid in self.df["request_id"]]

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
            bs, bs_source = self._choose_block_size(config_snaps)
            self.hashes, self.router_bs = self._hash_lists(bs, bs_source), bs
            num_blocks = metrics.server_num_blocks(config_snaps)
            self.router = make_router(spec.router, RouterConfig(
                workers=self.n, block_size=self.router_bs, seed=spec.seed, params=dict(spec.router_params),
                cache_blocks=num_blocks))
            self.prompts = PromptSource(self.df, self.trace.block_size, self.trace.meta.tokenizer)
            if spec.reset_cache:
                recs = await asyncio.gather(*(reset_and_verify(session, u, self.settings, bs) for u in self.urls))
                hygiene: Any = [r.to_json() for r in recs]
            else:
                hygiene = "skipped (--no-reset-cache)"
            self.sem = asyncio.Semaphore(spec.max_concurrency) if spec.max_concurrency else None
            self.session = session
            interval = spec.scrape_interval_s
            scraper = TimelineScraper(session, self.urls, interval) if interval else None
            with RunProgress(len(self.rows), enabled=spec.progress, label=f"replay -> {self.n} worker(s)") as prog:
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
        scale = self.spec.time_scale
        arrival = self.df["arrival_s"].to_numpy(dtype=float) * scale
        items: list[tuple[float, str, Any]] = []
        sessions: dict[str, list[int]] = {}
        for i, sid in enumerate(self.df["session_id"]):
            if sid is None or (isinstance(sid, float) and np.isnan(sid)):
                items.append((float(arrival[i]), "single", i))
            else:
                sessions.setdefault(str(sid), []).append(i)
        for sid, idx in sessions.items():
            idx.sort(key=lambda j: (int(self.df.at[j, "turn"]), arrival[j]))
            items.append((float(arrival[idx[0]]), "session", idx))
        items.sort(key=lambda t: (t[0], 0 if t[1] == "single" else 1))
        return items

    async def _session(self, idx: list[int], start_s: float) -> None:
        history = SessionHistory() if self.spec.history == "generated" else None
        release = start_s
        for k, i in enumerate(idx):
            if k:
                think = float(self.df.at[i, "think_s"]) * self.spec.time_scale
                release = (time.monotonic() - self.t0) + max(0.0, think)
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
                    output_tokens=int(self.df.at[i, "output_tokens"]), hash_ids=self._route_hashes(i, prompt),
                    prompt_token_ids=ids, prompt=text, session_id=row["session_id"])
                out, worker = await self._send_routed(route_req, prompt, int(self.df.at[i, "output_tokens"]), i)
            self._fill(row, out, worker)
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

    def _fill(self, row: dict[str, Any], out: Outcome, worker: int) -> None:
        t0 = self.t0
        rel = (lambda t: np.nan if t is None else t - t0)
        row["worker"] = worker
        row["sent_s"] = rel(out.sent)
        row["first_token_s"] = rel(out.first_token)
        row["done_s"] = rel(out.done)
        row["status"] = out.status
        row["error"] = out.error
        if out.prompt_tokens is not None:
            row["input_tokens"] = int(out.prompt_tokens)
        n_out = out.completion_tokens if out.completion_tokens is not None else len(out.chunk_times)
        row["output_tokens"] = int(n_out)
        row["cached_tokens"] = out.cached_tokens
        if out.status != "ok":
            return
        ttft, e2e = _latencies(out)
        row["ttft_s"] = np.nan if ttft is None else ttft
        row["e2e_s"] = np.nan if e2e is None else e2e
        if n_out > 1 and out.first_token is not None:
            row["tpot_s"] = (out.done - out.first_token) / (n_out - 1)
        row["itl_s"] = np.diff(np.asarray(out.chunk_times)).tolist() if len(out.chunk_times) > 1 else []

    # ---------------------------------------------------------------------------------------- result
    def _result(self, pre: Preflight, bs: int, bs_source: str, config_snaps, hygiene, before, after) -> BackendResult:
        df = pd.DataFrame(self.rows)
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
        return BackendResult(rows=df, workers=list(self.urls), config=config,
                             hit_rates={"server_counters": counters["hit_rate"]}, interrupted=self.interrupted,
                             block_size=self.router_bs)


def _latencies(out: Outcome) -> tuple[float | None, float | None]:
    """(TTFT, end-to-end) counted from the moment the request was sent (what the row and router both use)."""
    if out.sent is None:
        return None, None
    ttft = None if out.first_token is None else out.first_token - out.sent
    e2e = None if out.done is None else out.done - out.sent
    return ttft, e2e


def run_http(spec: ReplaySpec, trace: Trace, on_event: ReplayEvent | None = None) -> BackendResult:
    """The HTTP backend of ``kvbench replay`` (see module docstring); ``on_event`` is a test hook
    (see :data:`ReplayEvent`)."""
    if spec.history not in ("recorded", "generated"):
        raise fail(f"--history {spec.history}: use 'recorded' or 'generated'")
    if spec.api not in ("completions", "chat"):
        raise fail(f"--api {spec.api}: use 'completions' or 'chat'")
    if spec.max_concurrency is not None and spec.max_concurrency < 1:
        raise fail(f"--max-concurrency {spec.max_concurrency}: must be at least 1")
    if spec.timeout_s <= 0:
        raise fail(f"--timeout {spec.timeout_s}: must be positive")
    target = parse_target(spec.target)
    return asyncio.run(HttpReplay(spec, trace, target, on_event).run())
