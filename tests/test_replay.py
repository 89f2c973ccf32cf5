"""`kvbench replay` end to end: the CLI, flag errors, sweeps and the files it writes."""

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.sim.sim_traces import make_trace

from kvbench.cli import app
from kvbench.errors import KvbenchError
from kvbench.params import parse_key_values
from kvbench.replay import plan_sweep, run_sweep
from kvbench.results import read_run
from kvbench.spec import ReplaySpec


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
    (["--router-param", "nokey"], "--router-param 'nokey': expected KEY=VALUE"),
    # a bad policy value fails before the run, naming the parameter (it used to be a traceback mid-simulation)
    (["--eviction", "s3fifo", "--eviction-param", "promote_threshold=2x"],
     "--eviction-param promote_threshold=2x: eviction policy 's3fifo' expects an int for 'promote_threshold'"),
    (["--eviction", "rlt", "--eviction-param", "mark_inserts=maybe"], "expects a bool for 'mark_inserts'"),
    (["--eviction", "lru", "--eviction-param", "colour=red"], "--eviction-param colour: eviction policy 'lru' has no"),
    (["--block-size", "24"], "--block-size 24: must be a multiple of the trace's block size 16"),
    (["--warmup", "-1"], "--warmup -1: must be >= 0"),
    (["--warmup", "18"], "--warmup 18: the trace has 18 requests"),
    (["--max-requests", "5", "--warmup", "5"], "--warmup 5: --max-requests replays 5"),
    # the first 5 replayed requests are s0's three turns and s1's first two: warm-up takes s1 whole
    (["--max-requests", "5", "--warmup", "4"], "--warmup 4: --max-requests replays 5, and the sessions of its "
                                               "first 4 (warm-up takes whole sessions) hold all"),
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
                                   "--router-param", "rls_lambda=0.99", "--seed", "0", "-o", str(out),
                                   "--no-progress", "--name", "demo"])
    assert res.exit_code == 0, res.output
    run = read_run(out)
    cfg = run.config
    assert cfg["name"] == "demo" and cfg["eviction"] == "rlt" and cfg["router"] == "lbgr"
    assert cfg["block_size"] == 32 and cfg["workers"] == ["sim-0", "sim-1"]
    assert cfg["backend_config"]["router_state"]["rls_lambda"] == 0.99
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


def test_parse_key_values_keeps_strings_for_the_consumer_to_type():
    assert parse_key_values(["a=1", "b = x", "c=k=v"], "--router-param") == {"a": "1", "b": "x", "c": "k=v"}
    assert parse_key_values(None, "--router-param") == {}


def test_mark_inserts_false_reaches_the_simulated_policy(tmp_path, trace):
    # bool("False") is True: the flag must be typed by the policy's default, not guessed or JSON-decoded
    out = tmp_path / "r"
    res = CliRunner().invoke(app, ["replay", str(trace), "--eviction", "rlt", "--eviction-param", "mark_inserts=False",
                                   "--cache-tokens", "1500", "-o", str(out), "--no-progress"])
    assert res.exit_code == 0, res.output
    assert read_run(out).config["eviction_params"] == {"mark_inserts": False}
    from kvbench.cache import make_policy

    assert make_policy("rlt", **parse_key_values(["mark_inserts=False"], "--eviction-param")).mark_inserts is False


def test_output_under_a_file_fails_before_the_run(tmp_path, trace, monkeypatch):
    (tmp_path / "afile").write_text("x")
    r = kvbench("replay", str(trace), "-o", str(tmp_path / "afile" / "sub"), "--no-progress", cwd=tmp_path)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("kvbench: error: ")
    assert "afile" in lines[0] and "Traceback" not in r.stderr

    from kvbench import replay

    def never(*_a, **_k):
        raise AssertionError("the backend ran although the output path is unusable")

    monkeypatch.setattr(replay, "run_backend", never)
    with pytest.raises(KvbenchError, match="cannot create the result directory"):
        replay.run_replay(ReplaySpec(trace=trace, output=tmp_path / "afile" / "sub2"))


def test_a_failed_run_leaves_no_empty_output_dir(tmp_path, trace, monkeypatch):
    from kvbench import replay

    def broken(*_a, **_k):
        raise KvbenchError("backend failed")

    monkeypatch.setattr(replay, "run_backend", broken)
    with pytest.raises(KvbenchError, match="backend failed"):
        replay.run_replay(ReplaySpec(trace=trace, output=tmp_path / "new"))
    assert not (tmp_path / "new").exists()


def test_sweep_child_turns_any_exception_into_an_error_line(tmp_path, trace, monkeypatch):
    from kvbench import jobs, replay

    def crash(spec):
        raise RuntimeError("boom")

    monkeypatch.setattr(replay, "run_replay", crash)
    got = jobs.call(jobs.Job("c", tmp_path / "c", replay._sweep_run, (ReplaySpec(trace=trace, output=tmp_path / "c"),)))
    assert got == jobs.Outcome("c", "replay failed (RuntimeError: boom)")
    combos = plan_sweep(ReplaySpec(trace=trace, output=tmp_path / "sw"), ["lru"], ["round_robin", "random"])
    with pytest.raises(KvbenchError, match=r"lru-round_robin: replay failed \(RuntimeError: boom\)"):
        run_sweep(combos, jobs=1, progress=False)
    assert not any((tmp_path / "sw").iterdir())  # no half-made combination directories


def _with_block_size(bs):
    from kvbench.sim.run import run_sim

    def backend(resolved, trace, plan):
        result = run_sim(resolved, trace, plan=plan)
        return replace(result, resolved=replace(result.resolved, block_size=bs))

    return backend


def test_ideal_hit_rate_uses_the_block_size_the_backend_used(tmp_path, trace, monkeypatch):
    from kvbench import replay
    from kvbench.trace import ideal_hit_rate, read_trace

    monkeypatch.setattr(replay, "run_backend", _with_block_size(64))
    cfg = read_run(replay.run_replay(ReplaySpec(trace=trace, output=tmp_path / "a", progress=False))).config
    assert cfg["summary"]["hit_rates"]["ideal"] == pytest.approx(ideal_hit_rate(read_trace(trace), 64))
    assert cfg["ideal_block_size"] == 64 and "ideal_note" not in cfg
    assert ideal_hit_rate(read_trace(trace), 64) != ideal_hit_rate(read_trace(trace), 16)  # the test can tell

    # a server block size that is not a multiple of the trace's: recorded as unknown, the run is kept
    monkeypatch.setattr(replay, "run_backend", _with_block_size(24))
    cfg = read_run(replay.run_replay(ReplaySpec(trace=trace, output=tmp_path / "b", progress=False))).config
    assert cfg["summary"]["hit_rates"]["ideal"] is None
    assert "not a multiple" in cfg["ideal_note"] and "24" in cfg["ideal_note"]


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
    from kvbench.resolve import SERVER_EVICTION, resolve_evictions

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


def test_replay_onto_a_finished_run_needs_overwrite(tmp_path, trace):
    out = tmp_path / "run"
    args = ["replay", str(trace), "--target", "sim", "--workers", "1", "--eviction", "lru", "--router",
            "round_robin", "-o", str(out), "--no-progress"]
    assert CliRunner().invoke(app, args).exit_code == 0
    before = (out / "run.json").read_bytes()
    again = CliRunner().invoke(app, args)
    assert again.exit_code != 0 and "--overwrite" in str(again.exception)
    assert (out / "run.json").read_bytes() == before
    sweep = CliRunner().invoke(app, [*args[:-3], "--router", "round_robin,random", "-o", str(out), "--no-progress"])
    assert sweep.exit_code != 0 and "holds a finished run" in str(sweep.exception)
    assert CliRunner().invoke(app, [*args, "--overwrite"]).exit_code == 0


def test_output_that_is_not_a_regular_file_is_never_replaced(tmp_path, trace):
    from kvbench.fsutil import write_text_atomic

    with pytest.raises(KvbenchError, match="not a regular file"):
        write_text_atomic("/dev/null", "x")
    assert not Path("/dev/null").is_file()
    (tmp_path / "d").mkdir()
    with pytest.raises(KvbenchError, match="not a regular file"):
        write_text_atomic(tmp_path / "d", "x")


def test_warmup_counts_towards_max_requests_and_is_marked(tmp_path, trace):
    # --max-requests 10 replays s0's and s1's turns and four open-loop requests; --warmup 3 is session s0
    out = tmp_path / "w"
    res = CliRunner().invoke(app, ["replay", str(trace), "-o", str(out), "--no-progress", "--max-requests", "10",
                                   "--warmup", "3"])
    assert res.exit_code == 0, res.output
    run = read_run(out)
    df = run.requests
    assert len(df) == 10
    assert sorted(df.loc[df["warmup"], "request_id"]) == ["s0-t0", "s0-t1", "s0-t2"]
    assert (run.summary["num_requests"], run.summary["warmup_requests"]) == (7, 3)
    assert run.config["warmup"] == 3 and run.config["max_requests"] == 10


def test_warmup_mask_takes_whole_units_in_replay_order():
    import pandas as pd

    from kvbench.trace import warmup_mask

    df = pd.DataFrame({"request_id": list("abcdef"), "arrival_s": [0.3, 0.0, 0.1, 0.2, 0.2, 0.5],
                       "turn": [0, 0, 0, 1, 0, 2], "session_id": [None, "s", None, "s", None, "s"]})
    # units in replay order: session s (b at 0.0; d and f too), c (0.1), e (0.2), a (0.3)
    assert warmup_mask(df, 0).tolist() == [False] * 6
    assert warmup_mask(df, 1).tolist() == [False, True, False, True, False, True]
    assert warmup_mask(df, 3).tolist() == [False, True, False, True, False, True]
    assert warmup_mask(df, 4).tolist() == [False, True, True, True, False, True]
    assert warmup_mask(df, 5).tolist() == [False, True, True, True, True, True]


def test_results_without_the_warmup_column_still_load(tmp_path, trace):
    import pyarrow.parquet as pq

    from kvbench.report.model import report_run
    from kvbench.results import compute_summary

    out = tmp_path / "old"
    assert CliRunner().invoke(app, ["replay", str(trace), "-o", str(out), "--no-progress"]).exit_code == 0
    table = pq.read_table(out / "requests.parquet")
    pq.write_table(table.drop(["warmup"]), out / "requests.parquet")  # as written before --warmup existed
    run = read_run(out)
    assert not run.requests["warmup"].any()
    old = run.requests.drop(columns=["warmup"])
    summary = compute_summary(old, 4)
    assert (summary["num_requests"], summary["warmup_requests"]) == (18, 0)
    assert len(report_run(run).requests) == 18
