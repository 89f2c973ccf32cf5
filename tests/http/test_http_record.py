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
