"""CPU workers of one cluster get their own cores: vLLM's "auto" OpenMP binding puts every worker of a
machine on the same cores, where they stall each other for seconds (the fidelity benchmark's first two-worker
runs showed TTFT p90 of 1.6 s against p50 of 44 ms)."""

from __future__ import annotations

import os
from pathlib import Path

from kvbench.http.cluster import WorkerOptions, cluster_options, server_env, spread_cores


def test_cores_split_evenly_between_workers():
    assert spread_cores(2, [0, 1]) == ["0", "1"]
    assert spread_cores(2, range(8)) == ["0,1,2,3", "4,5,6,7"]
    assert spread_cores(3, [4, 5, 6, 7]) == ["4", "5", "6"]


def test_more_workers_than_cores_share_round_robin():
    assert spread_cores(4, [0, 1]) == ["0", "1", "0", "1"]


def test_one_worker_keeps_vllms_own_binding():
    assert spread_cores(1, [0, 1]) == [None]


def test_the_binding_reaches_the_servers_environment_unless_the_user_set_one():
    opts = WorkerOptions(model="m", port=1, cpu=True, cpu_cores="1")
    assert server_env(opts, base={})["VLLM_CPU_OMP_THREADS_BIND"] == "1"
    assert server_env(opts, base={"VLLM_CPU_OMP_THREADS_BIND": "0-1"})["VLLM_CPU_OMP_THREADS_BIND"] == "0-1"
    assert "VLLM_CPU_OMP_THREADS_BIND" not in server_env(WorkerOptions(model="m", port=1, cpu=True), base={})


def test_cluster_options_give_each_cpu_worker_distinct_cores(tmp_path: Path):
    (tmp_path / "config.json").write_text("{}")
    options, device = cluster_options(str(tmp_path), 2, "lru", 0, 18000, True, None, None, None,
                                      "127.0.0.1", False)
    assert device == "cpu"
    cores = [o.cpu_cores for o in options]
    assert cores == spread_cores(2)
    if len(os.sched_getaffinity(0)) >= 2:
        assert cores[0] != cores[1]
