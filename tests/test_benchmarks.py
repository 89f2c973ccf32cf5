"""Smoke test of benchmarks/run_all.py: every benchmark runs at --quick sizes and lands in the Markdown table.

Only the shape of the output is checked; performance figures are the benchmarks' business, never a test's.
"""

from __future__ import annotations

import importlib.util
import json
import math
import re
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
EXPECTED = ("bench_generate", "bench_cache", "bench_sim", "bench_scale", "bench_report", "bench_client")
NUMBER = re.compile(r"^-?[\d,]+(\.\d+)?(e-?\d+)?x?\b")


def load_run_all():
    spec = importlib.util.spec_from_file_location("kvbench_bench_run_all", BENCH / "run_all.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def table_rows(markdown: str) -> list[list[str]]:
    rows = [line for line in markdown.splitlines() if line.startswith("| `")]
    return [[c.strip() for c in re.split(r"(?<!\\)\|", row)[1:-1]] for row in rows]


def test_run_all_quick_writes_a_row_per_benchmark(tmp_path):
    md_path, json_dir = tmp_path / "perf.md", tmp_path / "figures"
    proc = subprocess.run(
        [sys.executable, str(BENCH / "run_all.py"), "--quick", "--skip-vllm", "-o", str(md_path),
         "--json-dir", str(json_dir)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    markdown = md_path.read_text()
    assert proc.stdout == markdown  # stdout carries only the Markdown; the scripts' own output goes to stderr
    assert markdown.startswith("## Performance\n")
    assert re.search(r"\d+ cores, [\d.]+ GiB RAM, .+, Python 3\.\d+", markdown)
    assert "Quick run" in markdown

    rows = table_rows(markdown)
    assert all(len(r) == 5 for r in rows), rows
    by_bench: dict[str, list[list[str]]] = {}
    for r in rows:
        by_bench.setdefault(r[0].strip("`").removesuffix(".py"), []).append(r)
    for name in EXPECTED:
        measured = [r[3] for r in by_bench.get(name, [])]
        assert measured and all(NUMBER.match(m) for m in measured), (name, measured)
        figures = json.loads((json_dir / f"{name}.json").read_text())
        assert figures["benchmark"] == name and figures["quick"] is True
        assert figures["figures"] and all(math.isfinite(f["value"]) for f in figures["figures"])
        assert any(f["target"] is not None for f in figures["figures"]), name
    assert by_bench["bench_http"] == [["`bench_http.py`", "—", "—", "skipped (--skip-vllm)", "—"]]
    # one row per policy in the cache benchmark, each with its own target
    cache_rows = [r for r in by_bench["bench_cache"] if "slowdown" in r[1]]
    assert {r[2] for r in cache_rows} == {"< 3x", "< 10x"}


def test_verdicts_compare_against_upper_bound_targets():
    run_all = load_run_all()
    data = {
        "benchmark": "bench_x",
        "title": "x",
        "quick": False,
        "params": {},
        "figures": [
            {"name": "fast enough", "value": 4.0, "unit": "s", "target": 10.0, "note": ""},
            {"name": "too slow", "value": 12.5, "unit": "s", "target": 10.0, "note": "a | b"},
            {"name": "context", "value": 1234.5, "unit": "req/s", "target": None, "note": ""},
            {"name": "lost", "value": None, "unit": "s", "target": 10.0, "note": "exit 1"},
        ],
    }
    outcomes = [
        run_all.Outcome("bench_x", data=data, seconds=60.0),
        run_all.Outcome("bench_y", problem="failed (x)"),
    ]
    info = {k: k for k in ("cores", "ram", "cpu", "python", "os", "date", "load")}
    rows = table_rows(run_all.markdown(outcomes, info, "cmd", quick=False))
    assert rows[0][2:] == ["< 10 s", "4 s", "0.40 · met"]
    assert rows[1][2:] == ["< 10 s", "12.5 s (a \\| b)", "1.25 · **missed**"]
    assert rows[2][2:] == ["—", "1,234 req/s", "—"]
    assert rows[3][3:] == ["— (exit 1)", "no value"]
    assert rows[4] == ["`bench_y.py`", "—", "—", "failed (x)", "—"]
    quick_rows = table_rows(run_all.markdown(outcomes[:1], info, "cmd", quick=True))
    assert quick_rows[1][4] == "1.25 (not judged: --quick)"
