"""The gateway under clients that misbehave: hang-ups mid-stream, malformed prompts, slow tokenization,
and /health telling the truth about workers. Every wait is on an event, bounded by a generous deadline."""

from __future__ import annotations

import asyncio
import threading
import time

import aiohttp
import pytest
from tests.http.test_http_gateway import _post, gateway  # noqa: F401  (fixture)

DEADLINE_S = 60.0  # only reached when the behaviour under test is broken


def _wait_for(predicate, what: str) -> None:
    end = time.monotonic() + DEADLINE_S
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.01)


def test_a_client_hanging_up_mid_stream_leaves_the_worker_alive(fake_server, gateway):  # noqa: F811
    a = fake_server(token_delay_s=0.005)
    g = gateway(workers=[a.url], router="round_robin", health_interval_s=3600)
    body = {"model": "fake-model", "prompt": "one two three four", "max_tokens": 400, "stream": True}

    async def hang_up_after_first_chunk():
        async with aiohttp.ClientSession() as s:
            r = await s.post(g.url + "/v1/completions", json=body)
            await r.content.readany()  # the stream has started
            r.close()  # drop the connection mid-stream

    asyncio.run(hang_up_after_first_chunk())
    router = g.gw.router
    _wait_for(lambda: router.outstanding[0] == 0, "the gateway to finish the abandoned request")
    assert router.alive == [True], "a client's hang-up was blamed on the worker"
    status, headers, _ = asyncio.run(_post(g.url + "/v1/completions", {**body, "max_tokens": 2}, True))
    assert status == 200 and headers["X-Kvbench-Worker"] == "0"


@pytest.mark.parametrize("prompt", [[1, "x"], [None], [1e23], [True, 2], [-1], [1.5], [2**31]])
def test_prompt_lists_that_are_not_token_ids_are_a_400(fake_server, gateway, prompt):  # noqa: F811
    a = fake_server()
    g = gateway(workers=[a.url])
    status, _, data = asyncio.run(_post(g.url + "/v1/completions",
                                        {"model": "fake-model", "prompt": prompt, "max_tokens": 1}, False))
    assert status == 400 and b"token ids" in data
    assert not a.received and g.gw.router.alive == [True]


def test_health_asks_the_workers(fake_server, gateway):  # noqa: F811
    a, b = fake_server(), fake_server()
    g = gateway(workers=[a.url, b.url], health_interval_s=3600)
    b.kill()

    async def health():
        async with aiohttp.ClientSession() as s, s.get(g.url + "/health") as r:
            return r.status, await r.json()

    status, body = asyncio.run(health())
    assert status == 200 and [w["alive"] for w in body["workers"]] == [True, False]


def test_tokenizing_a_text_prompt_does_not_block_other_requests(fake_server, gateway):  # noqa: F811
    a = fake_server()
    g = gateway(workers=[a.url])
    entered, release = threading.Event(), threading.Event()
    waited_out = []
    real_encode = g.gw.tokenizer.encode

    def slow_encode(text):
        if text.startswith("slow"):
            entered.set()
            # on the event loop this blocks every request, so release never comes and the wait runs out
            waited_out.append(not release.wait(DEADLINE_S))
        return real_encode(text)

    g.gw.tokenizer.encode = slow_encode
    body = {"model": "fake-model", "prompt": "slow prompt", "max_tokens": 1}
    slow = threading.Thread(target=lambda: asyncio.run(_post(g.url + "/v1/completions", body, False)))
    slow.start()
    try:
        assert entered.wait(DEADLINE_S)
        # while the slow prompt is being tokenized, another request is served end to end
        status, _, _ = asyncio.run(_post(g.url + "/v1/completions", {**body, "prompt": "quick"}, False))
        assert status == 200
    finally:
        release.set()
        slow.join(DEADLINE_S)
    assert waited_out == [False], "the slow tokenization held the event loop"


@pytest.mark.parametrize("args,needle", [
    (["--workers", "http://127.0.0.1:9", "--router", "cache_aware", "--router-param", "bogus=1"], "--router-param"),
    (["--workers", "ftp://x"], "--workers"),
    (["--workers", "nowhere.json"], "--workers nowhere.json"),
])
def test_gateway_flags_fail_before_it_starts(monkeypatch, args, needle):
    from typer.testing import CliRunner

    from kvbench.cli import app
    from kvbench.errors import KvbenchError
    from kvbench.http import gateway as gw_module

    def never(*_a, **_k):
        raise AssertionError("the gateway started despite a bad flag")

    monkeypatch.setattr(gw_module, "serve", never)
    res = CliRunner().invoke(app, ["gateway", *args])
    assert isinstance(res.exception, KvbenchError) and needle in str(res.exception)
    assert "--target" not in str(res.exception)
