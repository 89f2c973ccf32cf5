"""``--warmup`` on the simulator: a barrier after the warm-up, a warm cache, and no warm-up in any metric.

Timings use the profile ``HAND`` (tests/sim/sim_traces.py): a step costs 10 ms + 1 ms per prompt token
computed + 2 ms per decoding sequence, so every expected time is a short sum written next to its assertion.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from tests.sim.sim_traces import request_trace
from tests.sim.test_scheduling import ids, run  # one worker, the HAND profile, rows by request id

from kvbench.hashing import block_hashes
from kvbench.trace import TraceMeta, write_trace


def three(tmp_path):
    # a: 64 tokens at 0 (the warm-up); b: a's prompt plus one token at 10 ms, while a is still computing;
    # c: 32 unrelated tokens a second after b. One output token each.
    return request_trace(tmp_path / "t.parquet", [("a", 0.0, ids(64), 1), ("b", 0.01, ids(65), 1),
                                                  ("c", 1.01, ids(32, 5000), 1)])


@pytest.mark.parametrize("eviction", ["lru", "belady"])
def test_barrier_warm_cache_and_summary(tmp_path, eviction):
    res, df = run(tmp_path, three(tmp_path), warmup=1, eviction=eviction, cache_tokens=1024)
    assert df["warmup"].tolist() == [True, False, False]
    # a's prefill is one step of 10 + 64 = 74 ms: the barrier. b (trace time 10 ms) waits for it, and c keeps
    # its second after b.
    assert df.loc["a", "done_s"] == pytest.approx(0.074, abs=1e-12)
    assert df["arrival_s"].tolist() == pytest.approx([0.0, 0.074, 1.074], abs=1e-12)
    sim = res.config["backend_config"]["simulator"]["warmup"]
    assert sim["requests"] == 1
    assert sim["barrier_s"] == pytest.approx(0.074, abs=1e-12)
    assert sim["shift_s"] == pytest.approx(0.064, abs=1e-12)
    # the cache was not reset at the barrier: b hits all four of a's blocks and computes one token (10 + 1 ms)
    assert df["cached_tokens"].tolist() == [0, 64, 0]
    assert df["ttft_s"].tolist() == pytest.approx([0.074, 0.011, 0.042], abs=1e-12)
    s = res.summary
    assert (s["num_requests"], s["warmup_requests"], s["completed"]) == (2, 1, 2)
    assert s["total_input_tokens"] == 65 + 32
    assert s["mean_ttft_ms"] == pytest.approx((11 + 42) / 2, abs=1e-9)
    # the measured window runs from b's arrival (74 ms) to c's end (1.074 + 0.042 s)
    assert s["duration"] == pytest.approx(1.042, abs=1e-12)
    assert s["request_throughput"] == pytest.approx(2 / 1.042, abs=1e-9)
    # every hit rate covers b and c only: 64 of their 97 prompt tokens
    for source in ("requests", "cache_counters", "ideal"):
        assert s["hit_rates"][source] == pytest.approx(64 / 97, abs=1e-12), source
    assert s["requests_per_worker"] == [2]
    assert res.config["warmup"] == 1


def test_barrier_brings_a_late_measured_part_forward(tmp_path):
    # the warm-up ends at 74 ms; b's trace time is 5 s, so the measured part moves 4.926 s earlier
    trace = request_trace(tmp_path / "t.parquet", [("a", 0.0, ids(64), 1), ("b", 5.0, ids(65), 1),
                                                   ("c", 6.0, ids(32, 5000), 1)])
    _, df = run(tmp_path, trace, warmup=1)
    assert df["arrival_s"].tolist() == pytest.approx([0.0, 0.074, 1.074], abs=1e-12)


def test_no_warmup_keeps_every_row_measured(tmp_path):
    res, df = run(tmp_path, three(tmp_path))
    assert not df["warmup"].any()
    assert df["arrival_s"].tolist() == pytest.approx([0.0, 0.01, 1.01], abs=1e-12)
    assert (res.summary["num_requests"], res.summary["warmup_requests"]) == (3, 0)


def session_trace(tmp_path):
    """Session s (turns at 0 and after it) and open-loop requests q0 at 0.5 s and q1 at 0.6 s."""
    rows = []
    first = ids(32)
    for rid, arrival, sid, turn, toks in [("s-t0", 0.0, "s", 0, first), ("s-t1", 0.001, "s", 1, ids(48)),
                                          ("q0", 0.5, None, 0, ids(32, 7000)), ("q1", 0.6, None, 0, ids(48))]:
        rows.append(dict(request_id=rid, arrival_s=arrival, session_id=sid, turn=turn, think_s=0.0,
                         group_id=None, input_tokens=len(toks), output_tokens=1, user_tokens=16, prompt=None,
                         prompt_token_ids=toks.astype(np.int32), hash_ids=block_hashes(toks, 16)))
    meta = TraceMeta(generator="test", block_size=16, seed=0, synthetic=True, source="unit test")
    return write_trace(tmp_path / "s.parquet", pd.DataFrame(rows), meta)


def test_warmup_takes_whole_sessions(tmp_path):
    # --warmup 1 names the session's first turn, so its second turn is warm-up too: a session never
    # straddles the barrier. s-t0 takes 10 + 32 = 42 ms; s-t1, released then, hits s-t0's two blocks (its
    # own last block holds its last token, recomputed) and computes 16 tokens: 10 + 16 = 26 ms, done at 68 ms.
    res, df = run(tmp_path, session_trace(tmp_path), warmup=1)
    assert df["warmup"].to_dict() == {"s-t0": True, "s-t1": True, "q0": False, "q1": False}
    assert df.loc["s-t1", "done_s"] == pytest.approx(0.068, abs=1e-12)
    # q0 at the barrier, q1 0.1 s later; q1 (ids 1000..1047) hits the session's 32 cached tokens
    assert df.loc[["q0", "q1"], "arrival_s"].tolist() == pytest.approx([0.068, 0.168], abs=1e-12)
    assert df.loc[["q0", "q1"], "cached_tokens"].tolist() == [0, 32]
    assert (res.summary["num_requests"], res.summary["warmup_requests"]) == (2, 2)
    assert res.summary["hit_rate"] == pytest.approx(32 / 80, abs=1e-12)
    assert res.summary["hit_rates"]["ideal"] == pytest.approx(32 / 80, abs=1e-12)
