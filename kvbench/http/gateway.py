"""``kvbench gateway``: an OpenAI-compatible reverse proxy that routes with kvbench's router objects.

Clients talk to one address; each completion / chat request is routed by the same router the simulator and
the replay client use (hash ids from the request's token ids, or from its text via the kvbench tokenizer),
forwarded unchanged, and the answer streamed back chunk by chunk. A worker that refuses connections or drops
one is marked dead (the request is re-routed if nothing was sent yet) and re-admitted once its /health
answers again.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import numpy as np
from aiohttp import web

from kvbench.hashing import block_hashes
from kvbench.http import metrics
from kvbench.http.client import CONNECTION_ERRORS
from kvbench.routing import Completion, Router, RouterConfig, RouteRequest, make_router
from kvbench.tokenizer import load_tokenizer

FORWARD_REQUEST_HEADERS = ("Content-Type", "Authorization", "Accept", "X-Request-Id")
FORWARD_RESPONSE_HEADERS = ("Content-Type", "Cache-Control", "X-Request-Id")
USAGE_TAIL_BYTES = 16384


@dataclass
class GatewayConfig:
    workers: list[str]
    router: str = "round_robin"
    seed: int = 0
    block_size: int | None = None  # None: ask the first worker's /metrics, else 16
    router_params: dict[str, Any] = field(default_factory=dict)
    tokenizer: str | None = None
    timeout_s: float = 600.0
    health_interval_s: float = 5.0


def _json_error(status: int, message: str) -> web.Response:
    body = {"error": {"message": message, "type": "kvbench_gateway_error", "code": status}}
    return web.json_response(body, status=status)


MAX_TOKEN_ID = (1 << 31) - 1


class BadPrompt(ValueError):
    """The request's prompt is not one the OpenAI API accepts (answered with 400)."""


def request_token_ids(body: dict[str, Any], tokenizer) -> tuple[list[int], str | None]:
    """Token ids the router hashes: the prompt's ids when given, else the tokenized text."""
    prompt = body.get("prompt")
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], list):
        prompt = prompt[0]  # batched prompts: route by the first
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], str):
        prompt = prompt[0]
    if isinstance(prompt, list):
        # JSON numbers other than whole non-negative integers (1e23, 1.5, true, null, "x") are no token ids
        if not all(type(t) is int and 0 <= t <= MAX_TOKEN_ID for t in prompt):
            raise BadPrompt("'prompt' must be a string, or a list of token ids (integers from 0 to 2^31-1)")
        return list(prompt), None
    if isinstance(prompt, str):
        return tokenizer.encode(prompt), prompt
    messages = body.get("messages")
    if isinstance(messages, list):
        parts = []
        for m in messages:
            content = m.get("content") if isinstance(m, dict) else None
            if isinstance(content, list):  # content parts
                content = " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
            if isinstance(content, str):
                parts.append(content)
        text = "\n".join(parts)
        return tokenizer.encode(text), text
    return [], None


async def _to_client(write: Any) -> bool:
    """Await a write to the client; False when the client has gone away."""
    try:
        await write
        return True
    except (ConnectionError, aiohttp.ClientConnectionResetError):
        return False


def _usage_from_tail(tail: bytes) -> dict[str, Any] | None:
    """The last ``usage`` object in a streamed or plain JSON answer (for the router's learning)."""
    text = tail.decode("utf-8", errors="replace")
    for line in reversed(text.replace("\r", "").split("\n")):
        line = line.strip()
        if line.startswith("data:"):
            line = line[5:].strip()
        if not line.startswith("{"):
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(data, dict) and isinstance(data.get("usage"), dict):
            return data["usage"]
    return None


class Gateway:
    def __init__(self, config: GatewayConfig):
        self.config = config
        self.urls = config.workers
        self.tokenizer = load_tokenizer(config.tokenizer)
        self.router: Router | None = None
        self.block_size = config.block_size or 16
        self.t0 = time.monotonic()
        self._ids = itertools.count()
        self.session: aiohttp.ClientSession | None = None
        self.served = [0] * len(self.urls)
        self._health_task: asyncio.Task | None = None

    def log(self, msg: str) -> None:
        print(f"kvbench gateway: {msg}", file=sys.stderr, flush=True)

    async def start(self, app: web.Application) -> None:
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                             timeout=aiohttp.ClientTimeout(total=self.config.timeout_s))
        snaps = await asyncio.gather(*(metrics.scrape(self.session, u, 5.0) for u in self.urls))
        if self.config.block_size is None:
            self.block_size, _ = metrics.choose_block_size(snaps, [(16, "default")])
        num_blocks = metrics.server_num_blocks(snaps)
        self.router = make_router(self.config.router, RouterConfig(
            workers=len(self.urls), block_size=self.block_size, seed=self.config.seed,
            params=dict(self.config.router_params), cache_blocks=num_blocks))
        for w, u in enumerate(self.urls):
            if not await self._healthy(u):
                self.router.set_alive(w, False)
                self.log(f"worker {u} is not answering /health; routing around it until it does")
        self._health_task = asyncio.create_task(self._health_loop())

    async def stop(self, app: web.Application) -> None:
        if self._health_task is not None:
            self._health_task.cancel()
            await asyncio.gather(self._health_task, return_exceptions=True)
        if self.session is not None:
            await self.session.close()

    async def _healthy(self, url: str) -> bool:
        try:
            async with self.session.get(f"{url}/health", timeout=aiohttp.ClientTimeout(total=3)) as r:
                return r.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False

    async def _health_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.health_interval_s)
            for w, u in enumerate(self.urls):
                if not self.router.alive[w] and await self._healthy(u):
                    self.router.set_alive(w, True)
                    self.log(f"worker {u} is healthy again")

    def now(self) -> float:
        return time.monotonic() - self.t0

    # ------------------------------------------------------------------------------------ handlers
    async def health(self, request: web.Request) -> web.Response:
        """Asks every worker now: a killed worker shows dead here at once, not after a failed request."""
        if self.router is not None:
            answers = await asyncio.gather(*(self._healthy(u) for u in self.urls))
            for w, up in enumerate(answers):
                if not up:
                    self._mark_dead(w, "/health does not answer")
                elif not self.router.alive[w]:
                    self.router.set_alive(w, True)
                    self.log(f"worker {self.urls[w]} is healthy again")
        alive = list(self.router.alive) if self.router else [False] * len(self.urls)
        body = {"workers": [{"url": u, "alive": a, "served": n} for u, a, n in zip(self.urls, alive, self.served)],
                "router": self.router.describe() if self.router else None, "block_size": self.block_size}
        return web.json_response(body, status=200 if any(alive) else 503)

    async def models(self, request: web.Request) -> web.StreamResponse:
        for w, u in enumerate(self.urls):
            if not self.router.alive[w]:
                continue
            try:
                async with self.session.get(f"{u}/v1/models") as r:
                    return web.Response(body=await r.read(), status=r.status,
                                        content_type=r.content_type or "application/json")
            except (aiohttp.ClientError, TimeoutError):
                self._mark_dead(w, "GET /v1/models failed")
        return _json_error(503, "no live workers")

    def _mark_dead(self, w: int, why: str) -> None:
        if self.router.alive[w]:
            self.router.set_alive(w, False)
            self.log(f"worker {self.urls[w]} marked dead: {why}")

    async def proxy(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            return _json_error(400, "request body is not valid JSON")
        if not isinstance(body, dict):
            return _json_error(400, "request body must be a JSON object")
        try:
            # a long text prompt takes a while to tokenize: off the event loop, so other requests keep flowing
            ids, text = await asyncio.to_thread(request_token_ids, body, self.tokenizer)
        except BadPrompt as exc:
            return _json_error(400, str(exc))
        out_tokens = body.get("max_tokens") or body.get("max_completion_tokens") or 0
        session_id = body.get("user") or request.headers.get("X-Session-Id")
        req = RouteRequest(request_id=f"gw-{next(self._ids)}", input_tokens=len(ids),
                           output_tokens=int(out_tokens) if isinstance(out_tokens, int) else 0,
                           hash_ids=block_hashes(np.asarray(ids, dtype=np.int64), self.block_size),
                           prompt_token_ids=None if text is not None else ids, prompt=text,
                           session_id=str(session_id) if session_id else None)
        headers = {h: request.headers[h] for h in FORWARD_REQUEST_HEADERS if h in request.headers}
        for _ in range(len(self.urls)):
            try:
                w = self.router.route(req, self.now())
            except RuntimeError:
                break
            result = await self._forward(request, w, raw, headers, req)
            if result is not None:
                return result
        return _json_error(503, "no live workers to route to")

    async def _forward(self, request: web.Request, w: int, raw: bytes, headers: dict[str, str],
                       req: RouteRequest) -> web.StreamResponse | None:
        """Stream one upstream answer back; None means "never reached the worker, route again"."""
        url = self.urls[w] + request.path
        sent = time.monotonic()
        first: float | None = None
        tail = b""
        ok = False
        resp: web.StreamResponse | None = None
        try:
            async with self.session.post(url, data=raw, headers=headers) as up:
                resp = web.StreamResponse(status=up.status)
                for h in FORWARD_RESPONSE_HEADERS:
                    if h in up.headers:
                        resp.headers[h] = up.headers[h]
                resp.headers["X-Kvbench-Worker"] = str(w)
                # Errors writing to the client are the client's (it hung up, timed out, cancelled) and never
                # count against the worker; only errors reading from the worker below do.
                if not await _to_client(resp.prepare(request)):
                    return resp
                async for chunk in up.content.iter_any():
                    if first is None:
                        first = time.monotonic()
                    tail = (tail + chunk)[-USAGE_TAIL_BYTES:]
                    if not await _to_client(resp.write(chunk)):
                        return resp  # leaving the block closes the upstream stream: the worker stops
                if await _to_client(resp.write_eof()):
                    ok = up.status == 200
                    self.served[w] += 1
                return resp
        except aiohttp.ClientConnectorError as exc:
            self._mark_dead(w, f"cannot connect ({exc.os_error or exc})")
            return None
        except CONNECTION_ERRORS as exc:
            self._mark_dead(w, f"connection lost ({type(exc).__name__})")
            if resp is None:
                return _json_error(502, f"worker {self.urls[w]} dropped the connection")
            raise  # headers already sent: abort the client connection so it sees the failure
        except TimeoutError:
            if resp is None:
                return _json_error(504, f"worker {self.urls[w]} timed out after {self.config.timeout_s:g}s")
            raise
        finally:
            usage = _usage_from_tail(tail) if ok else None
            details = (usage or {}).get("prompt_tokens_details") or {}
            done = time.monotonic()
            self.router.complete(req, w, self.now(), Completion(
                ttft_s=None if first is None else first - sent, e2e_s=done - sent,
                cached_tokens=details.get("cached_tokens") if isinstance(details, dict) else None,
                output_tokens=int((usage or {}).get("completion_tokens") or 0), ok=ok))

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/completions", self.proxy)
        app.router.add_post("/v1/chat/completions", self.proxy)
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/health", self.health)
        app.on_startup.append(self.start)
        app.on_cleanup.append(self.stop)
        return app


def serve(config: GatewayConfig, host: str = "127.0.0.1", port: int = 8000) -> None:
    gw = Gateway(config)
    gw.log(f"routing with '{config.router}' over {len(config.workers)} worker(s) on http://{host}:{port}")
    web.run_app(gw.app(), host=host, port=port, print=None, handle_signals=True)
