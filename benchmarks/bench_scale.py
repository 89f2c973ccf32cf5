"""Production-size traces: importing a one-hour Mooncake trace and simulating it on 8 workers.

For each source (the `--synthetic --flavour conversation` stand-in of the Mooncake conversation trace: 12,031
requests, 145M prompt tokens; plus any `--source FILE` in the Mooncake format, e.g. the public
mooncake_synthetic_trace.jsonl), in one run, side by side:

- import: `kvbench generate trace --format mooncake --input SRC` (wall time, peak memory, file size),
- replay: `kvbench replay T --workers 8 --cache-tokens 1000000 --eviction lru --router cache_aware` at block
  sizes 16 and 512 (wall time, peak memory),

each with this tree and with a baseline commit (default: the last one before hash-only traces, checked out in a
temporary git worktree), so the ratios compare the two codes on the same machine in the same minutes. Every
command is its own process; peak memory is its maximum resident set (os.wait4).

Same results: the baseline's hash-only import (`--no-token-ids`: token hashes, no token ids) and this tree's
import must give identical per-request rows (every column) under lru x cache_aware; the run prints whether they
do. The baseline's default import stores token ids, which cache_aware matches token by token, so its rows differ
by that routing unit; the run prints the hit-rate difference.

    python benchmarks/bench_scale.py [--source FILE ...] [--baseline REF | --no-baseline] [--quick] [--json PATH]

Goals (issue 15): import <= 3 s, <= 10 MB, <= 500 MB; the block-16 replay <= 15 s and <= 1 GB.
--quick: a 600-request stand-in and no baseline unless one is named (a smoke test; no goal applies).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from figures import FigureSet

ROOT = Path(__file__).resolve().parents[1]
BASELINE = "89b2fd4"  # the last commit before hash-only traces and the faster simulator
REPLAY = ["--workers", "8", "--cache-tokens", "1000000", "--eviction", "lru", "--router", "cache_aware"]
GOALS = {"import_s": 3.0, "import_mb": 10.0, "import_peak_mb": 500.0, "replay16_s": 15.0, "replay16_peak_mb": 1024.0}


@dataclass
class Measured:
    seconds: float
    peak_mb: float


def run(code: Path, args: list[str], cwd: Path) -> Measured:
    """One kvbench command with the given tree's code, in its own process."""
    env = {**os.environ, "PYTHONPATH": str(code)}
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "kvbench", *args], cwd=cwd, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert proc.stderr is not None
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"bench_scale: `kvbench {' '.join(args)}` failed ({proc.returncode}):\n{err.decode()[-2000:]}")
    return Measured(seconds, usage.ru_maxrss / 1024.0)  # Linux reports kilobytes


def baseline_tree(ref: str, folder: Path) -> Path:
    path = folder / "baseline"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(path), ref], check=True,
                   capture_output=True)
    return path


def same_rows(a: Path, b: Path) -> tuple[bool, str]:
    x, y = pd.read_parquet(a), pd.read_parquet(b)
    if list(x.columns) != list(y.columns) or len(x) != len(y):
        return False, "columns or row counts differ"
    for col in x.columns:
        if not x[col].astype(str).equals(y[col].astype(str)):
            return False, f"column {col} differs in {int((x[col].astype(str) != y[col].astype(str)).sum())} rows"
    return True, "identical"


def hit_rate(rows: Path) -> float:
    df = pd.read_parquet(rows)
    return float(df["cached_tokens"].sum() / df["input_tokens"].sum())


def bench_source(name: str, source: Path, work: Path, base: Path | None, figs: FigureSet) -> None:
    d = work / name
    d.mkdir()
    trees = {"now": ROOT} | ({"baseline": base} if base is not None else {})
    traces: dict[str, Path] = {}
    out: dict[str, dict[str, Measured]] = {}
    for label, code in trees.items():
        traces[label] = d / f"{label}.parquet"
        m = {"import": run(code, ["generate", "trace", "--format", "mooncake", "--input", str(source),
                                  "-o", str(traces[label])], d)}
        for bs in (16, 512):
            m[f"replay{bs}"] = run(code, ["replay", str(traces[label]), *REPLAY, "--block-size", str(bs),
                                          "-o", str(d / f"{label}-{bs}")], d)
        out[label] = m
    size_mb = {k: p.stat().st_size / 1e6 for k, p in traces.items()}
    print(f"\n{name} ({source.name}):")
    print(f"  {'':16}{'now':>22}{'baseline':>22}{'ratio':>8}")
    rows = [("import", "import"), ("replay bs 16", "replay16"), ("replay bs 512", "replay512")]
    for title, key in rows:
        now = out["now"][key]
        line = f"  {title:16}{now.seconds:>9.2f} s {now.peak_mb:>7.0f} MB"
        if base is not None:
            then = out["baseline"][key]
            line += f"{then.seconds:>9.2f} s {then.peak_mb:>7.0f} MB{now.seconds / then.seconds:>8.2f}"
            figs.add(f"{name} {title} time vs baseline", now.seconds / then.seconds, "x")
        print(line)
        goal = GOALS.get(f"{key}_s") if name == "conversation" else None  # (run_all does not judge --quick)
        figs.add(f"{name} {title} wall time", now.seconds, "s", goal)
        peak_goal = GOALS.get(f"{key}_peak_mb") if name == "conversation" else None
        figs.add(f"{name} {title} peak memory", now.peak_mb, "MB", peak_goal)
    line = f"  {'trace file':16}{size_mb['now']:>12.1f} MB"
    if base is not None:
        line += f"{size_mb['baseline']:>20.1f} MB"
    print(line)
    figs.add(f"{name} trace file", size_mb["now"], "MB", GOALS["import_mb"] if name == "conversation" else None)
    if base is None:
        return
    # same results: the baseline's hash-only import (token hashes, no token ids for the router to match)
    lean = d / "baseline-hash.parquet"
    run(base, ["generate", "trace", "--format", "mooncake", "--input", str(source), "--no-token-ids", "-o",
               str(lean)], d)
    run(base, ["replay", str(lean), *REPLAY, "--block-size", "16", "-o", str(d / "baseline-hash-16")], d)
    same, why = same_rows(d / "now-16" / "requests.parquet", d / "baseline-hash-16" / "requests.parquet")
    print(f"  per-request rows vs the baseline's --no-token-ids import at block 16: {why}")
    figs.add(f"{name} rows equal to baseline hash-only replay", float(same), "bool")
    delta = hit_rate(d / "now-16" / "requests.parquet") - hit_rate(d / "baseline-16" / "requests.parquet")
    print(f"  hit rate minus the baseline's default import (routed on token ids) at block 16: {delta:+.4f}")
    figs.add(f"{name} hit rate minus baseline token-id trace", delta, "")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", type=Path, action="append", default=[],
                    help="a Mooncake-format JSONL file to benchmark too (e.g. mooncake_synthetic_trace.jsonl)")
    ap.add_argument("--baseline", default=None, help=f"git ref to compare with (default {BASELINE}; --quick: none)")
    ap.add_argument("--no-baseline", action="store_true")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    figs = FigureSet("bench_scale", "Production-size traces: Mooncake import and 8-worker simulation", args.quick,
                     params={"baseline": None, "sources": [s.name for s in args.source]})
    ref = None if args.no_baseline else (args.baseline or (None if args.quick else BASELINE))
    with tempfile.TemporaryDirectory(prefix="kvbench-scale-") as tmp:
        work = Path(tmp)
        base = baseline_tree(ref, work) if ref else None
        figs.params["baseline"] = ref
        try:
            stand_in = work / "conversation.jsonl"
            requests = ["--requests", "600"] if args.quick else []
            run(ROOT, ["generate", "trace", "--format", "mooncake", "--synthetic", "--flavour", "conversation",
                       *requests, "--write-source", str(stand_in), "-o", str(work / "unused.parquet")], work)
            bench_source("conversation", stand_in, work, base, figs)
            for src in args.source:
                bench_source(src.stem, src.resolve(), work, base, figs)
        finally:
            if base is not None:
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base)],
                               capture_output=True)
    figs.write(args.json)


if __name__ == "__main__":
    main()
