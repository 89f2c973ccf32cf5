import json
import math
from io import StringIO
from pathlib import Path

import pandas as pd
import pytest

from kvbench.report.build import build_report
from kvbench.report.inputs import load_inputs
from kvbench.report.model import workload_identity
from tests.report.synthetic import write_synthetic_run
from kvbench.report.table import summary_table, to_csv, to_json


def test_summary_values_come_from_run_json(sweep_dir: Path):
    runs = load_inputs([sweep_dir]).runs
    table = summary_table(runs)
    assert len(table) == 9
    for run in runs:
        row = table[table["run"] == run.name].iloc[0]
        s = run.config["summary"]
        assert row["hit_rate"] == pytest.approx(s["hit_rate"])
        assert row["hit_rate_ideal"] == pytest.approx(s["hit_rates"]["ideal"])
        assert row["p99_ttft_ms"] == pytest.approx(s["p99_ttft_ms"])
        assert row["mean_e2el_ms"] == pytest.approx(s["mean_e2el_ms"])
        assert row["request_throughput"] == pytest.approx(s["request_throughput"])
        assert row["tokens_cv"] == pytest.approx(s["tokens_cv"])
        assert row["workers"] == 4 and row["cache_tokens"] == run.config["cache_tokens"]
        assert pd.isna(row["hit_rate_server_counters"])
    failed = table[table["run"] == "lru-round_robin-c65536"].iloc[0]
    assert failed["failed"] == 4 and failed["completed"] == 296


def test_ratios_cover_the_baseline_workload_only(sweep_dir: Path, tmp_path: Path):
    other = write_synthetic_run(tmp_path / "other", name="other", generator="sharegpt", params={"turns": 4}, n=80)
    base_dir = sweep_dir / "lru-round_robin-16384"
    loaded = load_inputs([sweep_dir, other], baseline=base_dir)
    table = summary_table(loaded.runs, loaded.baseline)
    base = table[table["baseline"]].iloc[0]
    assert base["run"] == "lru-round_robin-c16384"
    assert base["vs_baseline_hit_rate"] == pytest.approx(1.0)
    row = table[table["run"] == "rlt-lbgr-c65536"].iloc[0]
    assert row["vs_baseline_mean_ttft"] == pytest.approx(row["mean_ttft_ms"] / base["mean_ttft_ms"])
    assert row["vs_baseline_token_throughput"] == pytest.approx(
        row["total_token_throughput"] / base["total_token_throughput"])
    assert math.isnan(table[table["run"] == "other"].iloc[0]["vs_baseline_hit_rate"])


def test_workloads_group_and_rate_is_not_part_of_the_workload(tmp_path: Path):
    a = {"trace": {"meta": {"generator": "gsp", "params": {"groups": 8, "rate": 4.0}}}}
    b = {"trace": {"meta": {"generator": "gsp", "params": {"groups": 8, "rate": 16.0}}}}
    c = {"trace": {"meta": {"generator": "gsp", "params": {"groups": 16, "rate": 4.0}}}}
    assert workload_identity(a)[0] == workload_identity(b)[0] != workload_identity(c)[0]
    assert workload_identity({"trace": "x/y.parquet"})[1] == "y.parquet"
    nested = [{"trace": {"meta": {"generator": "gsp", "params": {"groups": 8, "rate": r,
                                                                 "resolved": {"arrival": {"rate": r}}}}}}
              for r in (4.0, 16.0)]
    assert workload_identity(nested[0]) == workload_identity(nested[1])
    # `kvbench replay` writes the trace path plus a trace_file record; both spellings give one workload.
    d = {"trace": "t.parquet", "trace_file": {"path": "t.parquet", "meta": a["trace"]["meta"], "sha256": "ab"}}
    assert workload_identity(d) == workload_identity(a)
    assert workload_identity({"trace_file": {"path": "t.parquet", "sha256": "abcdef0123456"}})[1] == \
        "t.parquet (abcdef0123)"
    assert workload_identity({})[1] == "unknown workload"
    r1 = write_synthetic_run(tmp_path / "1", name="one", generator="sharegpt", n=50)
    r2 = write_synthetic_run(tmp_path / "2", name="two", n=50)
    r3 = write_synthetic_run(tmp_path / "3", name="three", generator="sharegpt", n=50)
    report = build_report(load_inputs([r1, r2, r3]))
    assert [r.name for r in report.runs] == ["one", "three", "two"]
    assert [len(s.runs) for s in report.sections] == [2, 1]
    assert any("2 different workloads" in n for n in report.notes)


def test_csv_and_json_hold_the_same_table(sweep_dir: Path):
    runs = load_inputs([sweep_dir]).runs
    table = summary_table(runs)
    from_csv = pd.read_csv(StringIO(to_csv(table)))
    from_json = pd.DataFrame(json.loads(to_json(table))["runs"])
    assert list(from_csv.columns) == list(table.columns) == list(from_json.columns)
    assert from_csv["run"].tolist() == from_json["run"].tolist() == table["run"].tolist()
    assert from_csv["p99_ttft_ms"].tolist() == pytest.approx(from_json["p99_ttft_ms"].tolist())
    assert from_json["cache_tokens"].tolist() == table["cache_tokens"].tolist()
    assert "NaN" not in to_json(table)


def test_seeds_are_replicates_of_one_workload():
    from kvbench.report.model import workload_identity

    def config(seed, groups=8):
        meta = {"generator": "gsp", "seed": seed, "params": {"groups": groups, "seed": seed, "rate": 12}}
        return {"trace_file": {"path": f"t{seed}.parquet", "sha256": f"sha{seed}", "meta": meta}}

    assert workload_identity(config(0))[0] == workload_identity(config(1))[0]
    assert workload_identity(config(0))[0] != workload_identity(config(0, groups=9))[0]
