"""An SGLang target gets the same columns as vLLM: server-side hit rate from SGLang's own counters, its TTFT
histogram, and cache hygiene through /flush_cache (SGLang has no /reset_prefix_cache)."""

from __future__ import annotations

import pytest
from tests.http.http_helpers import open_loop_trace, spec_for

from kvbench.http.replay import run_http
from kvbench.results import compute_summary


def test_sglang_counters_give_the_server_side_hit_rate_and_ttft(tmp_path, fake_server):
    a, b = fake_server(flavour="sglang"), fake_server(flavour="sglang")
    a.cached_blocks.add((1,) * 16)  # something to flush
    trace = open_loop_trace(12, gap_s=0.01, shared=48, prompt_len=60)
    res = run_http(spec_for(tmp_path, [a.url, b.url], router="prefix_hash"), trace)
    summary = compute_summary(res.rows, 2, res.hit_rates)
    # cached tokens are the sum over SGLang's cache sources (device + host here)
    assert res.hit_rates["server_counters"] == pytest.approx(summary["hit_rates"]["requests"])
    assert summary["hit_rates"]["requests"] > 0.5
    served = set(res.rows["worker"])
    ttft = res.config["server_ttft_mean_ms"]
    assert served and all(ttft[w] is not None and ttft[w] > 0 for w in served), ttft  # SGLang's histogram
    hygiene = res.config["cache_hygiene"]
    assert [h["action"] for h in hygiene] == ["reset", "reset"] and [h["verified"] for h in hygiene] == [True, True]
    assert all("/flush_cache" in h["detail"] for h in hygiene)


def test_a_server_with_neither_reset_says_so(tmp_path, fake_server):
    srv = fake_server(reset="404")
    res = run_http(spec_for(tmp_path, [srv.url]), open_loop_trace(2, gap_s=0.01))
    (h,) = res.config["cache_hygiene"]
    assert h["action"] == "unsupported" and "/flush_cache is not there either" in h["detail"]
