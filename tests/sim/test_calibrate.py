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
from kvbench.errors import KvbenchError
from kvbench.hashing import block_hashes
from kvbench.sim.calibrate import Sample, fit, pick_prompt_lengths
from kvbench.sim.latency import COEFFICIENTS, attn_pairs, load_profile
from tests.sim.sim_traces import request_trace

# large enough (milliseconds per step) that scheduler jitter on a busy machine stays a small error
TRUE = {"step_base_s": 0.008, "prefill_token_s": 4e-5, "prefill_attn_s": 4e-9, "decode_seq_s": 0.004,
        "decode_ctx_s": 2e-6, "request_s": 0.02}
MAX_MODEL_LEN = 4096  # what the fake server lists


def step(p=0, a=0.0, d=0, c=0):
    return (TRUE["step_base_s"] + TRUE["prefill_token_s"] * p + TRUE["prefill_attn_s"] * a
            + TRUE["decode_seq_s"] * d + TRUE["decode_ctx_s"] * c)


class FakeServer:
    """Streams one token per simulated step; a prefix cache of 16-token blocks reports cached_tokens."""

    def __init__(self):
        self.cache: set[int] = set()
        self.active: dict[int, int] = {}  # stream -> context length

    async def models(self, request):
        return web.json_response({"data": [{"id": "fake-model", "max_model_len": MAX_MODEL_LEN}]})

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
        await asyncio.sleep(TRUE["request_s"])  # the front end, once per request, before its first step
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
    # aiohttp's own per-request time on a busy machine lands in request_s too
    assert prof.request_s == pytest.approx(TRUE["request_s"], abs=0.015)
    assert all(getattr(prof, k) >= 0 for k in COEFFICIENTS)


def test_fit_is_exact_on_noiseless_samples():
    rng = np.random.default_rng(0)
    samples = []
    for _ in range(30):
        p, ctx, d = int(rng.integers(1, 4000)), int(rng.integers(0, 4000)), int(rng.integers(1, 16))
        samples.append(Sample("cold", [1, p, attn_pairs(p, ctx), 0, 0, 1],
                              TRUE["request_s"] + step(p=p, a=attn_pairs(p, ctx))))
        c = d * int(rng.integers(100, 5000))
        samples.append(Sample("decode", [1, 0, 0, d, c, 0], step(d=d, c=c)))
    coef, stats = fit(samples)
    for k in COEFFICIENTS:
        assert coef[k] == pytest.approx(TRUE[k], rel=1e-6)
    assert stats["r2"] == pytest.approx(1.0)


def plan_samples(lengths, concurrency, suffix=64, output=16, true=TRUE):
    """Noiseless samples shaped as ``measure`` makes them: a prefill's TTFT is request_s + one step, a decode
    sample one step of the batch (request_s cancels in the difference of two end-to-end times)."""
    def seconds(row):
        return float(np.dot(row, [true[k] for k in COEFFICIENTS]))

    samples = []
    for L in lengths:
        cold = [1.0, L, attn_pairs(L, 0), 0.0, 0.0, 1.0]
        warm = [1.0, suffix, attn_pairs(suffix, L), 0.0, 0.0, 1.0]
        samples += [Sample("cold", cold, seconds(cold)), Sample("warm", warm, seconds(warm))]
    for c in concurrency:
        for L in (lengths[0], lengths[-1]):
            row = [1.0, 0.0, 0.0, float(c), c * (L + output / 2), 0.0]
            samples.append(Sample("decode", row, seconds(row)))
    return samples


@pytest.mark.parametrize("request_s", [0.0, 0.003, 0.05])
def test_fit_separates_the_per_request_term_from_the_per_step_base(request_s):
    # both are 1 in every prefill row; only the decode rows (no request, one step) tell them apart
    true = {**TRUE, "request_s": request_s}
    coef, stats = fit(plan_samples([128, 256, 512, 1024, 1536], [1, 2, 4], true=true))
    assert stats["rank"] == len(COEFFICIENTS)
    assert coef["request_s"] == pytest.approx(request_s, rel=1e-6, abs=1e-9)
    assert coef["step_base_s"] == pytest.approx(TRUE["step_base_s"], rel=1e-6)
    assert coef["prefill_token_s"] == pytest.approx(TRUE["prefill_token_s"], rel=1e-6)


def test_fit_reports_when_the_plan_cannot_separate_the_terms():
    # decode batches at one concurrency level: their intercept (step_base_s) trades off with decode_seq_s
    _, stats = fit(plan_samples([128, 512, 1024], [2]))
    assert stats["rank"] < len(COEFFICIENTS)


def test_prompt_lengths_span_the_trace_on_whole_blocks():
    inputs = [100, 300, 300, 700, 1200, 5000]
    # min 100 rounded down, quartiles 300 / 500 / 1075 to the nearest block, max 5000 rounded up
    assert pick_prompt_lengths(inputs, 16) == [96, 304, 496, 1072, 5008]
    # capped at the longest prompt the server takes, on a block boundary; equal picks count once
    assert pick_prompt_lengths(inputs, 16, limit=1000) == [96, 304, 496, 992]
    assert pick_prompt_lengths(inputs, 32, limit=4031) == [96, 288, 512, 1088, 4000]
    # prompts shorter than a block still measure one block
    assert pick_prompt_lengths([3, 5, 40], 16)[0] == 16
    # a narrow trace gets shorter lengths, so the three prefill terms stay apart
    assert pick_prompt_lengths([6000] * 10, 16) == [1488, 2992, 6000]
    with pytest.raises(KvbenchError, match="less than one 16-token block"):
        pick_prompt_lengths(inputs, 16, limit=10)


def test_calibrate_unreachable_target_is_one_line(tmp_path):
    from kvbench.errors import KvbenchError
    from kvbench.sim.calibrate import CalibrationPlan, measure

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(KvbenchError, match="cannot connect"):
        asyncio.run(measure([f"http://127.0.0.1:{port}"], CalibrationPlan(repeats=1)))


def test_calibrate_takes_prompt_lengths_from_the_trace_and_records_them(tmp_path, fake_url):
    lengths = [100, 300, 300, 700, 1200, 5000]
    trace = request_trace(tmp_path / "t.parquet", [(f"r{k}", k, np.arange(n) + 1000, 2)
                                                   for k, n in enumerate(lengths)])
    out = tmp_path / "traced.toml"
    args = ["calibrate", "--target", fake_url, "-o", str(out), "--trace", str(trace), "--concurrency", "1,2",
            "--output-tokens", "3", "--repeats", "1", "--no-progress"]
    both = CliRunner().invoke(app, [*args, "--prompt-lengths", "128,256"])
    assert isinstance(both.exception, KvbenchError) and "give one" in str(both.exception)
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    # the fake server lists max_model_len 4096: a warm request adds 64 + 1 tokens, so prompts stop at 4031,
    # 4016 on the trace's 16-token blocks
    assert "prompt lengths from" in res.stderr and "96,304,496,1072,4016" in res.stderr
    assert "prompts reach 5000 tokens but the server takes 4096" in res.stderr
    prof = load_profile(str(out))
    assert prof.fit_range == {"prompt_tokens_min": 96, "prompt_tokens_max": 4016, "max_concurrency": 2}
    assert str(trace) in prof.source and "[96, 304, 496, 1072, 4016]" in prof.source
    assert prof.request_s > 0
