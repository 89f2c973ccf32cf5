"""A real vLLM worker killed mid-run: its in-flight requests become errors, the router stops choosing it,
every other request completes and no row is lost."""

from __future__ import annotations

import os
import signal
import threading

import numpy as np
import pandas as pd
import pytest

from kvbench.hashing import block_hashes
from kvbench.http.cluster import stop_pid
from kvbench.http.replay import run_http
from kvbench.replay import ReplaySpec
from kvbench.trace import Trace, TraceMeta

pytestmark = pytest.mark.vllm


def test_worker_killed_mid_run(tmp_path, vllm_worker):
    survivor = vllm_worker(eviction="lru", seed=0)
    victim = vllm_worker(eviction="lru", seed=99)  # a worker no other test asks for
    rng = np.random.default_rng(3)
    rows = []
    for k in range(40):
        ids = rng.integers(0, 16000, 96).tolist()
        rows.append({"request_id": f"r{k}", "arrival_s": k * 0.1, "session_id": None, "turn": 0, "think_s": 0.0,
                     "group_id": None, "input_tokens": 96, "output_tokens": 64, "user_tokens": 96, "prompt": None,
                     "prompt_token_ids": ids, "hash_ids": block_hashes(np.asarray(ids), 16).tolist()})
    trace = Trace(df=pd.DataFrame(rows), meta=TraceMeta(generator="test", block_size=16))
    killer = threading.Timer(1.5, lambda: os.killpg(victim.pid, signal.SIGKILL))
    killer.start()
    try:
        spec = ReplaySpec(trace=tmp_path / "t", output=tmp_path / "o", router="round_robin", progress=False,
                          target=f"{survivor.url},{victim.url}", timeout_s=60, reset_cache=False)
        res = run_http(spec, trace)
    finally:
        killer.join()
        stop_pid(victim.pid)
    df = res.rows
    assert len(df) == 40 and df["request_id"].is_unique
    err = df[df["status"] == "error"]
    assert len(err) >= 1 and (err["worker"] == 1).all(), err[["worker", "error"]]
    assert err["error"].str.contains(victim.url).all()
    ok = df[df["status"] == "ok"]
    assert len(ok) == 40 - len(err)
    after_death = df[df["sent_s"] > err["sent_s"].max()]
    assert len(after_death) > 5 and (after_death["worker"] == 0).all()
    assert victim.url in res.config["dead_workers"]
