"""The README's real-cluster example runs as written: tiny model, two CPU vLLM workers with the rlt
plugin, a replay with two routers, a report, and the cluster stopped again."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import subprocess

import pytest

from tests.readme_blocks import readme_commands

pytestmark = pytest.mark.vllm


def test_readme_cluster_example_runs(tmp_path):
    pytest.importorskip("vllm")
    commands = readme_commands("vllm")
    assert any(c.startswith("kvbench cluster up") for c in commands)
    down = next(c for c in commands if c.startswith("kvbench cluster down"))
    outputs = {}
    try:
        for cmd in commands:
            res = subprocess.run(cmd, shell=True, cwd=tmp_path, capture_output=True, text=True, timeout=900)
            assert res.returncode == 0, f"README command failed: {cmd}\n{res.stderr[-3000:]}"
            outputs[cmd] = res.stdout
    finally:
        if (tmp_path / "cluster.json").exists():
            subprocess.run(down, shell=True, cwd=tmp_path, capture_output=True, timeout=120)
    for router in ("lbgr", "round_robin"):
        run = json.loads((tmp_path / f"results/real/rlt-{router}/run.json").read_text())
        s = run["summary"]
        assert run["eviction"] == "rlt" and s["failed"] == 0 and s["completed"] == s["num_requests"]
        # the per-request hit rate agrees with the servers' own counters
        assert s["hit_rates"]["requests"] == pytest.approx(s["hit_rates"]["server_counters"], abs=1e-9)
    table = next(v for k, v in outputs.items() if "--format csv" in k)
    assert len(list(csv.DictReader(io.StringIO(table)))) == 2


def test_readme_gateway_example_drives_vllm_bench_serve(tmp_path):
    """A real client (`vllm bench serve`) through `kvbench gateway`: every request succeeds."""
    pytest.importorskip("vllm")
    import os
    import signal

    commands = readme_commands("vllm-gateway")
    assert any(c.startswith("vllm bench serve") for c in commands)
    down = next(c for c in commands if c.startswith("kvbench cluster down"))
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}  # the tokenizer is the local tiny model's
    try:
        for cmd in commands:
            res = subprocess.run(cmd, shell=True, cwd=tmp_path, capture_output=True, text=True, timeout=900,
                                 env=env)
            log = (tmp_path / "gateway.log").read_text() if (tmp_path / "gateway.log").exists() else ""
            assert res.returncode == 0, f"README command failed: {cmd}\n{res.stderr[-3000:]}\n{log[-2000:]}"
    finally:
        pid_file = tmp_path / "gateway.pid"
        if pid_file.exists():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid_file.read_text()), signal.SIGTERM)
        if (tmp_path / "gw-cluster.json").exists():
            subprocess.run(down, shell=True, cwd=tmp_path, capture_output=True, timeout=120)
    result = json.loads((tmp_path / "gateway-bench.json").read_text())
    assert result["num_prompts"] == result["completed"] == 24 and result["failed"] == 0
    assert not any(result.get("errors") or [])
    assert result["model_id"] == "tiny-llama"  # the stable served name, not a path
