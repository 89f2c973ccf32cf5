"""`kvbench calibrate` against a tiny fake aiohttp server whose step times follow known coefficients."""

import asyncio
import json
import socket
import threading

import numpy as np
import pytest
from aiohttp import web
from typer.testing import CliRunner

from kvbench.cli import app
from kvbench.hashing import block_hashes
from kvbench.sim.calibrate import Sample, fit
from kvbench.sim.latency import COEFFICIENTS, attn_pairs, load_profile

# large enough (milliseconds per step) that scheduler jitter on a busy machine stays a small error
TRUE = {"step_base_s": 0.008, "prefill_token_s": 4e-5, "prefill_attn_s": 4e-9, "decode_seq_s": 0.004,
        "decode_ctx_s": 2e-6}


def step(p=0, a=0.0, d=0, c=0):
    return (TRUE["step_base_s"] + TRUE["prefill_token_s"] * p + TRUE["prefill_attn_s"] * a
            + TRUE["decode_seq_s"] * d + TRUE["decode_ctx_s"] * c)


class FakeServer:
    """Streams one token per simulated step; a prefix cache of 16-token blocks reports cached_tokens."""

    def __init__(self):
        self.cache: set[int] = set()
        self.active: dict[int, int] = {}  # stream -> context length

    async def models(self, request):
        return web.json_response({"data": [{"id": "fake-model"}]})

    async def completions(self, request):
        body = await request.json()
        ids = np.asarray(body["prompt"], dtype=np.int64)
        hs = block_hashes(ids, 16).tolist()
        hit = 0
        for h in hs[: (len(ids) - 1) // 16]:
            if h not in self.cache:
                break
            hit += 1
        cached = hit * 16
        new = len(ids) - cached
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await asyncio.sleep(step(p=new, a=attn_pairs(new, cached)))
        self.cache.update(hs)
        key = id(resp)
        n = body["max_tokens"]
        for i in range(n):
            if i:
                self.active[key] = len(ids) + i
                await asyncio.sleep(step(d=len(self.active), c=sum(self.active.values())))
            chunk = {"choices": [{"index": 0, "text": "x"}]}
            await resp.write(f"data: {json.dumps(chunk)}\n\n".encode())
        self.active.pop(key, None)
        usage = {"prompt_tokens": len(ids), "completion_tokens": n, "prompt_tokens_details": {"cached_tokens": cached}}
        await resp.write(f"data: {json.dumps({'choices': [], 'usage': usage})}\n\n".encode())
        await resp.write(b"data: [DONE]\n\n")
        return resp


@pytest.fixture
def fake_url():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    loop = asyncio.new_event_loop()
    server = FakeServer()
    webapp = web.Application()
    webapp.router.add_get("/v1/models", server.models)
    webapp.router.add_post("/v1/completions", server.completions)
    runner = web.AppRunner(webapp)
    started = threading.Event()

    def serve():
        asyncio.set_event_loop(loop)
        loop.run_until_complete(runner.setup())
        loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
        started.set()
        loop.run_forever()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    started.wait(10)
    yield f"http://127.0.0.1:{port}"
    asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    t.join(10)


def test_calibrate_recovers_the_fake_servers_step_times(tmp_path, fake_url):
    out = tmp_path / "fake.toml"
    res = CliRunner().invoke(app, ["calibrate", "--target", fake_url, "-o", str(out), "--prompt-lengths",
                                   "256,1024,2048", "--concurrency", "1,4", "--output-tokens", "8", "--repeats", "1",
                                   "--no-progress"])
    assert res.exit_code == 0, res.output
    prof = load_profile(str(out))
    assert prof.name == "fake" and fake_url in prof.source
    assert not list(tmp_path.glob(".*.tmp"))
    # Wall-clock sleeps overshoot on a busy machine, so the end-to-end check is loose on purpose; the fit's
    # arithmetic is checked exactly on noiseless samples below.
    assert prof.step_time(2048, attn_pairs(2048, 0), 0, 0) == pytest.approx(step(p=2048, a=attn_pairs(2048, 0)), rel=0.5)
    assert prof.step_time(0, 0, 4, 4 * 2050) == pytest.approx(step(d=4, c=4 * 2050), rel=0.6)
    assert all(getattr(prof, k) >= 0 for k in COEFFICIENTS)


def test_fit_is_exact_on_noiseless_samples():
    rng = np.random.default_rng(0)
    samples = []
    for _ in range(30):
        p, ctx, d = int(rng.integers(1, 4000)), int(rng.integers(0, 4000)), int(rng.integers(1, 16))
        samples.append(Sample("cold", [1, p, attn_pairs(p, ctx), 0, 0], step(p=p, a=attn_pairs(p, ctx))))
        c = d * int(rng.integers(100, 5000))
        samples.append(Sample("decode", [1, 0, 0, d, c], step(d=d, c=c)))
    coef, stats = fit(samples)
    for k in COEFFICIENTS:
        assert coef[k] == pytest.approx(TRUE[k], rel=1e-6)
    assert stats["r2"] == pytest.approx(1.0)


def test_calibrate_unreachable_target_is_one_line(tmp_path):
    from kvbench.errors import KvbenchError
    from kvbench.sim.calibrate import CalibrationPlan, measure

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(KvbenchError, match="cannot connect"):
        asyncio.run(measure([f"http://127.0.0.1:{port}"], CalibrationPlan(repeats=1)))
