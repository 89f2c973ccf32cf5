"""How long `kvbench report` takes, and how big the file gets, for 20 runs of 4,096 requests.

The runs are 4 eviction x routing combinations x 5 cache sizes of one workload (so the sweep chart is
drawn too), written with the real result writer from seeded synthetic rows. Prints each stage's time, the
file size split into plotly.js and data, and the ratio to the targets (10 s, 10 MB). With Chromium
installed it also loads the file headless and reports the time until every chart is drawn.

    python benchmarks/bench_report.py [--runs 20] [--requests 4096] [--keep DIR] [--quick] [--json PATH]

--quick builds 4 runs x 256 requests without the browser (a smoke test; the targets apply to the full size).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import plotly.offline
from figures import FigureSet

from kvbench.report.build import build_report
from kvbench.report.inputs import load_inputs
from kvbench.report.page import render_html
from kvbench.report.table import to_csv, to_json

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root: synthetic runs live with the tests
from tests.report.synthetic import write_synthetic_run  # noqa: E402

TARGET_S = 10.0
TARGET_MB = 10.0
COMBINATIONS = (("lru", "round_robin"), ("rlt", "lbgr"), ("arc", "cache_aware"), ("lru", "cache_aware"))


def write_runs(root: Path, runs: int, requests: int) -> None:
    sizes = [16384 * 2 ** i for i in range(max(1, -(-runs // len(COMBINATIONS))))]
    i = 0
    for size_index, cache in enumerate(sizes):
        for combo_index, (eviction, router) in enumerate(COMBINATIONS):
            if i == runs:
                return
            write_synthetic_run(root / f"{eviction}-{router}-{cache}", name=f"{eviction}-{router}-c{cache}",
                                eviction=eviction, router=router, cache_tokens=cache, n=requests, seed=i,
                                hit_level=0.1 + 0.05 * combo_index + 0.08 * size_index, failed=i % 3)
            i += 1


def browser_render_ms(page: Path) -> tuple[float, float] | None:
    """(wall seconds to load and draw, in-page ms until the last chart resolved), or None without Chromium."""
    try:
        from tests.report.report_cdp import find_chromium, load_page
    except ImportError:
        return None
    chromium = find_chromium()
    if chromium is None:
        return None
    t = time.perf_counter()
    result = load_page(chromium, page, timeout=120,
                       wait_js="document.body && document.body.getAttribute('data-charts-rendered') === "
                               "document.body.getAttribute('data-chart-count')",
                       evaluations={"ms": "Number(document.body.getAttribute('data-render-ms'))"})
    wall = time.perf_counter() - t
    if result.console_errors or result.exceptions:
        print(f"browser errors: {result.console_errors + result.exceptions}")
    return wall, float(result.evaluations["ms"] or "nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--requests", type=int, default=4096)
    ap.add_argument("--keep", type=Path, help="write runs and report here instead of a temporary directory")
    ap.add_argument("--no-browser", action="store_true")
    ap.add_argument("--quick", action="store_true", help="4 runs x 256 requests, no browser (smoke test)")
    ap.add_argument("--json", type=Path, help="also write the figures here as JSON (for run_all.py)")
    args = ap.parse_args()
    if args.quick:
        args.runs, args.requests, args.no_browser = 4, 256, True
    figs = FigureSet("bench_report", "HTML report", args.quick, {"runs": args.runs, "requests": args.requests})

    with tempfile.TemporaryDirectory(prefix="kvb-bench-report-") as tmp:
        root = args.keep or Path(tmp)
        t0 = time.perf_counter()
        write_runs(root / "runs", args.runs, args.requests)
        t_write = time.perf_counter() - t0

        stages: dict[str, tuple[float, float]] = {}

        def timed(name, fn):
            w, c = time.perf_counter(), time.process_time()
            value = fn()
            stages[name] = (time.perf_counter() - w, time.process_time() - c)
            return value

        loaded = timed("load runs", lambda: load_inputs([root / "runs"]))
        report = timed("build charts", lambda: build_report(loaded))
        page = timed("render html", lambda: render_html(report))
        out = root / "report.html"
        timed("write file", lambda: out.write_text(page, encoding="utf-8"))
        t0 = time.perf_counter()
        to_csv(report.table), to_json(report.table)
        t_table = time.perf_counter() - t0

        total = sum(w for w, _ in stages.values())
        cpu = sum(c for _, c in stages.values())
        size = out.stat().st_size
        js = len(plotly.offline.get_plotlyjs().encode())
        print(f"runs: {len(report.runs)} x {args.requests} requests, {len(report.charts)} charts "
              f"(writing the inputs took {t_write:.2f} s, not counted); load average {os.getloadavg()[0]:.1f} "
              f"on {os.cpu_count()} cores")
        print(f"  {'stage':14s} {'wall s':>7s} {'cpu s':>7s}")
        for name, (w, c) in stages.items():
            print(f"  {name:14s} {w:7.2f} {c:7.2f}")
        print(f"  {'total':14s} {total:7.2f} {cpu:7.2f}   target {TARGET_S:.0f} s   ratio wall {total / TARGET_S:.2f}"
              f", cpu {cpu / TARGET_S:.2f}")
        print(f"  csv + json    {t_table:6.3f} s")
        print(f"size: {size / 1e6:.2f} MB   target {TARGET_MB:.0f} MB   ratio {size / 1e6 / TARGET_MB:.2f}   "
              f"(plotly.js {js / 1e6:.2f} MB, data and markup {(size - js) / 1e6:.2f} MB)")
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "kvbench", "report", str(root / "runs"), "-o",
                               str(root / "report-cli.html")], capture_output=True, text=True, check=False)
        cli = time.perf_counter() - t0
        status = "ok" if proc.returncode == 0 else f"exit {proc.returncode}: {proc.stderr.strip()[-200:]}"
        print(f"cli: `kvbench report` end to end (start-up and imports included) {cli:.2f} s ({status})")
        what = f"{len(report.runs)} runs x {args.requests:,} requests"
        figs.add(f"`kvbench report` build ({what}, {len(report.charts)} charts), in process", total, "s", TARGET_S,
                 f"{cpu:.2f} s CPU")
        figs.add(f"report file size ({what})", size / 1e6, "MB", TARGET_MB,
                 f"plotly.js {js / 1e6:.2f} MB, data and markup {(size - js) / 1e6:.2f} MB")
        figs.add(f"`kvbench report` ({what}), fresh process incl. start-up",
                 cli if proc.returncode == 0 else float("nan"), "s", TARGET_S,
                 "" if proc.returncode == 0 else status)
        if not args.no_browser:
            timing = browser_render_ms(out)
            if timing is None:
                print("browser: chromium not found, skipped")
            else:
                wall, ms = timing
                print(f"browser: all charts drawn {ms / 1000:.2f} s after navigation start "
                      f"({wall:.2f} s including Chromium start-up)")
                figs.add("headless Chromium: all charts drawn after navigation start", ms / 1000, "s",
                         note=f"{wall:.2f} s including Chromium start-up")
    figs.write(args.json)


if __name__ == "__main__":
    main()
