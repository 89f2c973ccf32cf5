"""`kvbench validate` against fake vLLM-like workers: the statistics (by hand), the files, errors, Ctrl-C and
the report's fidelity section."""

from __future__ import annotations

import csv
import io
import itertools
import json
import math
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.http.fake_openai import FakeOpenAI, free_port
from tests.http.http_helpers import open_loop_trace
from tests.report.report_strings import IMG, XSS

from kvbench import cli
from kvbench.trace import write_trace
from kvbench.validate import compare, stats
from kvbench.validate.record import FIDELITY_CSV, FIDELITY_FILE, load_record


# --- statistics, checked by hand --------------------------------------------------------------------------
@pytest.mark.parametrize("x,y,expected", [
    ([1, 2, 3], [10, 20, 30], 1.0),
    ([1, 2, 3], [30, 20, 10], -1.0),
    ([1, 2, 3], [1, 3, 2], 1 / 3),  # pairs (1,2) and (1,3) concordant, (2,3) discordant
    ([1, 2, 3, 4], [2, 1, 4, 3], 1 / 3),  # 4 concordant, 2 discordant of 6
    # one pair tied in x: C = 5, D = 0, n0 = 6, n1 = 1, n2 = 0 -> 5 / sqrt(5 * 6)
    ([1, 2, 2, 3], [1, 2, 3, 4], 5 / math.sqrt(30)),
    # a pair tied on both sides counts in n1 and n2: C = 2 -> 2 / sqrt(2 * 2)
    ([1, 1, 2], [5, 5, 9], 1.0),
    # ties on different pairs: C = 4, D = 0, n1 = n2 = 1 -> 4 / 5
    ([1, 1, 2, 3], [1, 2, 3, 3], 0.8),
])
def test_kendall_tau_b_by_hand(x, y, expected):
    assert stats.kendall_tau_b(x, y) == pytest.approx(expected)
    assert stats.kendall_tau_b(y, x) == pytest.approx(expected)  # symmetric


@pytest.mark.parametrize("x,y", [([], []), ([1.0], [2.0]), ([3, 3, 3], [1, 2, 3]), ([1, 2], [4, 4])])
def test_kendall_tau_b_undefined(x, y):
    assert stats.kendall_tau_b(x, y) is None


def _sign(v: float) -> int:
    return (v > 0) - (v < 0)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 4), st.integers(0, 4)), min_size=2, max_size=9))
def test_kendall_tau_b_equals_the_sign_product_form(pairs):
    """tau-b is also sum(s_x s_y) / sqrt(sum s_x^2 * sum s_y^2) over all pairs, s the sign of a difference."""
    x, y = [p[0] for p in pairs], [p[1] for p in pairs]
    sx = [_sign(x[i] - x[j]) for i, j in itertools.combinations(range(len(x)), 2)]
    sy = [_sign(y[i] - y[j]) for i, j in itertools.combinations(range(len(y)), 2)]
    denom = math.sqrt(sum(a * a for a in sx) * sum(b * b for b in sy))
    expected = sum(a * b for a, b in zip(sx, sy)) / denom if denom else None
    got = stats.kendall_tau_b(x, y)
    assert (got is None and expected is None) or got == pytest.approx(expected)


def test_spread_tolerance_and_within():
    s = stats.spread([0.5, 0.7, None, 0.6, float("nan")])  # missing values are left out
    assert (s.n, s.mean, s.min, s.max) == (3, pytest.approx(0.6), 0.5, 0.7)
    assert s.std == pytest.approx(0.1)  # sample std: sqrt((0.01 + 0.01 + 0) / 2)
    assert stats.hit_rate_tolerance(s) == pytest.approx(0.2)  # the real range
    one = stats.spread([0.5])
    assert one.std == 0.0 and stats.hit_rate_tolerance(one) == 0.02  # the floor
    assert stats.within(0.52, 0.5, 0.02) is True  # exactly the tolerance is inside
    assert stats.within(0.4801, 0.5, 0.02) is True
    assert stats.within(0.521, 0.5, 0.02) is False
    assert stats.within(None, 0.5, 0.02) is None
    assert stats.ratio(3.0, 4.0) == 0.75 and stats.ratio(1.0, 0.0) is None and stats.ratio(None, 1.0) is None


def test_resolved_pairs_ignore_overlapping_real_ranges():
    # a [0.50, 0.52], b [0.51, 0.55] overlap: noise; c [0.70, 0.72] is above both
    lo, hi, mean = [0.50, 0.51, 0.70], [0.52, 0.55, 0.72], [0.51, 0.53, 0.71]
    assert stats.resolved_discordant(lo, hi, mean, sim=[0.6, 0.5, 0.9]) == (2, 0)  # a/b swapped: not blamed
    assert stats.resolved_discordant(lo, hi, mean, sim=[0.6, 0.5, 0.55]) == (2, 1)  # c below a: blamed
    assert stats.resolved_discordant(lo, hi, mean, sim=[0.6, 0.5, 0.6]) == (2, 1)  # a simulated tie: blamed


def _summary(hit, mean_ttft, p50, p90, p99, thr, failed=0):
    return {"hit_rate": hit, "mean_ttft_ms": mean_ttft, "p50_ttft_ms": p50, "p90_ttft_ms": p90,
            "p99_ttft_ms": p99, "request_throughput": thr, "failed": failed, "requests_per_worker": [3, 1]}


def test_combination_numbers_and_verdict():
    runs = compare.CombinationRuns("lru-rr", "rr", "lru", "lru", "a.json")
    runs.real = [("real/lru-rr/rep0", _summary(0.40, 10.0, 8.0, 20.0, 30.0, 4.0)),
                 ("real/lru-rr/rep1", _summary(0.44, 14.0, 12.0, 24.0, 34.0, 6.0, failed=1))]
    runs.sim = ("sim/lru-rr", _summary(0.47, 6.0, 5.0, 11.0, 16.0, 5.5))
    c = compare.combination_fidelity(runs)
    hit = c.metrics["hit_rate"]
    assert hit.real.mean == pytest.approx(0.42) and hit.real.std == pytest.approx(math.sqrt(0.0008))
    assert hit.difference == pytest.approx(0.05) and c.hit_rate_tolerance == pytest.approx(0.04)
    assert c.hit_rate_within is False and hit.sim_in_real_range is False
    assert c.metrics["mean_ttft_ms"].ratio == pytest.approx(0.5)  # 6 / 12
    assert c.metrics["ttft_p50_ms"].ratio == pytest.approx(0.5)  # 5 / 10
    assert c.metrics["ttft_p90_ms"].ratio == pytest.approx(0.5)
    assert c.metrics["ttft_p99_ms"].ratio == pytest.approx(0.5)
    assert c.metrics["request_throughput"].ratio == pytest.approx(1.1)  # 5.5 / 5
    assert c.metrics["request_throughput"].sim_in_real_range is True
    assert c.real_failed == [0, 1] and c.sim_failed == 0 and c.repeats == 2
    assert c.real_requests_per_worker == [[3, 1], [3, 1]] and c.sim_requests_per_worker == [3, 1]
    # a second combination with a clearly higher hit rate and TTFT
    other = compare.CombinationRuns("rlt-rr", "rr", "rlt", "rlt", "b.json")
    other.real = [("r0", _summary(0.60, 20.0, 1, 1, 1, 5.0)), ("r1", _summary(0.62, 22.0, 1, 1, 1, 5.0))]
    other.sim = ("s", _summary(0.61, 9.0, 1, 1, 1, 5.0))
    d = compare.combination_fidelity(other)
    assert d.hit_rate_within is True  # |0.61 - 0.61| <= max(0.02, 0.02)
    ranks = [compare.ranking([c, d], m) for m in ("hit_rate", "mean_ttft_ms")]
    assert [r.kendall_tau_b for r in ranks] == [1.0, 1.0] and [r.agrees for r in ranks] == [True, True]
    orders = compare.eviction_orders([c, d])
    assert [(o.metric, o.real_order, o.sim_order, o.agrees) for o in orders] == [
        ("hit_rate", ["rlt", "lru"], ["rlt", "lru"], True),
        ("mean_ttft_ms", ["lru", "rlt"], ["lru", "rlt"], True)]
    v = compare.verdict([c, d], ranks, orders)
    assert (v.hit_rates_within, v.hit_rate_ranking_agrees, v.trusted) == (False, True, False)
    # the simulator reverses the TTFT order of a pair every repeat agrees on
    other.sim = ("s", _summary(0.61, 5.0, 1, 1, 1, 5.0))
    d = compare.combination_fidelity(other)
    r = compare.ranking([c, d], "mean_ttft_ms")
    assert (r.kendall_tau_b, r.resolved_pairs, r.discordant_resolved_pairs, r.agrees) == (-1.0, 1, 1, False)
    ttft_order = next(o for o in compare.eviction_orders([c, d]) if o.metric == "mean_ttft_ms")
    assert ttft_order.real_order == ["lru", "rlt"] and ttft_order.sim_order == ["rlt", "lru"]
    assert ttft_order.agrees is False
    assert compare.verdict([c, d], [r], [ttft_order]).eviction_order_agrees is False


def test_orders_are_written_best_first_with_ties():
    assert compare.order_text(["lru", "rlt"], [0.39, 0.39], True) == "lru = rlt"
    assert compare.order_text(["lru", "rlt", "arc"], [0.3, 0.5, 0.3], True) == "rlt > arc = lru"
    assert compare.order_text(["lru", "rlt"], [10.0, 5.0], False) == "rlt > lru"  # lower TTFT is better


def test_metric_values_read_from_summaries():
    assert compare.metric_value({"median_ttft_ms": 5.0}, "ttft_p50_ms") == 5.0  # older summaries: no p50 key
    assert compare.metric_value({"p50_ttft_ms": 4.0, "median_ttft_ms": 5.0}, "ttft_p50_ms") == 4.0
    assert compare.metric_value({"hit_rate": float("nan")}, "hit_rate") is None
    assert compare.metric_value({"hit_rate": None}, "hit_rate") is None
    runs = compare.CombinationRuns("x", "rr", "lru", "lru", "t")
    runs.real = [("r0", {"hit_rate": 0.5})]
    runs.sim = ("s", {"hit_rate": float("inf")})
    c = compare.combination_fidelity(runs)
    hit = c.metrics["hit_rate"]
    assert hit.sim is None and hit.ratio is None and c.hit_rate_within is None


# --- end to end against fake workers ------------------------------------------------------------------------
@pytest.fixture
def fakes():
    started: list[FakeOpenAI] = []

    def make(n: int = 2, **kw) -> list[FakeOpenAI]:
        servers = [FakeOpenAI(**kw).start() for _ in range(n)]
        started.extend(servers)
        return servers

    yield make
    for s in started:
        s.stop()


@pytest.fixture
def trace_file(tmp_path) -> Path:
    t = open_loop_trace(10, gap_s=0.02, prompt_len=60, shared=48, output_tokens=2)
    return write_trace(tmp_path / "t.parquet", t.df, t.meta)


def cluster_file(path: Path, servers: list[FakeOpenAI], eviction: str | None = "lru", **extra) -> Path:
    data = {"workers": [{"url": s.url} for s in servers], "model": servers[0].model, **extra}
    if eviction is not None:
        data["eviction"] = eviction
    path.write_text(json.dumps(data))
    return path


def run_cli(monkeypatch, capsys, *args) -> tuple[int, str, str]:
    monkeypatch.setattr("sys.argv", ["kvbench", *map(str, args)])
    code = 0
    try:
        cli.main()
    except SystemExit as exc:
        code = exc.code or 0
    out = capsys.readouterr()
    return code, out.out, out.err


def _run_json(path: Path) -> dict:
    return json.loads((path / "run.json").read_text())


def test_validate_two_policies_two_routers(tmp_path, fakes, trace_file, monkeypatch, capsys):
    a = cluster_file(tmp_path / "a.json", fakes(2), "lru", max_num_seqs=32)
    b = cluster_file(tmp_path / "b.json", fakes(2), "rlt")
    out = tmp_path / "v"
    code, stdout, err = run_cli(monkeypatch, capsys, "validate", trace_file, "--target", f"{a},{b}",
                                "--router", "round_robin,prefix_hash", "--repeats", "2", "--profile",
                                "cpu-tiny-llama", "--max-num-seqs", "32", "-o", out)
    assert code == 0, err
    assert stdout.strip() == str(out)
    labels = ["lru-round_robin", "lru-prefix_hash", "rlt-round_robin", "rlt-prefix_hash"]
    for label in labels:
        assert _run_json(out / "sim" / label)["target"] == "sim"
        for i in range(2):
            assert _run_json(out / "real" / label / f"rep{i}")["name"] == f"real/{label}/rep{i}"
        assert not (out / "real" / label / "rep2").exists()
    # progress lines, then the table and the verdict on stderr
    assert "validate [1/12] sim lru-round_robin" in err
    assert "validate [12/12] real rlt-prefix_hash rep 2/2" in err
    # repeat-major: every combination's first repeat before any second one
    assert "validate [6/12] real lru-prefix_hash rep 1/2" in err
    assert "simulator fidelity" in err and "Kendall tau-b over hit_rate (4 combinations)" in err
    assert "router round_robin, hit_rate: real" in err and "-> trusted:" in err

    rec = load_record(out / FIDELITY_FILE)
    assert rec.complete and not rec.interrupted and [c.label for c in rec.combinations] == labels
    # the simulator is configured like each cluster: its workers, the servers' blocks minus vLLM's null block
    ta, tb = rec.config.targets
    assert (ta.workers, ta.block_size.value, ta.num_gpu_blocks) == (2, 16, 512)
    # the server's KV size: the simulator sets vLLM's null block aside itself
    assert ta.cache_tokens.value == 512 * 16
    assert "num_gpu_blocks 512 (vLLM's null block included" in ta.cache_tokens.source
    # a flag fills in what a cluster does not say (the fakes serve no /server_info) and agrees with the rest
    assert (ta.max_num_seqs.value, ta.max_num_seqs.source) == (32, "cluster file max_num_seqs")
    assert (tb.max_num_seqs.value, tb.max_num_seqs.source) == (32, "--max-num-seqs")
    assert tb.max_batched_tokens.source.startswith("simulator default")
    assert (ta.eviction, ta.sim_eviction, tb.eviction, tb.sim_eviction) == ("lru", "lru", "rlt", "rlt")
    sim_cfg = _run_json(out / "sim" / "rlt-prefix_hash")
    assert (sim_cfg["workers"], sim_cfg["cache_tokens"], sim_cfg["block_size"], sim_cfg["eviction"],
            sim_cfg["max_num_seqs"], sim_cfg["seed"]) == (["sim-0", "sim-1"], 8192, 16, "rlt", 32, 0)
    assert sim_cfg["backend_config"]["simulator"]["usable_blocks_per_worker"] == 511

    # every number recomputed from the run files
    for c in rec.combinations:
        real = [_run_json(out / p)["summary"] for p in c.real_runs]
        sim = _run_json(out / c.sim_run)["summary"]
        hits = [s["hit_rate"] for s in real]
        mean = sum(hits) / 2
        assert c.metrics["hit_rate"].real.values == hits
        assert c.real_requests_per_worker == [s["requests_per_worker"] for s in real]
        assert c.sim_requests_per_worker == sim["requests_per_worker"]
        assert c.metrics["hit_rate"].difference == pytest.approx(sim["hit_rate"] - mean)
        assert c.metrics["hit_rate"].real.std == pytest.approx(abs(hits[0] - hits[1]) / math.sqrt(2))
        assert c.hit_rate_tolerance == pytest.approx(max(0.02, max(hits) - min(hits)))
        for key, name in (("ttft_p50_ms", "p50_ttft_ms"), ("ttft_p90_ms", "p90_ttft_ms"),
                          ("ttft_p99_ms", "p99_ttft_ms"), ("request_throughput", "request_throughput")):
            real_mean = (real[0][name] + real[1][name]) / 2
            assert c.metrics[key].ratio == pytest.approx(sim[name] / real_mean)
        # the fake caches blocks like vLLM and never evicts, and this trace fits every cache: the
        # simulated hit rate is the real one
        assert c.hit_rate_within is True and c.metrics["hit_rate"].difference == pytest.approx(0.0, abs=1e-12)
    hit_rank = rec.rankings[0]
    assert hit_rank.metric == "hit_rate" and hit_rank.combinations == labels
    assert hit_rank.kendall_tau_b == pytest.approx(stats.kendall_tau_b(hit_rank.real_mean, hit_rank.sim))
    assert {(o.router, o.metric) for o in rec.eviction_orders} == {
        (r, m) for r in ("round_robin", "prefix_hash") for m in ("hit_rate", "mean_ttft_ms")}
    assert rec.verdict.hit_rates_within is True

    rows = list(csv.DictReader(io.StringIO((out / FIDELITY_CSV).read_text())))
    assert [r["combination"] for r in rows] == labels
    first = rec.combinations[0].metrics["hit_rate"]
    assert float(rows[0]["hit_rate_difference"]) == pytest.approx(first.difference)
    assert not list(out.rglob(".*.tmp"))  # atomic writes leave nothing behind


def test_bare_urls_are_the_servers_own_eviction(tmp_path, fakes, trace_file, monkeypatch, capsys):
    servers = fakes(2)
    out = tmp_path / "v"
    urls = ",".join(s.url for s in servers)
    code, _, err = run_cli(monkeypatch, capsys, "validate", trace_file, "--target", urls,
                           "--repeats", "1", "--profile", "cpu-tiny-llama", "--no-progress", "-o", out)
    assert code == 0, err
    rec = load_record(out / FIDELITY_FILE)
    (t,) = rec.config.targets
    assert (t.eviction, t.sim_eviction) == ("vllm", "lru") and "simulated as 'lru'" in t.eviction_note
    assert any("simulated as 'lru'" in n for n in rec.notes)
    (c,) = rec.combinations
    assert c.label == "vllm-round_robin" and c.repeats == 1
    assert _run_json(out / "sim" / "vllm-round_robin")["eviction"] == "lru"
    assert _run_json(out / "real" / "vllm-round_robin" / "rep0")["eviction"] == "vllm"
    # one repeat: no spread, so the floor is the tolerance and the std is 0
    assert c.hit_rate_tolerance == 0.02 and c.metrics["hit_rate"].real.std == 0.0
    # one combination: nothing to rank
    assert all(r.kendall_tau_b is None and r.agrees is None for r in rec.rankings)
    assert rec.eviction_orders == [] and "validate [" not in err


def test_warmup_reaches_the_simulated_and_the_real_runs(tmp_path, fakes, trace_file, monkeypatch, capsys):
    c = cluster_file(tmp_path / "c.json", fakes(1), "lru")
    out = tmp_path / "v"
    code, _, err = run_cli(monkeypatch, capsys, "validate", trace_file, "--target", c, "--repeats", "1",
                           "--profile", "cpu-tiny-llama", "--no-progress", "--warmup", "3", "-o", out)
    assert code == 0, err
    assert load_record(out / FIDELITY_FILE).config.warmup == 3
    for run in (out / "sim" / "lru-round_robin", out / "real" / "lru-round_robin" / "rep0"):
        cfg = _run_json(run)
        assert cfg["warmup"] == 3
        assert (cfg["summary"]["num_requests"], cfg["summary"]["warmup_requests"]) == (7, 3)


def test_tiny_model_clusters_default_to_the_cpu_profile(tmp_path, fakes, trace_file, monkeypatch, capsys):
    model = tmp_path / "tiny"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "kvbench_model.json").write_text(json.dumps({"kind": "tiny-llama", "hidden": 128, "layers": 2,
                                                           "heads": 4, "max_positions": 8192, "seed": 0}))
    c = cluster_file(tmp_path / "c.json", fakes(2, model=str(model)), "lru", device="cpu")
    code, _, err = run_cli(monkeypatch, capsys, "validate", trace_file, "--target", c, "--repeats", "1",
                           "--no-progress", "-o", tmp_path / "v")
    assert code == 0, err
    profile = load_record(tmp_path / "v" / FIDELITY_FILE).config.profile
    assert profile.value == "cpu-tiny-llama" and profile.source.startswith("default")
    assert _run_json(tmp_path / "v" / "sim" / "lru-round_robin")["backend_config"]["profile"]["name"] == \
        "cpu-tiny-llama"
    # a bigger tiny model is not what the profile measured: --profile becomes required
    (model / "kvbench_model.json").write_text(json.dumps({"kind": "tiny-llama", "hidden": 512, "layers": 4,
                                                           "heads": 4}))
    code, _, err = run_cli(monkeypatch, capsys, "validate", trace_file, "--target", c, "--repeats", "1",
                           "--no-progress", "-o", tmp_path / "v2")
    assert code == 2 and "--profile is required" in err and not (tmp_path / "v2").exists()


def test_cluster_file_stands_in_for_servers_without_cache_metrics(tmp_path, fakes, trace_file, monkeypatch,
                                                                  capsys):
    c = cluster_file(tmp_path / "c.json", fakes(2, cache_config=False), "lru", block_size=16,
                     kv_cache_blocks=64, usable_blocks=63)
    code, _, err = run_cli(monkeypatch, capsys, "validate", trace_file, "--target", c, "--profile",
                           "cpu-tiny-llama", "--repeats", "1", "--no-progress", "-o", tmp_path / "v")
    assert code == 0, err
    t = load_record(tmp_path / "v" / FIDELITY_FILE).config.targets[0]
    assert (t.block_size.value, t.block_size.source) == (16, "cluster file block_size")
    assert t.cache_tokens.value == 64 * 16  # the server's KV size, null block included
    assert t.cache_tokens.source == "cluster file kv_cache_blocks x block size"


def _closed_url() -> str:
    return f"http://127.0.0.1:{free_port()}"  # nothing listens there


@pytest.mark.parametrize("case,needle", [
    ("no_trace", "no such trace file"),
    ("repeats", "--repeats 0: must be at least 1"),
    ("router", "--router nope: unknown router"),
    ("no_profile", "--profile is required: the cluster serves fake-model"),
    ("unreachable", "worker unreachable: http://127.0.0.1:"),
    ("missing_file", "neither URLs (http://...) nor an existing cluster.json"),
    ("mixed", "mixes URLs and cluster files"),
    ("same_policy", "both run eviction 'lru'; give one cluster per eviction policy"),
    ("shared_worker", "is a worker of both"),
    ("block_flag", "--block-size 32: "),
    ("seqs_flag", "has max_num_seqs = 64 (cluster file max_num_seqs); drop --max-num-seqs"),
    ("no_cache_config", "report no block size (no vllm:cache_config_info in /metrics); pass --block-size"),
    ("no_cache_size", "report no KV cache size"),
    ("unknown_policy", "runs eviction 'weird', which the simulator does not have"),
    ("foreign_dir", "is not a kvbench validation directory"),
    ("warmup", "--warmup 10: the trace has 10 requests"),
])
def test_errors_are_one_line(tmp_path, fakes, trace_file, monkeypatch, capsys, case, needle):
    servers = fakes(2, cache_config=case not in ("no_cache_config", "no_cache_size"))
    c = cluster_file(tmp_path / "c.json", servers, "lru")
    args = ["validate", trace_file, "--target", c, "--profile", "cpu-tiny-llama", "--repeats", "1",
            "--no-progress", "-o", tmp_path / "v"]
    if case == "no_trace":
        args[1] = tmp_path / "missing.parquet"
    elif case == "repeats":
        args[args.index("--repeats") + 1] = "0"
    elif case == "router":
        args += ["--router", "nope"]
    elif case == "no_profile":
        args.remove("--profile")
        args.remove("cpu-tiny-llama")
    elif case == "unreachable":
        args[3] = f"{servers[0].url},{_closed_url()}"
    elif case == "missing_file":
        args[3] = tmp_path / "none.json"
    elif case == "mixed":
        args[3] = f"{c},{servers[0].url}"
    elif case == "same_policy":
        args[3] = f"{c},{cluster_file(tmp_path / 'd.json', fakes(2), 'lru')}"
    elif case == "shared_worker":
        args[3] = f"{c},{cluster_file(tmp_path / 'd.json', [servers[1]], 'rlt')}"
    elif case == "block_flag":
        args += ["--block-size", "32"]  # the servers say 16
    elif case == "seqs_flag":
        cluster_file(c, servers, "lru", max_num_seqs=64)
        args += ["--max-num-seqs", "32"]
    elif case == "no_cache_size":
        args += ["--block-size", "16"]
    elif case == "unknown_policy":
        cluster_file(c, servers, "weird")
    elif case == "warmup":
        args += ["--warmup", "10"]
    elif case == "foreign_dir":
        (tmp_path / "v").mkdir()
        (tmp_path / "v" / "notes.txt").write_text("mine")
    code, _, err = run_cli(monkeypatch, capsys, *args)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith("kvbench: error: ") and needle in lines[0], err
    if case == "foreign_dir":
        assert [p.name for p in (tmp_path / "v").iterdir()] == ["notes.txt"]
    else:
        assert not (tmp_path / "v").exists()
    if case == "no_cache_size":  # the flag stands in for servers that do not report their cache
        code, _, err = run_cli(monkeypatch, capsys, *args, "--cache-tokens", "4096")
        assert code == 0, err
        t = load_record(tmp_path / "v" / FIDELITY_FILE).config.targets[0]
        assert (t.cache_tokens.value, t.cache_tokens.source, t.block_size.source) == (4096, "--cache-tokens",
                                                                                    "--block-size")


def test_finished_output_needs_overwrite_which_drops_stale_repeats(tmp_path, fakes, trace_file, monkeypatch,
                                                                   capsys):
    c = cluster_file(tmp_path / "c.json", fakes(2), "lru")
    base = ["validate", trace_file, "--target", c, "--profile", "cpu-tiny-llama", "--no-progress", "-o",
            tmp_path / "v"]
    assert run_cli(monkeypatch, capsys, *base, "--repeats", "2")[0] == 0
    code, _, err = run_cli(monkeypatch, capsys, *base, "--repeats", "1")
    assert code == 2 and "holds a validation (fidelity.json); pass --overwrite" in err
    assert run_cli(monkeypatch, capsys, *base, "--repeats", "1", "--overwrite")[0] == 0
    assert not (tmp_path / "v" / "real" / "lru-round_robin" / "rep1").exists()
    assert load_record(tmp_path / "v" / FIDELITY_FILE).combinations[0].repeats == 1


def test_ctrl_c_keeps_finished_runs_and_a_partial_record(tmp_path, fakes, trace_file, monkeypatch, capsys):
    from kvbench.validate import run as validate_run

    real_replay = validate_run.run_replay
    calls: list[str] = []

    def replay_then_interrupt(spec, trace=None):
        calls.append(str(spec.name))
        out = real_replay(spec, trace)
        if spec.name == "real/lru-round_robin/rep1":
            # what run_replay does on Ctrl-C: write the rows so far, mark the run interrupted, raise again
            run = json.loads((out / "run.json").read_text())
            (out / "run.json").write_text(json.dumps({**run, "interrupted": True}))
            raise KeyboardInterrupt
        return out

    monkeypatch.setattr(validate_run, "run_replay", replay_then_interrupt)
    c = cluster_file(tmp_path / "c.json", fakes(2), "lru")
    out = tmp_path / "v"
    code, _, err = run_cli(monkeypatch, capsys, "validate", trace_file, "--target", c, "--profile",
                           "cpu-tiny-llama", "--repeats", "3", "--no-progress", "-o", out)
    assert code == 130
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kvbench: interrupted: 2 of 4 runs finished"), err
    assert calls == ["sim/lru-round_robin", "real/lru-round_robin/rep0", "real/lru-round_robin/rep1"]
    rec = load_record(out / FIDELITY_FILE)
    assert (rec.complete, rec.interrupted) == (False, True)
    (comb,) = rec.combinations
    # the interrupted repeat stays on disk, marked, but no statistic uses it
    assert (out / "real" / "lru-round_robin" / "rep1" / "run.json").exists()
    assert comb.repeats == 1 and comb.real_runs == ["real/lru-round_robin/rep0"]
    assert comb.metrics["hit_rate"].real.n == 1 and comb.hit_rate_within is True
    assert "real/lru-round_robin/rep1: interrupted, left out of the statistics" in rec.notes


def test_ctrl_c_before_any_run_finished_keeps_nothing(tmp_path, fakes, trace_file, monkeypatch, capsys):
    from kvbench.validate import run as validate_run

    def interrupt(spec, trace=None):
        raise KeyboardInterrupt

    monkeypatch.setattr(validate_run, "run_replay", interrupt)
    c = cluster_file(tmp_path / "c.json", fakes(2), "lru")
    code, _, err = run_cli(monkeypatch, capsys, "validate", trace_file, "--target", c, "--profile",
                           "cpu-tiny-llama", "--no-progress", "-o", tmp_path / "v")
    assert code == 130 and "no run had finished; nothing kept" in err
    assert not (tmp_path / "v").exists()


# --- the report's fidelity section ------------------------------------------------------------------------
@pytest.fixture
def validated(tmp_path, fakes, trace_file, monkeypatch, capsys) -> Path:
    a = cluster_file(tmp_path / "a.json", fakes(2), "lru")
    b = cluster_file(tmp_path / "b.json", fakes(2), "rlt")
    out = tmp_path / "v"
    code, _, err = run_cli(monkeypatch, capsys, "validate", trace_file, "--target", f"{a},{b}", "--profile",
                           "cpu-tiny-llama", "--repeats", "1", "--no-progress", "-o", out)
    assert code == 0, err
    return out


def _page(*paths: Path) -> str:
    from kvbench.report.build import build_report
    from kvbench.report.inputs import load_inputs
    from kvbench.report.page import render_html

    return render_html(build_report(load_inputs(list(paths))))


def test_report_shows_the_fidelity_section(validated):
    for inputs in ([validated], [validated / "real", validated / "sim"],
                   [validated / "real" / "lru-round_robin"]):
        page = _page(*inputs)
        assert page.count('<section id="fidelity">') == 1, inputs
        assert '<a href="#fidelity">Simulator fidelity</a>' in page
        assert page.count('<table class="fidelity-table">') == 1
        assert page.count("<td class=\"t\">lru-round_robin</td>") == 1 and "rlt-round_robin" in page
        assert "Kendall tau-b" in page and "Trusted for this traffic" in page
        assert "<td class=\"t\">5/5 · 5/5</td>" in page  # round_robin: 10 requests on 2 workers
    # runs alone (no validation directory around them): no section
    from tests.report.synthetic import write_synthetic_run

    plain = write_synthetic_run(validated.parent / "plain", n=20)
    assert 'id="fidelity"' not in _page(plain)


def test_fidelity_section_escapes_hostile_strings(validated):
    path = validated / FIDELITY_FILE
    data = json.loads(path.read_text())
    data["combinations"][0]["label"] = XSS
    data["combinations"][0]["router"] = IMG
    data["notes"].append(f"note {XSS}")
    data["config"]["trace"] = f"</pre>{XSS}"
    data["config"]["profile"]["source"] = IMG
    data["eviction_orders"][0]["evictions"][0] = XSS
    path.write_text(json.dumps(data))
    page = _page(validated)
    assert XSS not in page and IMG not in page
    assert page.count("<script") == 2 and page.count("</script>") == 2
    section = page[page.index('<section id="fidelity">'):]
    section = section[:section.index("</section>")]
    assert section.count("&lt;script&gt;alert(1)&lt;/script&gt;") >= 4
    assert "&lt;img src=x onerror=alert(2)&gt;" in section and "&lt;/pre&gt;&lt;script&gt;" in section


def test_unreadable_fidelity_record_is_a_skipped_input(validated):
    from kvbench.report.build import build_report
    from kvbench.report.inputs import load_inputs

    data = json.loads((validated / FIDELITY_FILE).read_text())
    data["combinations"][0]["repeats"] = "many"
    (validated / FIDELITY_FILE).write_text(json.dumps(data))
    report = build_report(load_inputs([validated]))
    assert report.fidelity == [] and len(report.runs) == 4
    ((where, why),) = report.skipped
    assert where.endswith(FIDELITY_FILE) and "field combinations.0.repeats" in why
    data["combinations"][0]["repeats"] = 1
    del data["combinations"][0]["metrics"]["ttft_p90_ms"]  # the report reads every metric: refuse a gap
    (validated / FIDELITY_FILE).write_text(json.dumps(data))
    report = build_report(load_inputs([validated]))
    assert report.fidelity == [] and "field combinations.0.metrics" in report.skipped[0][1]
