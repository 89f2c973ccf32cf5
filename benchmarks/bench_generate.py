"""Time to generate the RLT paper's GSP trace (128 groups x 32 prompts, lengths 512..8192, shared 0.5:
4,096 requests, about 13M tokens), end to end through the CLI code path, plus the stages it is made of.

    python benchmarks/bench_generate.py [--repeat 3] [--prompt-text]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np


def _best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--prompt-text", action="store_true", help="also time the trace with prompt text")
    args = ap.parse_args()

    from typer.testing import CliRunner

    from kvbench.cli import app
    from kvbench.hashing import block_hashes, block_hashes_many
    from kvbench.tokenizer import BuiltinTokenizer
    from kvbench.trace import read_trace
    from kvbench.workloads.arrivals import ArrivalSpec
    from kvbench.workloads.build import build_table
    from kvbench.workloads.gsp import PRESETS, GspConfig, generate_gsp
    from kvbench.workloads.text import TextCodec

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "gsp.parquet"
        runner = CliRunner()

        def cli(*extra: str) -> None:
            res = runner.invoke(app, ["generate", "gsp", "-o", str(out), "--seed", "0", *extra])
            if res.exit_code != 0:
                raise SystemExit(f"generation failed: {res.output} {res.exception}")

        total = _best(cli, args.repeat)
        trace = read_trace(out)
        n_tokens = int(trace.df["input_tokens"].sum())
        size_mb = out.stat().st_size / 1e6

        p = PRESETS["rlt"]
        cfg = GspConfig(
            p["groups"],
            p["prompts_per_group"],
            p["lengths"],
            p["shared_fraction"],
            None,
            None,  # type: ignore[arg-type]
            "random",
            4,
            ArrivalSpec("poisson", 12.0),
        )
        codec = TextCodec(BuiltinTokenizer())
        rows = generate_gsp(cfg, codec, 0, False)
        t_rows = _best(lambda: generate_gsp(cfg, codec, 0, False), args.repeat)
        t_table = _best(lambda: build_table(rows, 16), args.repeat)
        lengths = np.array([len(t) for t in rows.tokens])
        flat = np.concatenate(rows.tokens)
        t_many = _best(lambda: block_hashes_many(flat, lengths, 16), args.repeat)

        def per_request() -> None:
            for t in rows.tokens:
                block_hashes(t, 16)

        t_loop = _best(per_request, args.repeat)

        print(f"GSP RLT trace: {len(trace)} requests, {n_tokens / 1e6:.1f}M tokens, {size_mb:.1f} MB Parquet")
        print(f"  kvbench generate gsp (end to end, best of {args.repeat}): {total:.2f} s  (target < 10 s)")
        print(
            f"  token generation: {t_rows:.2f} s   table + hashes: {t_table:.2f} s   "
            f"write + validate: {max(0.0, total - t_rows - t_table):.2f} s"
        )
        print(
            f"  hashing: batched {t_many:.3f} s vs per-request loop {t_loop:.3f} s ({t_loop / t_many:.1f}x)"
        )
        import subprocess
        import sys

        t0 = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "kvbench", "generate", "gsp", "-o", str(out), "--seed", "0"],
            check=True,
            capture_output=True,
        )
        t_proc = time.perf_counter() - t0
        print(f"  as a fresh process (python start-up and imports included): {t_proc:.2f} s")
        if args.prompt_text:
            t_text = _best(lambda: cli("--prompt-text"), 1)
            print(f"  with --prompt-text: {t_text:.2f} s ({t_text / total:.1f}x the default)")


if __name__ == "__main__":
    main()
