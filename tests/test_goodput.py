"""Goodput as vllm bench serve defines it: completed requests meeting every SLO, per second."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from kvbench.errors import KvbenchError
from kvbench.goodput import parse_goodput
from kvbench.results import compute_summary


def rows() -> pd.DataFrame:
    # five requests over 10 s (arrival 0 .. last done 10): TTFT ms 100/300/600/200/-, TPOT ms 10/60/20/-/-
    return pd.DataFrame({
        "status": ["ok", "ok", "ok", "ok", "error"],
        "worker": [0, 0, 1, 1, 1],
        "arrival_s": [0.0, 1.0, 2.0, 3.0, 4.0],
        "done_s": [2.0, 4.0, 10.0, 5.0, np.nan],
        "ttft_s": [0.1, 0.3, 0.6, 0.2, np.nan],
        "tpot_s": [0.010, 0.060, 0.020, np.nan, np.nan],  # request 3 produced one token: no TPOT
        "e2e_s": [2.0, 3.0, 8.0, 2.0, np.nan],
        "itl_s": [None] * 5,
        "input_tokens": [10] * 5,
        "output_tokens": [5, 5, 5, 1, 0],
        "cached_tokens": [0] * 5,
    })


def test_a_request_counts_only_when_it_meets_every_objective():
    s = compute_summary(rows(), 2, goodput={"ttft": 500.0, "tpot": 50.0})
    # ttft fails request 2 (600 ms); tpot fails request 1 (60 ms); request 3 has no TPOT and counts
    assert s["good_requests"] == 2  # requests 0 and 3
    assert s["request_goodput"] == pytest.approx(2 / 10.0)
    # attainment over the five requests that ended (the failed one meets nothing)
    assert s["slo_attainment"] == {"ttft": pytest.approx(3 / 5), "tpot": pytest.approx(3 / 5)}
    assert s["goodput_attainment"] == pytest.approx(2 / 5)
    assert s["goodput_slo_ms"] == {"ttft": 500.0, "tpot": 50.0}


def test_objectives_are_inclusive_and_e2el_is_end_to_end():
    s = compute_summary(rows(), 2, goodput={"e2el": 3000.0})
    assert s["good_requests"] == 3  # 2 s, 3 s (exactly the limit), 2 s; not 8 s
    assert s["slo_attainment"] == {"e2el": pytest.approx(3 / 5)}


def test_without_objectives_the_summary_has_no_goodput_keys():
    assert "request_goodput" not in compute_summary(rows(), 2)


def test_cancelled_requests_are_left_out_of_attainment():
    df = rows()
    df.loc[4, "status"] = "cancelled"
    s = compute_summary(df, 2, goodput={"ttft": 500.0})
    assert s["slo_attainment"]["ttft"] == pytest.approx(3 / 4)


def test_parse_takes_commas_or_spaces_as_vllm_does():
    assert parse_goodput("ttft:500,tpot:50") == {"ttft": 500.0, "tpot": 50.0}
    assert parse_goodput("ttft:500 e2el:2.5e3") == {"ttft": 500.0, "e2el": 2500.0}
    assert parse_goodput(None) == {}


@pytest.mark.parametrize("text, why", [("ttft=500", "NAME:MILLISECONDS"), ("itl:5", "NAME:MILLISECONDS"),
                                       ("ttft:fast", "not a number"), ("ttft:0", "positive"),
                                       ("ttft:nan", "positive"), ("ttft:-5", "positive")])
def test_bad_objectives_are_one_line_naming_the_flag(text, why):
    with pytest.raises(KvbenchError, match=f"^--goodput .*{why}"):
        parse_goodput(text)


def test_replay_and_report_carry_goodput(tmp_path):
    """`replay --goodput` records it; `report` shows it, and `report --goodput` re-judges every run."""
    from typer.testing import CliRunner

    from kvbench.cli import app
    from kvbench.report.commands import make_report
    from kvbench.results import read_run
    from tests.sim.sim_traces import make_trace

    trace = make_trace(tmp_path / "t.parquet")
    runs = []
    for router in ("round_robin", "cache_aware"):
        out = tmp_path / router
        res = CliRunner().invoke(app, ["replay", str(trace), "--workers", "2", "--router", router, "-o", str(out),
                                       "--no-progress", "--goodput", "ttft:1e6,e2el:1e6"])
        assert res.exit_code == 0, res.output
        runs.append(out)
        s = read_run(out).summary
        assert s["goodput_slo_ms"] == {"ttft": 1e6, "e2el": 1e6}
        assert s["good_requests"] == s["completed"] > 0  # generous objectives: every completed request
        assert s["request_goodput"] == pytest.approx(s["request_throughput"])
    csv, _ = make_report(runs, fmt="csv")
    table = pd.read_csv(__import__("io").StringIO(csv))
    assert table["request_goodput"].tolist() == pytest.approx(table["request_throughput"].tolist())
    html, report = make_report(runs)
    assert any(c.title == "goodput" for c in report.charts) and "SLO met" in html
    # re-judged with an objective nothing meets: zero goodput, attainment 0, in every run
    csv, _ = make_report(runs, fmt="csv", goodput={"ttft": 1e-9})
    table = pd.read_csv(__import__("io").StringIO(csv))
    assert (table["request_goodput"] == 0).all() and (table["goodput_attainment"] == 0).all()
    # without objectives anywhere, the HTML table has no goodput columns
    plain = tmp_path / "plain"
    assert CliRunner().invoke(app, ["replay", str(trace), "--workers", "2", "-o", str(plain),
                                    "--no-progress"]).exit_code == 0
    html, _ = make_report([plain])
    assert "SLO met" not in html
