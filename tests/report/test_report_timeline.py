"""Runs with timeline.parquet (``--scrape-interval``): the server-state chart, server and simulator overlaid."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from tests.report.synthetic import write_synthetic_run

from kvbench.report.build import build_report
from kvbench.report.inputs import load_inputs
from kvbench.report.page import render_html
from kvbench.timeline import TIMELINE_FILE, timeline_frame, write_timeline


def _timeline(source: str, workers: int = 2, n: int = 20, level: float = 0.5, errors: int = 0) -> pd.DataFrame:
    rows = []
    for k in range(n):
        for w in range(workers):
            failed = k < errors
            rows.append({"t_s": 0.5 * k, "worker": w, "source": source,
                         "kv_cache_usage": None if failed else level * k / n, "running": None if failed else k % 4,
                         "waiting": None if failed else k % 3, "error": "GET /metrics failed" if failed else None})
    return timeline_frame(rows)


def _validate_like(root: Path) -> dict[str, Path]:
    """What `kvbench validate --scrape-interval` writes for one combination (the servers' own eviction,
    simulated as lru), plus a simulated run of another combination without a timeline."""
    common = {"workers": 2, "cache_tokens": 4096}
    runs = {
        "real": write_synthetic_run(root / "real/vllm-round_robin/rep0", name="real/vllm-round_robin/rep0",
                                    eviction="vllm", target="http://a,http://b", **common),
        "sim": write_synthetic_run(root / "sim/vllm-round_robin", name="sim/vllm-round_robin", eviction="lru",
                                   **common),
        "plain": write_synthetic_run(root / "sim/rlt-round_robin", name="sim/rlt-round_robin", eviction="rlt",
                                     **common),
    }
    write_timeline(runs["real"], _timeline("server", errors=2))
    write_timeline(runs["sim"], _timeline("simulator", level=0.6))
    return runs


def _state_chart(report):
    return next((c for c in report.charts if c.title == "server state over time"), None)


def test_server_and_simulator_are_overlaid(tmp_path: Path):
    _validate_like(tmp_path)
    report = build_report(load_inputs([tmp_path]))
    chart = _state_chart(report)
    assert chart is not None
    traces = chart.figure.data
    # one view (the server run with its simulation): 2 runs x 2 workers x 3 panels, all visible
    assert len(traces) == 12 and all(t.visible for t in traces)
    dashes = {t.line.dash for t in traces}
    assert dashes == {"solid", "dash"}
    sim_usage = [t for t in traces if t.line.dash == "dash" and "simulator" in t.name and t.yaxis == "y"]
    assert len(sim_usage) == 2 and np.allclose(sim_usage[0].y, 0.6 * np.arange(20) / 20)
    server_usage = [t for t in traces if t.line.dash == "solid" and t.yaxis == "y"]
    assert np.isnan(np.asarray(server_usage[0].y[:2], dtype=float)).all()  # the failed scrapes are gaps
    notes = " ".join(n for s in report.sections for n in s.notes)
    assert "4 of 40 metric scrapes have no values" in notes
    assert "Solid lines" in chart.note
    assert "Server state over time: real\\u002fvllm-round_robin" in render_html(report)  # JSON escapes "/"


def test_a_menu_picks_the_run_when_several_have_timelines(tmp_path: Path):
    runs = _validate_like(tmp_path)
    write_timeline(runs["plain"], _timeline("simulator", workers=2, n=5))
    chart = _state_chart(build_report(load_inputs([tmp_path])))
    menu = chart.figure.layout.updatemenus[0].buttons
    assert [b.label for b in menu] == ["real/vllm-round_robin/rep0 vs sim/vllm-round_robin", "sim/rlt-round_robin"]
    assert sum(menu[1].args[0]["visible"]) == 6


def test_runs_without_a_timeline_are_left_out(tmp_path: Path):
    runs = _validate_like(tmp_path)
    (runs["real"] / TIMELINE_FILE).unlink()
    report = build_report(load_inputs([tmp_path]))
    chart = _state_chart(report)
    # only the simulated run has one: it stands alone, and neither run without one is named or noted
    assert chart is not None and not chart.figure.layout.updatemenus
    assert {t.name.split(", ")[1].rstrip(")") for t in chart.figure.data} == {"sim/vllm-round_robin"}
    assert not any("timeline" in n or "scrape" in n for s in report.sections for n in s.notes)
    render_html(report)
    assert _state_chart(build_report(load_inputs([runs["plain"]]))) is None  # no timeline at all: no chart


def test_a_corrupt_timeline_is_skipped_with_a_note(tmp_path: Path):
    runs = _validate_like(tmp_path)
    (runs["real"] / TIMELINE_FILE).write_bytes(b"not parquet at all")
    report = build_report(load_inputs([tmp_path]))
    assert len(report.runs) == 3  # the run itself still counts
    chart = _state_chart(report)
    assert chart is not None and {t.line.dash for t in chart.figure.data} == {"dash"}  # the simulation alone
    notes = [n for s in report.sections for n in s.notes if "timeline skipped" in n]
    assert len(notes) == 1 and "real/vllm-round_robin/rep0" in notes[0] and "unreadable" in notes[0]
    render_html(report)
