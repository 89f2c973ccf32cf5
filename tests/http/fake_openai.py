"""A small fake OpenAI-compatible server (aiohttp, own thread) with a prefix cache and vLLM-style metrics.

It caches token blocks like vLLM (full blocks only, the last prompt token always recomputed) so per-request
``cached_tokens`` and the /metrics counters agree, and it can misbehave on demand (HTTP errors, malformed
streams, hangs, dying mid-run) to exercise the client's error paths.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from dataclasses import dataclass, field

from aiohttp import web

from kvbench.tokenizer import BuiltinTokenizer

PORT_RANGE = range(18200, 18300)
_port_lock = threading.Lock()
_next_port = [PORT_RANGE.start]


def free_port() -> int:
    """A free port in this area's range (18200-18299), handed out round-robin."""
    with _port_lock:
        for _ in range(len(PORT_RANGE)):
            p = _next_port[0]
            _next_port[0] = PORT_RANGE.start + (p + 1 - PORT_RANGE.start) % len(PORT_RANGE)
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", p))
                except OSError:
                    continue
                return p
    raise RuntimeError("no free port in 18200-18299")


@dataclass
class Received:
    t: float  # time.monotonic() when the request arrived
    body: dict
    path: str


@dataclass
class FakeOpenAI:
    mode: str = "ok"  # ok | http500 | malformed | no_done | hang | reject_ids
    reject_status: int = 400  # reject_ids: the answer to a token-id prompt
    reject_body: dict = field(default_factory=lambda: {"error": {"message": "prompt must be a string"}})
    cache_config: bool = True  # report vllm:cache_config_info in /metrics
    ttft_s: float = 0.0
    token_delay_s: float = 0.0
    block_size: int = 16
    reset: str = "ok"  # ok | 404 | false
    model: str = "fake-model"
    max_model_len: int | None = None  # listed in /v1/models as vLLM does, when set
    flavour: str = "vllm"  # vllm | sglang: which server's /metrics names and cache-reset endpoint
    metrics_status: int = 200  # anything else: /metrics answers that HTTP status, without a body
    metrics_delay_s: float = 0.0  # /metrics answers this late (a slow server)
    received: list[Received] = field(default_factory=list)
    port: int = 0

    def __post_init__(self):
        self.cached_blocks: set[tuple[int, ...]] = set()
        self.queries = 0
        self.hits = 0
        self.ttft_sum = 0.0
        self.ttft_count = 0
        self.tok = BuiltinTokenizer()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._inflight: dict[int, web.Request] = {}
        self.headers_seen: list[tuple[str, dict[str, str]]] = []  # (path, headers) of every request

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # ------------------------------------------------------------------ lifecycle (thread + own loop)
    def start(self) -> FakeOpenAI:
        self.port = self.port or free_port()
        ready = threading.Event()

        def run():
            self._loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self._loop)
            self._loop.run_until_complete(self._start())
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        ready.wait(10)
        return self

    @web.middleware
    async def _record_headers(self, request, handler):
        self.headers_seen.append((request.path, dict(request.headers)))
        return await handler(request)

    async def _start(self):
        app = web.Application(middlewares=[self._record_headers])
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/health", self.health)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_post("/v1/completions", self.complete)
        app.router.add_post("/v1/chat/completions", self.complete)
        app.router.add_post("/reset_prefix_cache", self.reset_cache)
        app.router.add_post("/flush_cache", self.flush_cache)
        self._runner = web.AppRunner(app, shutdown_timeout=0.1)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    def kill(self) -> None:
        """Die like a crashed worker: in-flight connections are cut and new ones refused."""
        async def _kill():
            for req in list(self._inflight.values()):
                if req.transport is not None:
                    req.transport.abort()
            await self._runner.cleanup()
        if self._loop is not None and self._runner is not None:
            asyncio.run_coroutine_threadsafe(_kill(), self._loop).result(10)
            self._runner = None

    def stop(self) -> None:
        if self._loop is None:
            return
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop = None

    # ---------------------------------------------------------------------------------- handlers
    async def health(self, request):
        return web.Response(text="ok")

    async def models(self, request):
        card = {"id": self.model, "object": "model"}
        if self.max_model_len is not None:
            card["max_model_len"] = self.max_model_len
        return web.json_response({"object": "list", "data": [card]})

    async def metrics(self, request):
        # gauges follow the requests in flight, so a timeline shows the load: each holds a tenth of the cache
        running = len(self._inflight)
        usage = min(1.0, running / 10)
        await asyncio.sleep(self.metrics_delay_s)
        if self.metrics_status != 200:
            return web.Response(status=self.metrics_status)
        if self.flavour == "sglang":  # SGLang's names; cached tokens split by source as SGLang >= 0.5 does
            device = self.hits // 2
            lines = [
                "# TYPE sglang:prompt_tokens_total counter",
                f'sglang:prompt_tokens_total{{model_name="{self.model}"}} {float(self.queries)}',
                "# TYPE sglang:cached_tokens_total counter",
                f'sglang:cached_tokens_total{{model_name="{self.model}",cache_source="device"}} {float(device)}',
                f'sglang:cached_tokens_total{{model_name="{self.model}",cache_source="host"}} '
                f'{float(self.hits - device)}',
                "# TYPE sglang:time_to_first_token_seconds histogram",
                f'sglang:time_to_first_token_seconds_sum{{model_name="{self.model}"}} {self.ttft_sum}',
                f'sglang:time_to_first_token_seconds_count{{model_name="{self.model}"}} {float(self.ttft_count)}',
                f'sglang:num_running_reqs{{model_name="{self.model}"}} {float(running)}',
                f'sglang:num_queue_reqs{{model_name="{self.model}"}} 0.0',
                f'sglang:token_usage{{model_name="{self.model}"}} {usage}',
            ]
            return web.Response(text="\n".join(lines) + "\n", content_type="text/plain")
        lines = [
            "# HELP vllm:prefix_cache_queries_total Prefix cache queries, in terms of number of queried tokens.",
            "# TYPE vllm:prefix_cache_queries_total counter",
            f'vllm:prefix_cache_queries_total{{engine="0",model_name="{self.model}"}} {float(self.queries)}',
            f'vllm:prefix_cache_hits_total{{engine="0",model_name="{self.model}"}} {float(self.hits)}',
            f'vllm:kv_cache_usage_perc{{engine="0"}} {usage}',
            f'vllm:num_requests_running{{engine="0"}} {float(running)}',
            'vllm:num_requests_waiting{engine="0"} 0.0',
            'vllm:num_preemptions_total{engine="0"} 0.0',
            f'vllm:time_to_first_token_seconds_sum{{engine="0"}} {self.ttft_sum}',
            f'vllm:time_to_first_token_seconds_count{{engine="0"}} {float(self.ttft_count)}',
        ]
        if self.cache_config:
            lines.append(f'vllm:cache_config_info{{block_size="{self.block_size}",num_gpu_blocks="512",'
                         f'enable_prefix_caching="True",engine="0"}} 1.0')
        return web.Response(text="\n".join(lines) + "\n", content_type="text/plain")

    async def flush_cache(self, request):
        if self.flavour != "sglang":
            return web.json_response({"detail": "Not Found"}, status=404)
        self.cached_blocks.clear()
        return web.Response(text="Cache flushed.\nPlease check backend logs for more details.")

    async def reset_cache(self, request):
        if self.reset == "404" or self.flavour == "sglang":
            return web.json_response({"detail": "Not Found"}, status=404)
        if self.reset == "false":
            return web.json_response({"success": False})
        self.cached_blocks.clear()
        return web.json_response({"success": True})

    def _prompt_ids(self, body) -> list[int]:
        if "messages" in body:
            return self.tok.encode("\n".join(m["content"] for m in body["messages"]))
        p = body["prompt"]
        return list(p) if isinstance(p, list) else self.tok.encode(p)

    def _lookup(self, ids: list[int]) -> int:
        """Cached tokens like vLLM: whole blocks, stopping at the first miss, last token recomputed."""
        bs = self.block_size
        cap = (len(ids) - 1) // bs
        n = 0
        while n < cap and tuple(ids[: (n + 1) * bs]) in self.cached_blocks:
            n += 1
        for k in range(1, len(ids) // bs + 1):
            self.cached_blocks.add(tuple(ids[: k * bs]))
        return n * bs

    async def complete(self, request: web.Request):
        t = time.monotonic()
        body = await request.json()
        self.received.append(Received(t, body, request.path))
        if self.mode == "http500":
            return web.json_response({"error": {"message": "boom", "code": 500}}, status=500)
        if self.mode == "reject_ids" and isinstance(body.get("prompt"), list):
            return web.json_response(self.reject_body, status=self.reject_status)
        self._inflight[id(request)] = request
        try:
            return await self._stream(request, body, t)
        finally:
            self._inflight.pop(id(request), None)

    async def _stream(self, request, body, t):
        ids = self._prompt_ids(body)
        cached = self._lookup(ids)
        self.queries += len(ids)
        self.hits += cached
        n_out = int(body.get("max_tokens", 1))
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        if self.mode == "hang":
            await asyncio.sleep(3600)
        if self.mode == "malformed":
            await resp.write(b'data: {"choices": [{"text": "x"\n\n')
            await resp.write(b"data: [DONE]\n\n")
            return resp
        await asyncio.sleep(self.ttft_s)
        chat = "messages" in body
        for k in range(n_out):
            if k:
                await asyncio.sleep(self.token_delay_s)
            tok_id = 1000 + k
            if chat:
                choice = {"index": 0, "delta": {"content": f" w{k}"}, "finish_reason": None}
            else:
                choice = {"index": 0, "text": f" w{k}", "finish_reason": "length" if k == n_out - 1 else None}
                if body.get("return_token_ids"):
                    choice["token_ids"] = [tok_id]
            await resp.write(f"data: {json.dumps({'choices': [choice]})}\n\n".encode())
            if k == 0:
                self.ttft_sum += time.monotonic() - t
                self.ttft_count += 1
        usage = {"prompt_tokens": len(ids), "completion_tokens": n_out, "total_tokens": len(ids) + n_out,
                 "prompt_tokens_details": {"cached_tokens": cached}}
        await resp.write(f"data: {json.dumps({'choices': [], 'usage': usage})}\n\n".encode())
        if self.mode != "no_done":
            await resp.write(b"data: [DONE]\n\n")
        return resp
