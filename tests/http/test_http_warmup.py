"""``--warmup`` over HTTP: reset once, warm-up, barrier (the /metrics snapshot), then the measured part."""

from __future__ import annotations

import pytest
from tests.http.http_helpers import open_loop_trace, spec_for

from kvbench.http.hygiene import RESET_PATH
from kvbench.http.replay import run_http
from kvbench.results import compute_summary


def test_warmup_runs_before_the_counters_start(tmp_path, fake_server):
    # six 40-token prompts sharing 32 tokens, 20 ms apart; each takes 50 ms, so the warm-up (r0, r1) ends
    # after r2's trace time. r0 misses, every later request hits the 32 shared tokens.
    srv = fake_server(ttft_s=0.05)
    trace = open_loop_trace(6, gap_s=0.02, shared=32, prompt_len=40)
    res = run_http(spec_for(tmp_path, [srv.url], warmup=2), trace)
    df = res.rows.set_index("request_id")
    assert (df["status"] == "ok").all()
    assert df["warmup"].tolist() == [True, True, False, False, False, False]
    assert df["cached_tokens"].tolist() == [0, 32, 32, 32, 32, 32]
    # the barrier: the first measured request is scheduled once both warm-up requests are done, the rest
    # keep their 20 ms spacing from it
    measured = df[~df["warmup"]]
    assert measured["arrival_s"].iloc[0] >= df.loc[["r0", "r1"], "done_s"].max()
    assert measured["arrival_s"].diff().iloc[1:].tolist() == pytest.approx([0.02] * 3, abs=1e-9)
    assert res.config["warmup"]["requests"] == 2
    assert res.config["warmup"]["barrier_s"] == pytest.approx(measured["arrival_s"].iloc[0], abs=1e-9)
    # the counters' before-snapshot was taken at the barrier: they cover the measured requests only (32 of
    # 40 tokens each), as the summary does; with the warm-up they would read 160 / 240
    summary = compute_summary(res.rows, 1, res.hit_rates)
    assert res.hit_rates["server_counters"] == pytest.approx(0.8, abs=1e-12)
    assert summary["hit_rates"]["requests"] == pytest.approx(0.8, abs=1e-12)
    assert (summary["num_requests"], summary["warmup_requests"]) == (4, 2)
    # the cache was reset (and verified) once, before the warm-up: after the last reset come exactly the
    # trace's six requests
    paths = [p for p, _ in srv.headers_seen]
    last_reset = max(i for i, p in enumerate(paths) if p == RESET_PATH)
    assert [p for p in paths[last_reset:] if p == "/v1/completions"] == ["/v1/completions"] * 6
    assert len(res.config["cache_hygiene"]) == 1 and res.config["cache_hygiene"][0]["verified"]
