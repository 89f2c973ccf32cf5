"""``--scrape-interval`` on real workers: /metrics sampled during the run into timeline.parquet.

Nothing here times the scraper tightly: requests stay in flight for many intervals (``token_delay_s``), so
even a slow machine takes several samples while they run.
"""

from __future__ import annotations

import numpy as np
import pytest
from tests.http.http_helpers import make_trace, spec_for

from kvbench.replay import run_replay
from kvbench.results import read_run
from kvbench.timeline import TIMELINE_SCHEMA, read_timeline


def slow_trace(n: int = 4, output_tokens: int = 12):
    """``n`` requests at t = 0: with the fake server's 0.1 s per token each is in flight for over a second."""
    rng = np.random.default_rng(0)
    return make_trace([{"request_id": f"r{i}", "arrival_s": 0.0, "output_tokens": output_tokens,
                        "prompt_token_ids": rng.integers(0, 16000, 40).tolist()} for i in range(n)])


def replay(tmp_path, urls, interval=0.1, **kw):
    trace = slow_trace()
    spec = spec_for(tmp_path, urls, scrape_interval_s=interval, **kw)
    out = run_replay(spec, trace)
    return read_run(out), read_timeline(out)


def test_timeline_follows_requests_in_flight(tmp_path, fake_server):
    a, b = fake_server(token_delay_s=0.1), fake_server(token_delay_s=0.1)
    run, tl = replay(tmp_path, [a.url, b.url])
    assert run.config["scrape_interval_s"] == 0.1
    assert (run.requests["status"] == "ok").all()
    assert list(tl.columns) == [f.name for f in TIMELINE_SCHEMA]
    assert set(tl["source"]) == {"server"} and tl["error"].isna().all()
    end = run.requests["done_s"].max()
    for w in (0, 1):
        mine = tl[tl["worker"] == w]
        t = mine["t_s"].to_numpy()
        assert (np.diff(t) > 0).all() and t[0] >= 0 and t[-1] <= end + 1.0  # the run's own clock
        assert len(mine) >= 4  # the run lasts over ten intervals
        # round robin sent this worker two requests at t = 0, in flight together for over a second
        assert mine["running"].max() == 2
        assert np.allclose(mine["kv_cache_usage"], mine["running"] / 10)  # the fake's gauge
        assert (np.diff(mine["prefix_queries_total"]) >= 0).all()
        assert mine["prefix_queries_total"].iloc[-1] >= 80  # both 40-token prompts counted by the end
        assert (mine["waiting"] == 0).all() and (mine["preemptions_total"] == 0).all()


def test_sglang_names_fill_the_same_columns(tmp_path, fake_server):
    srv = fake_server(token_delay_s=0.1, flavour="sglang")
    _, tl = replay(tmp_path, [srv.url])
    assert tl["running"].max() == 4
    assert np.allclose(tl["kv_cache_usage"], tl["running"] / 10)
    assert tl["prefix_queries_total"].iloc[-1] >= 160 and tl["preemptions_total"].isna().all()


def test_failing_scrapes_are_error_rows_and_the_run_goes_on(tmp_path, fake_server):
    srv = fake_server(token_delay_s=0.1, metrics_status=500)
    run, tl = replay(tmp_path, [srv.url])
    assert (run.requests["status"] == "ok").all()
    assert len(tl) >= 4 and tl["error"].str.contains("HTTP 500").all()
    assert tl[["kv_cache_usage", "running", "waiting"]].isna().all().all()


def test_a_slow_scrape_skips_ticks_as_error_rows(tmp_path, fake_server):
    # /metrics answers after 0.5 s while ticks come every 0.1 s: the ticks in between are skipped, not piled up
    srv = fake_server(token_delay_s=0.1, metrics_delay_s=0.5)
    run, tl = replay(tmp_path, [srv.url])
    assert (run.requests["status"] == "ok").all()
    skipped = tl["error"].fillna("").str.startswith("skipped")
    assert skipped.sum() >= 2
    assert tl.loc[~skipped, "running"].notna().any()  # the slow answers still arrive as samples
    assert (np.diff(tl["t_s"]) >= 0).all()


def test_validate_writes_both_timelines_and_the_report_overlays_them(tmp_path, fake_server, monkeypatch):
    from kvbench import cli
    from kvbench.report.build import build_report
    from kvbench.report.inputs import load_inputs
    from kvbench.trace import write_trace

    servers = [fake_server(token_delay_s=0.1) for _ in range(2)]
    t = slow_trace()
    trace = write_trace(tmp_path / "t.parquet", t.df, t.meta)
    out = tmp_path / "v"
    monkeypatch.setattr("sys.argv", ["kvbench", "validate", str(trace), "--target", ",".join(s.url for s in servers),
                                     "--repeats", "1", "--profile", "cpu-tiny-llama", "--no-progress",
                                     "--scrape-interval", "0.1", "-o", str(out)])
    try:
        cli.main()
    except SystemExit as exc:
        pytest.fail(f"validate exited with {exc.code}")
    real, sim = out / "real" / "vllm-round_robin" / "rep0", out / "sim" / "vllm-round_robin"
    assert set(read_timeline(real)["source"]) == {"server"}
    assert set(read_timeline(sim)["source"]) == {"simulator"}
    chart = next(c for c in build_report(load_inputs([out])).charts if c.title == "server state over time")
    assert {tr.line.dash for tr in chart.figure.data} == {"solid", "dash"}  # one view: both overlaid
