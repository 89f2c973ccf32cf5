"""Runs replayed with ``--warmup``: the report leaves the warm-up rows out, as the summary does."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tests.report.synthetic import synthetic_rows

from kvbench.report.commands import make_report
from kvbench.report.series import rolling_hit_rate
from kvbench.results import compute_summary, write_run


def _run_with_warmup(out: Path) -> Path:
    """60 rows, the first 10 warm-up, each of those unmistakable: 100 s latencies, no hits, one failed."""
    rows = synthetic_rows(60, 2, seed=0)
    warm = np.arange(60) < 10
    rows["warmup"] = warm
    rows.loc[warm, ["ttft_s", "e2e_s"]] = 100.0
    rows.loc[warm, "cached_tokens"] = 0
    rows.loc[0, "status"] = "error"
    rows.loc[warm, "arrival_s"] -= 50.0  # the warm-up ran long before the measured part
    config = {"name": "warm", "target": "sim", "eviction": "lru", "router": "round_robin",
              "workers": ["a", "b"], "warmup": 10, "summary": compute_summary(rows, 2)}
    return write_run(out, rows, config)


def test_charts_table_and_goodput_cover_measured_requests(tmp_path: Path):
    out = _run_with_warmup(tmp_path / "warm")
    _, report = make_report([out], goodput={"ttft": 1e9})
    run = report.runs[0]
    assert len(run.requests) == 50 and not run.requests["warmup"].any()
    assert run.summary["good_requests"] == 50  # re-judged over the measured rows
    table = report.table.set_index("run").loc["warm"]
    assert (table["num_requests"], table["completed"], table["failed"]) == (50, 50, 0)
    charts = {c.title: c for c in report.charts}
    ttft = charts["TTFT CDF"].figure.data[0]
    assert len(ttft.x) == 50 and max(ttft.x) < 100_000
    over_time = charts["hit rate over time"].figure.data[0]
    measured = rolling_hit_rate(run.requests)
    assert np.allclose(over_time.y, measured.y) and np.allclose(over_time.x, measured.x)
    assert min(over_time.x) >= 0 and min(over_time.y) > 0  # the clock starts at the first measured arrival
    load_x = charts["worker load"].figure.data[0].x
    assert load_x[0] == 0 and max(load_x) < 50
    assert "after a warm-up of 10 requests" in report.runs[0].workload_label
