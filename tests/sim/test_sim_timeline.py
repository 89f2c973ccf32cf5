"""``--scrape-interval`` on the simulator: its own state sampled at t = 0, dt, 2dt, ... of simulated time.

Timings use the profile ``HAND`` (tests/sim/sim_traces.py): a step costs 10 ms + 1 ms per prompt token
computed + 2 ms per decoding sequence.
"""

from __future__ import annotations

import numpy as np
import pytest
from tests.sim.sim_traces import request_trace, write_profile

from kvbench.cli import app
from kvbench.errors import KvbenchError
from kvbench.replay import run_replay
from kvbench.spec import ReplaySpec
from kvbench.results import read_run
from kvbench.timeline import TIMELINE_FILE, read_timeline


def hand_trace(tmp_path):
    # a: 64 tokens (4 blocks) and 3 outputs; b: 32 unrelated tokens (2 blocks), 1 output; both at t = 0
    return request_trace(tmp_path / "t.parquet", [("a", 0.0, np.arange(1000, 1064), 3),
                                                  ("b", 0.0, np.arange(5000, 5032), 1)])


def spec(tmp_path, trace, name="run", **kw):
    base = {"trace": trace, "output": tmp_path / name, "profile": str(write_profile(tmp_path / "hand.toml")),
            "workers": 1, "max_num_seqs": 1, "cache_tokens": 176, "progress": False, "scrape_interval_s": 0.05}
    return ReplaySpec(**{**base, **kw})


def test_simulated_timeline_is_exact_on_a_hand_trace(tmp_path):
    out = run_replay(spec(tmp_path, hand_trace(tmp_path)))
    run, tl = read_run(out), read_timeline(out)
    assert run.config["scrape_interval_s"] == 0.05
    # 176 tokens = 11 blocks, one of them vLLM's null block: 10 usable. With max_num_seqs 1, a runs alone:
    # prefill 10 + 64 = 74 ms, two decode steps of 10 + 2 = 12 ms (the second output token needs a 5th block),
    # done at 98 ms; then b: 10 + 32 = 42 ms, done at 140 ms. A sample at t shows the state after every event
    # at or before t, and the last is the first grid time after the last event.
    assert run.requests.set_index("request_id")["done_s"].to_dict() == pytest.approx({"a": 0.098, "b": 0.140})
    assert tl["t_s"].tolist() == pytest.approx([0.0, 0.05, 0.10, 0.15])
    assert tl["worker"].tolist() == [0] * 4 and set(tl["source"]) == {"simulator"}
    assert tl["kv_cache_usage"].tolist() == pytest.approx([0.4, 0.4, 0.2, 0.0])  # a's 4 blocks, b's 2, none
    assert tl["running"].tolist() == [1, 1, 1, 0]
    assert tl["waiting"].tolist() == [1, 1, 0, 0]
    assert tl["prefix_queries_total"].tolist() == [64, 64, 96, 96]
    assert tl["prefix_hits_total"].tolist() == [0, 0, 0, 0]
    assert tl["preemptions_total"].tolist() == [0, 0, 0, 0] and tl["error"].isna().all()


def test_unbounded_cache_has_no_usage_and_every_worker_is_sampled(tmp_path):
    out = run_replay(spec(tmp_path, hand_trace(tmp_path), workers=2, cache_tokens=None, max_num_seqs=4))
    tl = read_timeline(out)
    assert tl["kv_cache_usage"].isna().all()
    assert sorted(set(tl["worker"])) == [0, 1]
    assert (tl.groupby("worker").size() == len(tl) // 2).all()


def test_no_interval_writes_no_timeline_and_removes_a_stale_one(tmp_path):
    trace = hand_trace(tmp_path)
    out = run_replay(spec(tmp_path, trace))
    assert (out / TIMELINE_FILE).exists()
    run_replay(spec(tmp_path, trace, scrape_interval_s=None))  # the same -o, as --overwrite does
    assert read_timeline(out) is None
    assert "scrape_interval_s" in read_run(out).config


@pytest.mark.parametrize("value", [0.0, -1.0, float("nan"), float("inf")])
def test_interval_must_be_positive(tmp_path, value):
    with pytest.raises(KvbenchError, match="^--scrape-interval"):
        run_replay(spec(tmp_path, hand_trace(tmp_path), scrape_interval_s=value))
    assert not (tmp_path / "run").exists()


def test_cli_flag_reaches_the_run(tmp_path):
    from typer.testing import CliRunner

    trace = hand_trace(tmp_path)
    profile = write_profile(tmp_path / "hand.toml")
    args = ["replay", str(trace), "--workers", "1", "--cache-tokens", "176", "--profile", str(profile),
            "--no-progress", "-o", str(tmp_path / "cli")]
    res = CliRunner().invoke(app, [*args, "--scrape-interval", "0.05"])
    assert res.exit_code == 0, res.output
    assert len(read_timeline(tmp_path / "cli")) >= 3
    bad = CliRunner().invoke(app, [*args, "--overwrite", "--scrape-interval", "0"])
    assert bad.exit_code != 0 and "--scrape-interval 0.0: must be a positive" in str(bad.exception)
