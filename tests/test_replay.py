"""`kvbench replay` end to end: the CLI, flag errors, sweeps and the files it writes."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parent / "sim"))
from sim_traces import make_trace  # noqa: E402

from kvbench.cli import app  # noqa: E402
from kvbench.replay import ReplaySpec, parse_params, plan_sweep, run_sweep  # noqa: E402
from kvbench.results import read_run  # noqa: E402


@pytest.fixture
def trace(tmp_path):
    return make_trace(tmp_path / "t.parquet", n_groups=3, per_group=4, sessions=2)


def kvbench(*args, cwd):
    return subprocess.run([sys.executable, "-m", "kvbench", *args], cwd=cwd, capture_output=True, text=True)


@pytest.mark.parametrize("args,needle", [
    (["--router", "nope"], "--router nope: unknown router"),
    (["--eviction", "lru,bogus"], "--eviction bogus: unknown eviction policy"),
    (["--workers", "0"], "--workers 0"),
    (["--router", "cache_aware", "--router-param", "cache_threshold=x"], "expects a float"),
    (["--router-param", "nokey"], "expected key=value"),
])
def test_bad_flags_give_one_line_and_exit_2(tmp_path, trace, args, needle):
    r = kvbench("replay", str(trace), "-o", str(tmp_path / "o"), "--no-progress", *args, cwd=tmp_path)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kvbench: error: ") and needle in lines[0]
    assert not (tmp_path / "o").exists()


def test_missing_trace_is_one_line(tmp_path):
    r = kvbench("replay", str(tmp_path / "none.parquet"), "-o", str(tmp_path / "o"), cwd=tmp_path)
    assert r.returncode == 2 and "no such trace file" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_cli_single_run_writes_results(tmp_path, trace):
    out = tmp_path / "run1"
    res = CliRunner().invoke(app, ["replay", str(trace), "--target", "sim", "--workers", "2", "--cache-tokens",
                                   "2000", "--block-size", "32", "--eviction", "rlt", "--router", "lbgr",
                                   "--router-param", "forgetting=0.99", "--seed", "0", "-o", str(out),
                                   "--no-progress", "--name", "demo"])
    assert res.exit_code == 0, res.output
    run = read_run(out)
    cfg = run.config
    assert cfg["name"] == "demo" and cfg["eviction"] == "rlt" and cfg["router"] == "lbgr"
    assert cfg["block_size"] == 32 and cfg["workers"] == ["sim-0", "sim-1"]
    assert cfg["backend_config"]["router_state"]["forgetting"] == 0.99
    assert len(cfg["trace_file"]["sha256"]) == 64 and cfg["trace_file"]["meta"]["generator"] == "test"
    assert cfg["backend_config"]["profile"]["coefficients"]["step_base_s"] > 0
    assert set(cfg["summary"]["hit_rates"]) >= {"requests", "ideal", "cache_counters", "server_counters"}
    assert "wall_time_s" not in cfg["summary"]


def test_output_that_is_not_a_result_dir_is_refused(tmp_path, trace):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    r = kvbench("replay", str(trace), "-o", str(tmp_path / "busy"), "--no-progress", cwd=tmp_path)
    assert r.returncode == 2 and "not a kvbench result directory" in r.stderr
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"


def test_sweep_runs_the_cross_product_in_parallel(tmp_path, trace):
    out = tmp_path / "sweep"
    r = kvbench("replay", str(trace), "--eviction", "lru,rlt", "--router", "round_robin,cache_aware",
                "--cache-tokens", "1500", "--jobs", "2", "-o", str(out), "--no-progress", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    names = sorted(p.name for p in out.iterdir())
    assert names == ["lru-cache_aware", "lru-round_robin", "rlt-cache_aware", "rlt-round_robin"]
    for n in names:
        run = read_run(out / n)
        ev, rt = n.split("-")
        assert run.config["eviction"] == ev and run.config["router"] == rt
        assert run.summary["completed"] == 18  # 12 single-shot + 2 sessions x 3 turns
    # the parallel sweep equals running a combination on its own
    single = read_run(run_sweep_one(tmp_path, trace))
    assert single.summary == read_run(out / "rlt-cache_aware").summary


def run_sweep_one(tmp_path, trace):
    base = ReplaySpec(trace=trace, output=tmp_path / "seq", cache_tokens=1500)
    combos = plan_sweep(base, ["rlt"], ["cache_aware"])
    run_sweep(combos, jobs=1, progress=False)
    return combos[0].spec.output


def test_parse_params():
    assert parse_params(["a=1", "b = x"], "--router-param") == {"a": "1", "b": "x"}
    assert parse_params(["a=1", "b=0.5", "c=true", "d=x"], "--e", typed=True) == {"a": 1, "b": 0.5, "c": True,
                                                                                 "d": "x"}


def test_run_json_is_valid_json_without_nan(tmp_path, trace):
    out = tmp_path / "r"
    CliRunner().invoke(app, ["replay", str(trace), "-o", str(out), "--no-progress", "--max-requests", "5"])
    cfg = json.loads((out / "run.json").read_text())
    assert cfg["summary"]["num_requests"] == 5 and cfg["max_requests"] == 5
    assert "NaN" not in (out / "run.json").read_text()


def test_real_cluster_eviction_comes_from_the_cluster(tmp_path):
    import json

    import pytest

    from kvbench.errors import KvbenchError
    from kvbench.replay import SERVER_EVICTION, resolve_evictions

    cluster = tmp_path / "cluster.json"
    cluster.write_text(json.dumps({"eviction": "rlt", "workers": [{"url": "http://127.0.0.1:9", "pid": 12345}]}))
    assert resolve_evictions(None, "sim") == ["lru"]
    assert resolve_evictions("lru,rlt", "sim") == ["lru", "rlt"]
    assert resolve_evictions(None, str(cluster)) == ["rlt"]
    assert resolve_evictions(None, "http://127.0.0.1:9") == [SERVER_EVICTION]
    with pytest.raises(KvbenchError, match="runs 'rlt'"):
        resolve_evictions("lru", str(cluster))
    with pytest.raises(KvbenchError, match="one policy"):
        resolve_evictions("lru,rlt", "http://127.0.0.1:9")
