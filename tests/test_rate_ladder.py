"""`replay --rate-scale`: a load ladder on one fixed trace, charted against offered load in the report."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from kvbench.cli import app
from kvbench.errors import KvbenchError
from kvbench.replay import parse_rate_scales
from kvbench.report.commands import make_report
from kvbench.results import read_run
from tests.sim.sim_traces import make_trace


def test_each_combination_runs_at_each_rate(tmp_path):
    trace = make_trace(tmp_path / "t.parquet")
    out = tmp_path / "ladder"
    res = CliRunner().invoke(app, ["replay", str(trace), "--workers", "2", "--router", "round_robin,cache_aware",
                                   "--rate-scale", "0.5,4", "--time-scale", "2", "--goodput", "ttft:50",
                                   "-o", str(out), "--no-progress"])
    assert res.exit_code == 0, res.output
    runs = sorted(p.parent.relative_to(out).as_posix() for p in out.rglob("run.json"))
    assert runs == ["lru-cache_aware/rate-x0.5", "lru-cache_aware/rate-x4",
                    "lru-round_robin/rate-x0.5", "lru-round_robin/rate-x4"]
    slow, fast = read_run(out / "lru-round_robin/rate-x0.5"), read_run(out / "lru-round_robin/rate-x4")
    assert slow.config["time_scale"] == 4.0 and fast.config["time_scale"] == 0.5  # --time-scale 2 / scale
    assert slow.config["name"] == "lru-round_robin/rate-x0.5"
    # 8x the offered load really arrives 8x as fast
    span = lambda r: r.requests["arrival_s"].max() - r.requests["arrival_s"].min()  # noqa: E731
    assert span(slow) == pytest.approx(8 * span(fast))
    _, report = make_report([out])
    (sweep,) = [c for c in report.charts if c.title == "sweep time_scale"]
    fig = sweep.figure
    assert fig.layout.xaxis.title.text == "offered load (x the trace arrival rate)"
    assert sorted({x for trace_ in fig.data for x in trace_.x}) == [0.25, 2.0]  # (1 / 2) x 0.5 and x 4
    assert [a.text for a in fig.layout.annotations][-1] == "goodput (req/s)"  # the fourth panel


@pytest.mark.parametrize("text, why", [("0.5,,2", "empty"), ("1,x", "not a number"), ("0,1", "positive"),
                                       ("-1", "positive"), ("inf", "positive"), ("2,2", "repeated")])
def test_bad_ladders_are_one_line(text, why):
    with pytest.raises(KvbenchError, match=f"--rate-scale .*{why}"):
        parse_rate_scales(text)
