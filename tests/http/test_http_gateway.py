"""The routing gateway: pass-through of streams and JSON, routing with kvbench routers, dead workers."""

from __future__ import annotations

import asyncio
import json
import threading

import aiohttp
import pytest
from aiohttp import web
from tests.http.fake_openai import free_port

from kvbench.http.gateway import Gateway, GatewayConfig, request_token_ids
from kvbench.tokenizer import BuiltinTokenizer


class RunningGateway:
    def __init__(self, config: GatewayConfig):
        self.gw = Gateway(config)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        ready = threading.Event()

        def run():
            self.loop = asyncio.new_event_loop()
            self.runner = web.AppRunner(self.gw.app())
            self.loop.run_until_complete(self.runner.setup())
            self.loop.run_until_complete(web.TCPSite(self.runner, "127.0.0.1", self.port).start())
            ready.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        ready.wait(10)

    def stop(self):
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture
def gateway():
    made = []

    def make(**kw):
        g = RunningGateway(GatewayConfig(**kw))
        made.append(g)
        return g

    yield make
    for g in made:
        g.stop()


async def _post(url, body, stream):
    chunks = []
    async with aiohttp.ClientSession() as s, s.post(url, json=body) as r:
        async for c in r.content.iter_any():
            chunks.append(c)
        return r.status, r.headers, b"".join(chunks)


def test_stream_passes_through_unchanged(fake_server, gateway):
    a, b = fake_server(token_delay_s=0.01), fake_server(token_delay_s=0.01)
    g = gateway(workers=[a.url, b.url], router="round_robin")
    drained = threading.Event()  # the handler completes a routed request just after its last byte
    complete, completions = g.gw.router.complete, []

    def complete_and_signal(*args, **kw):
        complete(*args, **kw)
        completions.append(args[1])
        if len(completions) == 2:
            drained.set()

    g.gw.router.complete = complete_and_signal
    body = {"model": "fake-model", "prompt": list(range(40)), "max_tokens": 4, "stream": True,
            "stream_options": {"include_usage": True}}
    direct = asyncio.run(_post(a.url + "/v1/completions", body, True))[2]
    s1, h1, via1 = asyncio.run(_post(g.url + "/v1/completions", body, True))
    s2, h2, via2 = asyncio.run(_post(g.url + "/v1/completions", body, True))
    assert s1 == s2 == 200 and h1["Content-Type"].startswith("text/event-stream")
    assert {h1["X-Kvbench-Worker"], h2["X-Kvbench-Worker"]} == {"0", "1"}  # round robin
    # identical bytes apart from the worker's own cache state (first request on b is cold, a is warm)
    assert via1.count(b"data: ") == via2.count(b"data: ") == direct.count(b"data: ")
    assert via1.endswith(b"data: [DONE]\n\n")
    assert a.received[-1].body == body and b.received[-1].body == body
    assert drained.wait(60) and sorted(completions) == [0, 1] and g.gw.router.outstanding == [0, 0]


def test_chat_models_and_health(fake_server, gateway):
    a = fake_server()
    g = gateway(workers=[a.url], router="least_load")
    status, _, data = asyncio.run(_post(g.url + "/v1/chat/completions",
                                        {"model": "fake-model", "messages": [{"role": "user", "content": "hi there"}],
                                         "max_tokens": 2, "stream": True}, True))
    assert status == 200 and data.count(b'"delta"') == 2

    async def get(path):
        async with aiohttp.ClientSession() as s, s.get(g.url + path) as r:
            return r.status, await r.json()
    assert asyncio.run(get("/v1/models"))[1]["data"][0]["id"] == "fake-model"
    status, health = asyncio.run(get("/health"))
    assert status == 200 and health["workers"][0]["alive"] and health["block_size"] == 16


def test_dead_worker_is_routed_around(fake_server, gateway):
    a, b = fake_server(), fake_server()
    g = gateway(workers=[a.url, b.url], router="round_robin", health_interval_s=60)
    b.kill()
    body = {"model": "fake-model", "prompt": "one two three", "max_tokens": 1, "stream": False}
    results = [asyncio.run(_post(g.url + "/v1/completions", body, False)) for _ in range(4)]
    assert all(s == 200 and h["X-Kvbench-Worker"] == "0" for s, h, _ in results)
    assert g.gw.router.alive == [True, False]
    assert len(a.received) == 4


def test_bad_json_is_a_400(fake_server, gateway):
    a = fake_server()
    g = gateway(workers=[a.url])

    async def go():
        async with aiohttp.ClientSession() as s:
            async with s.post(g.url + "/v1/completions", data=b"{nope") as r:
                return r.status, await r.json()
    status, body = asyncio.run(go())
    assert status == 400 and "not valid JSON" in body["error"]["message"]


def test_request_token_ids_for_every_prompt_shape():
    tok = BuiltinTokenizer()
    assert request_token_ids({"prompt": [1, 2, 3]}, tok) == ([1, 2, 3], None)
    assert request_token_ids({"prompt": [[4, 5], [6]]}, tok) == ([4, 5], None)
    ids, text = request_token_ids({"prompt": "hello world"}, tok)
    assert text == "hello world" and ids == tok.encode("hello world")
    ids, text = request_token_ids({"messages": [{"role": "system", "content": "a"},
                                                {"role": "user", "content": [{"type": "text", "text": "b"}]}]}, tok)
    assert text == "a\nb" and len(ids) == 2
    assert json.dumps(request_token_ids({}, tok)) == "[[], null]"


async def _health(url):
    async with aiohttp.ClientSession() as s, s.get(url + "/health") as r:
        return await r.json()


@pytest.mark.parametrize("server_bs, flag_bs, expect", [(32, None, 32), (None, None, 16), (32, 64, 64)])
def test_gateway_block_size_comes_from_the_shared_discovery(fake_server, gateway, server_bs, flag_bs, expect):
    w = fake_server(block_size=server_bs or 16, cache_config=server_bs is not None)
    g = gateway(workers=[w.url], block_size=flag_bs)
    assert asyncio.run(_health(g.url))["block_size"] == expect
