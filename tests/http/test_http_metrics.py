"""Prometheus parsing and cache hygiene outcomes."""

from __future__ import annotations

import pytest
from tests.http.http_helpers import open_loop_trace, spec_for

from kvbench.errors import KvbenchError
from kvbench.http import metrics
from kvbench.http.replay import run_http
from kvbench.http.targets import parse_target

SAMPLE = '''# HELP vllm:prefix_cache_hits_total Prefix cache hits
# TYPE vllm:prefix_cache_hits_total counter
vllm:prefix_cache_hits_total{engine="0",model_name="m \\"q\\""} 96.0
vllm:prefix_cache_hits_total{engine="1",model_name="m"} 4.0
vllm:prefix_cache_queries_total{engine="0",model_name="m"} 200.0 1712345678000
vllm:cache_config_info{block_size="32",num_gpu_blocks="1024",cache_dtype="auto"} 1.0
vllm:time_to_first_token_seconds_sum{engine="0"} 1.5
vllm:time_to_first_token_seconds_count{engine="0"} 3.0
vllm:time_to_first_token_seconds_bucket{engine="0",le="+Inf"} 3.0
garbage line
'''


def test_parse_sums_label_sets_and_reads_cache_config():
    snap = metrics.MetricsSnapshot.from_text("u", SAMPLE)
    assert snap.values[metrics.PREFIX_HITS] == 100.0
    assert snap.values[metrics.PREFIX_QUERIES] == 200.0
    assert snap.block_size == 32 and snap.num_blocks == 1024
    labels = [s.labels for s in metrics.parse_prometheus(SAMPLE) if s.name == metrics.PREFIX_HITS]
    assert labels[0]["model_name"] == 'm "q"'


def test_one_cache_config_parser_and_block_size_choice():
    assert metrics.parse_cache_config(SAMPLE) == {"block_size": "32", "num_gpu_blocks": "1024", "cache_dtype": "auto"}
    assert metrics.parse_cache_config("vllm:prefix_cache_hits_total 1.0\n") == {}
    bare = metrics.MetricsSnapshot.from_text("a", "")
    full = metrics.MetricsSnapshot.from_text("b", SAMPLE)
    fallbacks = [(None, "cluster.json"), (48, "--block-size")]
    assert metrics.choose_block_size([bare, full], fallbacks) == (32, "server /metrics cache_config_info")
    assert metrics.choose_block_size([bare], fallbacks) == (48, "--block-size")
    assert metrics.choose_block_size([bare], [(64, "cluster.json"), *fallbacks]) == (64, "cluster.json")
    assert metrics.server_num_blocks([bare, full]) == 1024 and metrics.server_num_blocks([bare]) is None


def test_counter_deltas_and_histogram_mean():
    before = metrics.MetricsSnapshot.from_text("u", SAMPLE)
    after = metrics.MetricsSnapshot.from_text("u", SAMPLE.replace("96.0", "146.0").replace("200.0", "300.0")
                                              .replace("1.5", "2.5").replace("_count{engine=\"0\"} 3.0",
                                                                             "_count{engine=\"0\"} 5.0"))
    assert metrics.counter_hit_rate([(before, after)]) == {"hits": 50.0, "queries": 100.0, "hit_rate": 0.5}
    assert metrics.histogram_mean_delta(before, after, "vllm:time_to_first_token_seconds") == pytest.approx(0.5)
    missing = metrics.MetricsSnapshot(url="u", error="GET /metrics answered HTTP 404")
    assert metrics.counter_hit_rate([(before, after), (missing, missing)])["hit_rate"] is None


@pytest.mark.parametrize("reset, action", [("404", "unsupported"), ("false", "refused")])
def test_hygiene_records_servers_that_cannot_reset(tmp_path, fake_server, reset, action):
    srv = fake_server(reset=reset)
    res = run_http(spec_for(tmp_path, [srv.url]), open_loop_trace(2, 0.0))
    rec = res.config["cache_hygiene"][0]
    assert rec["action"] == action and rec["verified"] is None
    if reset == "404":
        assert "VLLM_SERVER_DEV_MODE=1" in rec["detail"]
    assert (res.rows["status"] == "ok").all()


def test_run_config_records_server_view(tmp_path, fake_server):
    srv = fake_server(block_size=32)
    res = run_http(spec_for(tmp_path, [srv.url]), open_loop_trace(4, 0.0, prompt_len=70, shared=64))
    cfg = res.config
    assert cfg["block_size"] == 32 and cfg["router_block_size"] == 32
    assert cfg["server_cache"][0]["num_blocks"] == 512
    assert cfg["model"] == "fake-model"
    assert cfg["metrics_after"][0]["values"][metrics.PREFIX_QUERIES] > cfg["metrics_before"][0]["values"][
        metrics.PREFIX_QUERIES]
    assert cfg["server_ttft_mean_ms"][0] is not None


def test_target_parsing(tmp_path):
    t = parse_target("http://127.0.0.1:1/v1/, http://127.0.0.1:2")
    assert t.urls == ["http://127.0.0.1:1", "http://127.0.0.1:2"]
    with pytest.raises(KvbenchError, match="twice"):
        parse_target("http://a:1,http://a:1")
    with pytest.raises(KvbenchError, match="cluster.json"):
        parse_target(str(tmp_path / "missing.json"))
    p = tmp_path / "cluster.json"
    p.write_text('{"workers": [{"url": "http://127.0.0.1:5/"}], "model": "m", "block_size": 32, "eviction": "rlt"}')
    t = parse_target(str(p))
    assert (t.urls, t.model, t.block_size, t.eviction) == (["http://127.0.0.1:5"], "m", 32, "rlt")


def test_exemplars_escapes_and_odd_lines_parse_as_prometheus_does():
    from kvbench.http.metrics import parse_prometheus

    text = (
        "# HELP vllm:prefix_cache_hits Hits.\n"
        "# TYPE vllm:prefix_cache_hits counter\n"
        'vllm:prefix_cache_hits_total{engine="0",model_name="a\\\\nb"} 10.0 # {trace_id="abc"} 1.0\n'
        'vllm:cache_config_info{block_size="16",num_gpu_blocks="100"} 1.0\n'
    )
    samples = {s.name: s for s in parse_prometheus(text)}
    hits = samples["vllm:prefix_cache_hits_total"]
    assert hits.value == 10.0 and hits.labels == {"engine": "0", "model_name": "a\\nb"}  # backslash, then n
    assert samples["vllm:cache_config_info"].labels["num_gpu_blocks"] == "100"
    broken = text + "this line is not prometheus {{\n" + 'vllm:num_requests_running{engine="0"} 3\n'
    names = {s.name for s in parse_prometheus(broken)}
    assert {"vllm:prefix_cache_hits_total", "vllm:num_requests_running"} <= names
