"""run.json says what ran on a real target: the servers' block size, their eviction, no unused parameters."""

import pytest
from tests.http.http_helpers import open_loop_trace, spec_for

from kvbench.errors import KvbenchError
from kvbench.replay import run_replay
from kvbench.results import read_run
from kvbench.trace import write_trace


def _trace(tmp_path):
    t = open_loop_trace(4, 0.0)
    write_trace(tmp_path / "t.parquet", t.df, t.meta)


def test_the_servers_block_size_is_the_recorded_one(tmp_path, fake_server):
    _trace(tmp_path)
    srv = fake_server(block_size=32)
    cfg = read_run(run_replay(spec_for(tmp_path, [srv.url], block_size=16))).config
    assert cfg["block_size"] == 32 and cfg["requested_block_size"] == 16
    assert cfg["backend_config"]["block_size"] == 32


def test_bare_urls_record_the_servers_own_eviction(tmp_path, fake_server):
    _trace(tmp_path)
    srv = fake_server()
    assert read_run(run_replay(spec_for(tmp_path, [srv.url]))).config["eviction"] == "vllm"


def test_eviction_parameters_are_refused_on_a_real_target(tmp_path, fake_server):
    _trace(tmp_path)
    srv = fake_server()
    with pytest.raises(KvbenchError, match="--eviction-param"):
        run_replay(spec_for(tmp_path, [srv.url], eviction_params={"colour": "red"}))
    assert not srv.received and not (tmp_path / "out").exists()


def test_the_http_backend_itself_refuses_eviction_parameters(tmp_path, fake_server):
    """The resolver refuses them, so no entry point (run_http too) can run and record parameters that never ran."""
    from kvbench.http.replay import run_http

    srv = fake_server()
    with pytest.raises(KvbenchError, match="--eviction-param"):
        run_http(spec_for(tmp_path, [srv.url], eviction_params={"colour": "red"}), open_loop_trace(2, 0.0))
    assert not srv.received


def test_the_served_model_is_recorded_so_sweeps_group_runs_by_what_ran(tmp_path, fake_server):
    """Two load steps, one naming the served model with --model and one leaving it to the server: the same
    model ran, so run.json says so and the report draws them as one sweep line."""
    from kvbench.report.model import report_run
    from kvbench.report.sweeps import find_sweeps

    _trace(tmp_path)
    srv = fake_server(block_size=32)
    runs = []
    for k, (scale, model) in enumerate([(1.0, None), (0.5, "fake-model")]):
        out = run_replay(spec_for(tmp_path, [srv.url], output=tmp_path / f"r{k}", time_scale=scale, model=model,
                                  block_size=16 if k else 32))
        runs.append(read_run(out))
    assert [r.config["model"] for r in runs] == ["fake-model", "fake-model"]
    assert [r.config["block_size"] for r in runs] == [32, 32]
    assert [r.config["eviction"] for r in runs] == ["vllm", "vllm"]
    (sweep,) = [s for s in find_sweeps([report_run(r) for r in runs]) if s.param.key == "time_scale"]
    assert len(sweep.lines) == 1 and len(sweep.lines[0].points) == 2
