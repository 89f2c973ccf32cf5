"""Simulator throughput on the RLT paper's GSP trace: 4,096 requests on 4 workers.

Prints wall time and simulated requests per second for cache_aware+lru and lbgr+rlt (target: each < 30 s).
The trace comes from ``kvbench generate gsp --preset rlt`` when that command is available, else it is built
here with numpy the same way: 128 groups x 32 prompts of random token ids, group lengths cycling
512/1024/2048/4096/8192, the first half of each prompt shared by its group, random order, Poisson arrivals
at 12 req/s, 4 output tokens.

    python benchmarks/bench_sim.py [--profile-hot-path] [--cache-tokens 200000] [--quick] [--json PATH]

--quick replays 16 groups x 8 prompts (a smoke test; the 30 s target applies to the full trace).
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from figures import FigureSet

from kvbench.hashing import block_hashes
from kvbench.replay import ReplaySpec, run_replay
from kvbench.trace import TraceMeta, read_trace, write_trace

COMBOS = (("lru", "cache_aware"), ("rlt", "lbgr"))
TARGET_S = 30.0


def numpy_gsp(path: Path, seed: int = 0, groups: int = 128, per_group: int = 32, rate: float = 12.0) -> Path:
    rng = np.random.default_rng(seed)
    lengths = [512, 1024, 2048, 4096, 8192]
    shared = [rng.integers(0, 32000, lengths[g % 5] // 2, dtype=np.int32) for g in range(groups)]
    order = rng.permutation(groups * per_group)
    arrivals = np.cumsum(rng.exponential(1.0 / rate, len(order)))
    rows = []
    for t, k in zip(arrivals, order.tolist()):
        g = k // per_group
        n = lengths[g % 5]
        ids = np.concatenate([shared[g], rng.integers(0, 32000, n - len(shared[g]), dtype=np.int32)])
        rows.append(dict(request_id=f"g{g}-p{k % per_group}", arrival_s=float(t), session_id=None, turn=0,
                         think_s=0.0, group_id=f"g{g}", input_tokens=n, output_tokens=4, user_tokens=n,
                         prompt=None, prompt_token_ids=ids, hash_ids=block_hashes(ids, 16)))
    meta = TraceMeta(generator="bench_sim.numpy_gsp", block_size=16, seed=seed, synthetic=True,
                     params={"groups": groups, "per_group": per_group, "rate": rate, "lengths": lengths},
                     source="RLT paper GSP construction, random token ids")
    return write_trace(path, pd.DataFrame(rows), meta)


def build_trace(folder: Path, groups: int = 128, per_group: int = 32) -> tuple[Path, str]:
    path = folder / "gsp-rlt.parquet"
    size = ["--groups", str(groups), "--prompts-per-group", str(per_group)]
    try:
        from kvbench.cli import app

        app(["generate", "gsp", "--preset", "rlt", *size, "--seed", "0", "-o", str(path)], standalone_mode=False)
        read_trace(path)
        return path, "kvbench generate gsp --preset rlt"
    except (Exception, SystemExit):
        return numpy_gsp(path, groups=groups, per_group=per_group), "numpy construction in bench_sim.py"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cache-tokens", type=int, default=200_000)
    ap.add_argument("--profile-hot-path", action="store_true", help="print the top functions by own time")
    ap.add_argument("--quick", action="store_true", help="16 groups x 8 prompts (smoke test)")
    ap.add_argument("--json", type=Path, help="also write the figures here as JSON (for run_all.py)")
    args = ap.parse_args()
    groups, per_group = (16, 8) if args.quick else (128, 32)
    figs = FigureSet("bench_sim", "Simulator", args.quick,
                     {"groups": groups, "prompts_per_group": per_group, "workers": 4,
                      "cache_tokens": args.cache_tokens})
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        t0 = time.perf_counter()
        trace_path, how = build_trace(folder, groups, per_group)
        trace = read_trace(trace_path)
        print(f"trace: {len(trace)} requests via {how} in {time.perf_counter() - t0:.1f} s")
        for ev, rt in COMBOS:
            spec = ReplaySpec(trace=trace_path, output=folder / f"{ev}-{rt}", workers=4, eviction=ev, router=rt,
                              cache_tokens=args.cache_tokens, block_size=16, seed=0, progress=False)
            prof = cProfile.Profile() if args.profile_hot_path else None
            t = time.perf_counter()
            if prof:
                prof.enable()
            out = run_replay(spec, trace)
            if prof:
                prof.disable()
            wall = time.perf_counter() - t
            import json

            s = json.loads((out / "run.json").read_text())["summary"]
            print(f"{rt}+{ev}: wall {wall:.2f} s, {len(trace) / wall:,.0f} simulated requests/s, "
                  f"target < {TARGET_S:g} s ({'met' if wall < TARGET_S else 'MISSED'}); hit rate {s['hit_rate']:.3f} "
                  f"(ideal {s['hit_rates']['ideal']:.3f}), mean TTFT {s['mean_ttft_ms']:.1f} ms, "
                  f"p99 TTFT {s['p99_ttft_ms']:.1f} ms, requests/worker {s['requests_per_worker']}")
            figs.add(f"`{rt}`+`{ev}` replay of GSP ({len(trace):,} requests, 4 workers), wall time", wall, "s",
                     TARGET_S, f"{len(trace) / wall:,.0f} simulated req/s; hit rate {s['hit_rate']:.3f}")
            if prof:
                pstats.Stats(prof).sort_stats("tottime").print_stats(15)
    figs.write(args.json)


if __name__ == "__main__":
    main()
