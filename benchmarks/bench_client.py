"""How fast a client can send: kvbench's replay client vs `vllm bench serve` against a fast fake server.

The server is a fake OpenAI streaming endpoint on 127.0.0.1 in its own process (aiohttp; fixed TTFT and token
gaps, few output tokens), so the client is what runs out of breath. Each rate sends the same number of
seconds of evenly spaced requests with each client in turn. The server stamps when every POST arrives
(``time.monotonic``, one clock for all processes on Linux), which measures both clients with one ruler:
send lag = arrival at the server - scheduled time, taken relative to the earliest request (the schedule's
unknown offset, vllm bench serve's start, cancels out). kvbench's own send lag (run.json ``send_lag``) is
shown next to it. A rate is sustained when the lag p99 stays under 1 ms and no request fails or goes missing.

    python benchmarks/bench_client.py [--rates 50,100,200,400,800] [--seconds 5] [--skip-vllm] [--quick]

Needs vllm for the `vllm bench serve` column (and to build the tokenizer it samples random prompts with);
--skip-vllm measures kvbench alone.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import numpy as np
import pandas as pd
from aiohttp import web
from figures import FigureSet

from kvbench.hashing import block_hashes
from kvbench.tokenizer import WORD_COUNT, BuiltinTokenizer
from kvbench.trace import TraceMeta, write_trace

MODEL = "fake-model"
LAG_LIMIT_MS = 1.0
VLLM_BENCH = ("import sys; from vllm.benchmarks.serve import add_cli_args, main; "
              "from vllm.utils.argparse_utils import FlexibleArgumentParser; "
              "p = FlexibleArgumentParser(); add_cli_args(p); main(p.parse_args(sys.argv[1:]))")


# ------------------------------------------------------------------------------------------- fake server
def serve(port: int, ttft_s: float, gap_s: float) -> None:
    """The fake server (run as ``--serve PORT``): answers every completion with max_tokens streamed chunks."""
    arrivals: list[float] = []

    async def completions(request: web.Request) -> web.StreamResponse:
        arrivals.append(time.monotonic())  # before the body is read: when the client's request got here
        body = await request.json()
        n = max(1, int(body.get("max_tokens") or 1))
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await asyncio.sleep(ttft_s)
        for k in range(n):
            if k:
                await asyncio.sleep(gap_s)
            done = "length" if k == n - 1 else None
            chunk = {"object": "text_completion", "model": MODEL,
                     "choices": [{"index": 0, "text": " word", "finish_reason": done}]}
            await resp.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
        usage = {"prompt_tokens": len(str(body.get("prompt", "")).split()), "completion_tokens": n}
        await resp.write(b"data: " + json.dumps({"choices": [], "usage": usage}).encode() + b"\n\ndata: [DONE]\n\n")
        await resp.write_eof()
        return resp

    async def models(_: web.Request) -> web.Response:
        return web.json_response({"data": [{"id": MODEL, "object": "model", "max_model_len": 1 << 20}]})

    async def stats(request: web.Request) -> web.Response:
        out = web.json_response({"arrivals": arrivals[:]})
        if request.method == "POST":
            arrivals.clear()
        return out

    app = web.Application()
    app.add_routes([web.post("/v1/completions", completions), web.get("/v1/models", models),
                    web.get("/stats", stats), web.post("/stats", stats)])
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


async def _http(method: str, url: str) -> dict:
    async with aiohttp.ClientSession() as s, s.request(method, url) as r:
        return await r.json() if r.status == 200 else {}


def take_arrivals(url: str) -> np.ndarray:
    """The POST arrival stamps since the last call (and forget them)."""
    return np.sort(np.asarray(asyncio.run(_http("POST", f"{url}/stats")).get("arrivals", []), dtype=float))


def start_server(port: int, ttft_s: float, gap_s: float) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, __file__, "--serve", str(port), "--ttft-ms", str(ttft_s * 1000),
                             "--gap-ms", str(gap_s * 1000)])
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if asyncio.run(_http("GET", f"http://127.0.0.1:{port}/v1/models")):
                return proc
        except aiohttp.ClientError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit(f"fake server on port {port} did not start")


# ------------------------------------------------------------------------------------------------ clients
def server_lag_ms(arrivals: np.ndarray, scheduled: np.ndarray) -> np.ndarray:
    """Arrival - schedule per request, relative to the earliest one (the schedule's origin is unknown)."""
    n = min(len(arrivals), len(scheduled))
    d = arrivals[-n:] - scheduled[:n]  # the last n: a ready-check request, if any, comes first
    return (d - d.min()) * 1000.0 if n else np.zeros(0)


def _p99(x: np.ndarray) -> float:
    return float(np.percentile(x, 99)) if len(x) else float("nan")


def write_requests(path: Path, n: int, rate: float, input_words: int, output_tokens: int) -> None:
    rng = np.random.default_rng(0)
    tok = BuiltinTokenizer()
    ids = [rng.integers(0, WORD_COUNT, input_words) for _ in range(n)]
    df = pd.DataFrame({"request_id": [f"r{i}" for i in range(n)], "arrival_s": np.arange(n) / rate,
                       "prompt": [tok.decode(x) for x in ids], "input_tokens": input_words,
                       "output_tokens": output_tokens, "session_id": None,
                       "hash_ids": [block_hashes(x, 16).tolist() for x in ids]})
    write_trace(path, df, TraceMeta(generator="bench_client", block_size=16))


def run_kvbench(url: str, rate: float, n: int, a: argparse.Namespace, work: Path) -> dict:
    trace, out = work / f"kv-{rate:g}.parquet", work / f"kv-{rate:g}"
    write_requests(trace, n, rate, a.input_words, a.output_tokens)
    cmd = [sys.executable, "-m", "kvbench", "replay", str(trace), "--target", url, "--output", str(out),
           "--model", MODEL, "--router", "round_robin", "--no-reset-cache", "--no-progress", "--overwrite"]
    t = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wall = time.monotonic() - t
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1:] or ["exit " + str(proc.returncode)], "wall_s": wall}
    rows = pd.read_parquet(out / "requests.parquet")
    run = json.loads((out / "run.json").read_text())
    cfg = run.get("backend_config") or {}
    arrivals = take_arrivals(url)
    lag = server_lag_ms(arrivals, np.arange(n) / rate)
    return {"ok": int((rows["status"] == "ok").sum()), "failed": int((rows["status"] != "ok").sum()),
            "received": min(len(arrivals), n), "lag_p99_ms": _p99(lag), "own_lag_p99_ms": (cfg.get("send_lag") or {}).get("p99_ms", float("nan")), "wall_s": wall}


def run_vllm(url: str, rate: float, n: int, a: argparse.Namespace, work: Path, tokenizer: Path) -> dict:
    res = work / f"vb-{rate:g}.json"
    args = ["--backend", "vllm", "--base-url", url, "--endpoint", "/v1/completions", "--model", MODEL,
            "--tokenizer", str(tokenizer), "--dataset-name", "random", "--random-input-len", str(a.input_words),
            "--random-output-len", str(a.output_tokens), "--ignore-eos", "--num-prompts", str(n),
            "--request-rate", str(rate), "--burstiness", "1e9", "--seed", "0", "--disable-tqdm",
            "--save-result", "--result-dir", str(work), "--result-filename", res.name]
    take_arrivals(url)
    t = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", VLLM_BENCH, *args], capture_output=True, text=True, check=False,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    wall = time.monotonic() - t
    if proc.returncode != 0:
        return {"error": (proc.stderr or proc.stdout).strip().splitlines()[-1:], "wall_s": wall}
    vb = json.loads(res.read_text())
    # burstiness 1e9: gamma gaps of 1/rate, rescaled so the last of n is sent at n/rate; the first waits one gap
    arrivals = take_arrivals(url)
    lag = server_lag_ms(arrivals, np.arange(1, n + 1) / rate)
    return {"ok": int(vb["completed"]), "failed": n - int(vb["completed"]), "received": min(len(arrivals), n),
            "lag_p99_ms": _p99(lag), "own_lag_p99_ms": float("nan"), "duration_s": float(vb["duration"]), "wall_s": wall}


def sustained(r: dict, n: int) -> bool:
    return "error" not in r and r["ok"] == n and r["received"] >= n and r["lag_p99_ms"] < LAG_LIMIT_MS


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--rates", default="50,100,200,400,800", help="requests per second, comma separated")
    ap.add_argument("--seconds", type=float, default=5.0, help="length of each run's schedule")
    ap.add_argument("--ttft-ms", type=float, default=1.0)
    ap.add_argument("--gap-ms", type=float, default=1.0)
    ap.add_argument("--input-words", type=int, default=32)
    ap.add_argument("--output-tokens", type=int, default=4)
    ap.add_argument("--port", type=int, default=18290)
    ap.add_argument("--skip-vllm", action="store_true", help="measure kvbench only")
    ap.add_argument("--quick", action="store_true", help="rates 50 and 200 for 1 s (smoke test)")
    ap.add_argument("--json", type=Path, help="also write the figures here as JSON (for run_all.py)")
    a = ap.parse_args()
    if a.serve:
        serve(a.serve, a.ttft_ms / 1000, a.gap_ms / 1000)
        return
    if a.quick:
        a.rates, a.seconds = "50,200", 1.0
    rates = [float(r) for r in a.rates.split(",")]
    work = Path(tempfile.mkdtemp(prefix="kvbench-bench-client-"))
    tokenizer = None
    if not a.skip_vllm:
        from kvbench.http.model import build_tiny_model

        tokenizer = build_tiny_model(work / "tiny")
    server = start_server(a.port, a.ttft_ms / 1000, a.gap_ms / 1000)
    url = f"http://127.0.0.1:{a.port}"
    results: list[tuple[str, float, int, dict]] = []
    try:
        for rate in rates:
            n = max(1, round(rate * a.seconds))
            results.append(("kvbench", rate, n, run_kvbench(url, rate, n, a, work)))
            if tokenizer is not None:
                results.append(("vllm bench serve", rate, n, run_vllm(url, rate, n, a, work, tokenizer)))
            print(f"{rate:g} req/s: " + "; ".join(f"{c}: {r}" for c, rr, _, r in results if rr == rate),
                  file=sys.stderr)
    finally:
        server.terminate()
        server.wait(10)

    print(f"fake server: TTFT {a.ttft_ms:g} ms, {a.output_tokens} tokens {a.gap_ms:g} ms apart; "
          f"{a.seconds:g} s of evenly spaced requests per rate; {os.cpu_count()} cores shared by all\n")
    print("| client | rate req/s | requests | ok | failed or missing | send lag p99 at server ms "
          "| kvbench's own send lag p99 ms | sustained |")
    print("|---|---|---|---|---|---|---|---|")
    best: dict[str, float] = {}
    own_best = 0.0  # by kvbench's own record (run.json send_lag), which the fake server's own delays do not touch
    for client, rate, n, r in results:
        if "error" in r:
            print(f"| {client} | {rate:g} | {n} | — | — | — | — | failed: {' '.join(r['error'])[:80]} |")
            continue
        ok = sustained(r, n)
        if ok:
            best[client] = max(best.get(client, 0.0), rate)
        if client == "kvbench" and r["ok"] == n and r["own_lag_p99_ms"] < LAG_LIMIT_MS:
            own_best = max(own_best, rate)
        missing = max(n - r["ok"], n - r["received"])
        print(f"| {client} | {rate:g} | {n} | {r['ok']} | {missing} | {r['lag_p99_ms']:.3f} "
              f"| {r['own_lag_p99_ms']:.3f} | {'yes' if ok else 'no'} |")
    print()
    clients = ["kvbench"] + ([] if tokenizer is None else ["vllm bench serve"])
    for client in clients:
        print(f"highest rate sustained by {client} (lag p99 < {LAG_LIMIT_MS:g} ms, no drops): "
              f"{best.get(client, 0):g} req/s")
    print(f"highest rate with kvbench's own send lag p99 < {LAG_LIMIT_MS:g} ms and no drops: {own_best:g} req/s")

    figs = FigureSet("bench_client", "Client send rate against a fake server", a.quick,
                     {"rates": rates, "seconds": a.seconds, "ttft_ms": a.ttft_ms, "gap_ms": a.gap_ms,
                      "output_tokens": a.output_tokens})
    load = f"fake streaming server, {a.output_tokens} tokens, rates {a.rates} req/s"
    for client in clients:
        figs.add(f"`{client}` highest rate with send lag p99 < 1 ms and no drops ({load})",
                 best.get(client, 0.0), "req/s")
    figs.add(f"`kvbench` highest rate with its own recorded send lag p99 < 1 ms and no drops ({load})", own_best,
             "req/s")
    for client, rate, n, r in results:
        if "error" not in r and rate in (min(rates), max(rates)):
            figs.add(f"`{client}` send lag p99 at {rate:g} req/s (measured at the server)", r["lag_p99_ms"], "ms",
                     target=LAG_LIMIT_MS, note=f"{max(n - r['ok'], n - r['received'])} of {n} failed or missing")
    figs.write(a.json)


if __name__ == "__main__":
    main()
