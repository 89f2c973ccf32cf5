"""Replays against two real vLLM workers (CPU build, tiny model): routers x eviction policies, and the run's
hit rate from per-request cached_tokens equal to the /metrics counter delta."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from kvbench.hashing import block_hashes
from kvbench.http.replay import run_http
from kvbench.spec import ReplaySpec
from kvbench.results import compute_summary, requests_table
from kvbench.trace import Trace, TraceMeta

pytestmark = pytest.mark.vllm


def shared_prefix_trace(groups: int = 3, per_group: int = 5, prefix: int = 160, suffix: int = 40,
                        gap_s: float = 0.15, seed: int = 0) -> Trace:
    """Groups of prompts sharing a prefix, interleaved, so routing and eviction both change hits."""
    rng = np.random.default_rng(seed)
    heads = [rng.integers(0, 16000, prefix).tolist() for _ in range(groups)]
    rows = []
    for k in range(groups * per_group):
        g = k % groups
        ids = heads[g] + rng.integers(0, 16000, suffix).tolist()
        rows.append({"request_id": f"r{k}", "arrival_s": k * gap_s, "session_id": None, "turn": 0, "think_s": 0.0,
                     "group_id": f"g{g}", "input_tokens": len(ids), "output_tokens": 4, "user_tokens": len(ids),
                     "prompt": None, "prompt_token_ids": ids, "hash_ids": block_hashes(np.asarray(ids), 16).tolist()})
    return Trace(df=pd.DataFrame(rows), meta=TraceMeta(generator="test", block_size=16))


@pytest.mark.parametrize("eviction", ["lru", "rlt"])
def test_two_workers_routers_and_policies(tmp_path, vllm_worker, eviction):
    workers = [vllm_worker(eviction=eviction, kv_cache_tokens=1024, seed=s) for s in (0, 1)]
    trace = shared_prefix_trace()
    by_router = {}
    for router in ("round_robin", "prefix_hash"):
        spec = ReplaySpec(trace=tmp_path / "t.parquet", output=tmp_path / router, router=router, seed=0,
                          target=",".join(w.url for w in workers), progress=False, timeout_s=120)
        res = run_http(spec, trace)
        df = res.rows
        requests_table(df)
        assert (df["status"] == "ok").all(), df["error"].dropna().tolist()
        assert df["cached_tokens"].notna().all() and (df["output_tokens"] == 4).all()
        assert (df["input_tokens"] == 200).all()  # token-id prompts: exact lengths
        assert res.config["prompt_format"] == ["token_ids", "token_ids"]
        assert [h["verified"] for h in res.config["cache_hygiene"]] == [True, True]
        assert res.config["block_size"] == 32
        summary = compute_summary(df, 2, res.hit_rates)
        # the run's hit rate from per-request cached tokens equals the /metrics counter delta
        assert summary["hit_rates"]["requests"] == pytest.approx(res.hit_rates["server_counters"], abs=1e-12)
        assert int(df["cached_tokens"].sum()) == int(res.config["server_counters"]["hits"])
        assert int(df["input_tokens"].sum()) == int(res.config["server_counters"]["queries"])
        by_router[router] = (df, summary)
    rr, ph = by_router["round_robin"][0], by_router["prefix_hash"][0]
    assert sorted(rr.groupby("worker").size().tolist()) == [7, 8]
    # prefix affinity keeps each group on one worker, so every repeat of a group hits its prefix
    assert (ph.groupby("group_id")["worker"].nunique() == 1).all()
    assert by_router["prefix_hash"][1]["hit_rate"] >= by_router["round_robin"][1]["hit_rate"]
