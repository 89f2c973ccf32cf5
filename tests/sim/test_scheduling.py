"""The simulator's scheduling rules, each pinned by timings derived by hand.

The profile ``HAND`` (tests/sim/sim_traces.py) makes a step cost 10 ms + 1 ms per prompt token computed
+ 2 ms per decoding sequence, so every expected time below is a short sum written next to the assertion.
Each test is built so that breaking the rule it names changes a number it checks.

An idle worker starts a step the moment a request arrives, so requests meant to be planned together arrive
while a 16-token request ``z`` (one step of 10 + 16 = 26 ms) keeps the worker busy.
"""

from __future__ import annotations

import numpy as np
import pytest
from tests.sim.sim_traces import request_trace, write_profile

from kvbench.replay import run_replay
from kvbench.spec import ReplaySpec
from kvbench.results import read_run
from kvbench.trace import ideal_hit_rate, read_trace


def ids(n, start=1000):
    return np.arange(start, start + n)


def run(tmp_path, trace, name="run", **kw):
    kw.setdefault("profile", str(write_profile(tmp_path / "hand.toml")))
    kw.setdefault("workers", 1)
    kw.setdefault("progress", False)
    res = read_run(run_replay(ReplaySpec(trace=trace, output=tmp_path / name, **kw)))
    return res, res.requests.set_index("request_id")


def busy(at=0.0, start=20000):
    """A 16-token, one-output request: a step from ``at`` to ``at`` + 26 ms."""
    return (f"z{start}", at, ids(16, start), 1)


def steps(res):
    return res.config["backend_config"]["simulator"]["steps_per_worker"]


def test_last_prompt_token_is_always_recomputed(tmp_path):
    # the same 64-token prompt twice, then it plus one token: whole 16-token blocks hit, but never the block
    # holding the last prompt token, so the repeat gets 3 of its 4 blocks (48) and the longer one all 4 (64)
    trace = request_trace(tmp_path / "t.parquet", [("a", 0.0, ids(64), 1), ("b", 1.0, ids(64), 1),
                                                    ("c", 2.0, ids(65), 1)])
    res, df = run(tmp_path, trace)
    assert df["cached_tokens"].tolist() == [0, 48, 64]
    assert res.summary["hit_rate"] == pytest.approx(112 / 193, abs=1e-12)
    assert res.summary["hit_rates"]["ideal"] == pytest.approx(112 / 193, abs=1e-12)
    assert ideal_hit_rate(read_trace(trace)) == pytest.approx(112 / 193, abs=1e-12)
    # the repeat computes its last 16 tokens: 10 + 16 ms; the longer one its last token only: 10 + 1 ms
    assert df["ttft_s"].tolist() == pytest.approx([0.074, 0.026, 0.011], abs=1e-12)


def test_repeated_prompt_alone_hits_three_eighths(tmp_path):
    # the example: a repeated 64-token prompt's hit rate is 48 / 128 = 0.375 (0.5 without the rule)
    trace = request_trace(tmp_path / "t.parquet", [("a", 0.0, ids(64), 4), ("b", 1.0, ids(64), 4)])
    res, _ = run(tmp_path, trace, cache_tokens=1024)
    assert res.summary["hit_rate"] == pytest.approx(0.375, abs=1e-12)
    assert res.summary["hit_rates"]["ideal"] == pytest.approx(0.375, abs=1e-12)
    assert res.config["backend_config"]["cache_stats"][0]["hit_tokens"] == 48


@pytest.mark.parametrize("max_num_seqs", [1, 2])
def test_max_num_seqs_caps_the_running_batch(tmp_path, max_num_seqs):
    # two 32-token prompts at t=0, three output tokens each, on one worker; a's prefill (10 + 32 = 42 ms)
    # starts before b is queued
    trace = request_trace(tmp_path / "t.parquet", [("a", 0.0, ids(32), 3), ("b", 0.0, ids(32, 5000), 3)])
    res, df = run(tmp_path, trace, max_num_seqs=max_num_seqs)
    assert df.loc["a", "ttft_s"] == pytest.approx(0.042, abs=1e-12)
    if max_num_seqs == 1:
        # a's two decode steps of 10 + 2 ms; b starts only when a is done, and takes as long
        assert df.loc["a", "e2e_s"] == pytest.approx(0.066, abs=1e-12)
        assert df.loc["b", "ttft_s"] == pytest.approx(0.066 + 0.042, abs=1e-12)
        assert df.loc["b", "e2e_s"] == pytest.approx(0.066 + 0.066, abs=1e-12)
        assert steps(res) == [6]
    else:
        # b's prefill joins a's first decode (10 + 32 + 2 = 44 ms, to 86 ms); both decode (10 + 4 ms, to
        # 100 ms: a is done); b decodes alone (10 + 2 ms, to 112 ms)
        assert df.loc["a", "e2e_s"] == pytest.approx(0.100, abs=1e-12)
        assert df.loc["b", "ttft_s"] == pytest.approx(0.086, abs=1e-12)
        assert df.loc["b", "e2e_s"] == pytest.approx(0.112, abs=1e-12)
        assert steps(res) == [4]


@pytest.mark.parametrize("chunked", [True, False])
def test_prompt_longer_than_the_budget(tmp_path, chunked):
    # 320 prompt tokens, budget 128 tokens per step, 2 output tokens
    trace = request_trace(tmp_path / "t.parquet", [("a", 0.0, ids(320), 2)])
    res, df = run(tmp_path, trace, max_batched_tokens=128, chunked_prefill=chunked)
    if chunked:  # chunks of 128, 128, 64: (10 + 128) * 2 + (10 + 64) = 350 ms
        assert df.loc["a", "ttft_s"] == pytest.approx(0.350, abs=1e-12)
        assert steps(res) == [4]
    else:  # one step with the whole prompt, alone: 10 + 320 = 330 ms
        assert df.loc["a", "ttft_s"] == pytest.approx(0.330, abs=1e-12)
        assert steps(res) == [2]
    assert df.loc["a", "e2e_s"] - df.loc["a", "ttft_s"] == pytest.approx(0.012, abs=1e-12)


@pytest.mark.parametrize("chunked", [True, False])
def test_unchunked_prompt_waits_for_a_step_with_room(tmp_path, chunked):
    # a: 32 tokens, 4 outputs at t=0 (first token at 42 ms, decode steps end at 54, 66, 78 ms);
    # b: 128 tokens at 45 ms, while a decodes; budget 128, so a step with a's decode has room for 127
    trace = request_trace(tmp_path / "t.parquet", [("a", 0.0, ids(32), 4), ("b", 0.045, ids(128, 5000), 1)])
    _, df = run(tmp_path, trace, max_batched_tokens=128, chunked_prefill=chunked)
    if chunked:
        # at 54 ms: a's decode + 127 of b's tokens (10 + 127 + 2 = 139 ms, to 193 ms); then a's last
        # decode + b's last token (10 + 1 + 2 = 13 ms): b's first token at 206 ms
        assert df.loc["b", "ttft_s"] == pytest.approx(0.206 - 0.045, abs=1e-12)
        assert df.loc["a", "e2e_s"] == pytest.approx(0.206, abs=1e-12)
    else:
        # b does not fit beside a's decode: it waits until a is done (78 ms), then runs alone (10 + 128 ms)
        assert df.loc["b", "ttft_s"] == pytest.approx(0.078 + 0.138 - 0.045, abs=1e-12)
        assert df.loc["a", "e2e_s"] == pytest.approx(0.078, abs=1e-12)


@pytest.mark.parametrize("chunked", [True, False])
def test_new_prompts_share_a_step_while_they_fit(tmp_path, chunked):
    # budget 128, planned together at 26 ms: a (96) + b (64) overflow it; later c (64) + d (64) fill it
    trace = request_trace(tmp_path / "t.parquet", [
        busy(0.0), ("a", 0.01, ids(96), 1), ("b", 0.01, ids(64, 5000), 1),
        busy(1.0, 30000), ("c", 1.01, ids(64, 9000), 1), ("d", 1.01, ids(64, 13000), 1)])
    res, df = run(tmp_path, trace, max_batched_tokens=128, chunked_prefill=chunked)
    if chunked:  # a + 32 of b in one step (10 + 128 ms, to 164 ms), b's other 32 next (10 + 32, to 206 ms)
        assert df.loc["a", "ttft_s"] == pytest.approx(0.164 - 0.01, abs=1e-12)
    else:  # a alone (10 + 96 ms, to 132 ms), then b alone (10 + 64 ms, to 206 ms)
        assert df.loc["a", "ttft_s"] == pytest.approx(0.132 - 0.01, abs=1e-12)
    assert df.loc["b", "ttft_s"] == pytest.approx(0.206 - 0.01, abs=1e-12)
    # c and d: one step from 1.026 s (10 + 128 ms)
    assert df.loc["c", "ttft_s"] == df.loc["d", "ttft_s"] == pytest.approx(1.164 - 1.01, abs=1e-12)
    assert steps(res) == [5]


def test_unchunked_fit_counts_the_cached_prefix(tmp_path):
    # b repeats a's 96 tokens: 80 are cached (the last block is recomputed), so only 16 need the budget.
    # c decodes when b arrives, leaving 32 - 1 = 31 tokens of room: b fits beside it only if its cached
    # prefix is counted
    trace = request_trace(tmp_path / "t.parquet", [
        ("a", 0.0, ids(96), 1), ("c", 1.0, ids(16, 5000), 3), ("b", 1.005, ids(96), 1)])
    _, df = run(tmp_path, trace, max_batched_tokens=32, chunked_prefill=False)
    assert df.loc["b", "cached_tokens"] == 80
    # c: prefill 10 + 16 = 26 ms (to 1.026 s); then c's decode + b's 16 tokens: 10 + 16 + 2 = 28 ms
    assert df.loc["c", "ttft_s"] == pytest.approx(0.026, abs=1e-12)
    assert df.loc["b", "ttft_s"] == pytest.approx(1.054 - 1.005, abs=1e-12)


def test_memory_pressure_makes_the_next_request_wait(tmp_path):
    # 8 blocks of 16 tokens; a, b and c each hold ceil((48 + 2 - 1) / 16) = 4 blocks while they run, and
    # are planned together at 26 ms, after z (whose one block stays cached)
    trace = request_trace(tmp_path / "t.parquet", [
        busy(0.0), ("a", 0.01, ids(48), 2), ("b", 0.01, ids(48, 5000), 2), ("c", 0.01, ids(48, 9000), 2)])
    res, df = run(tmp_path, trace, cache_tokens=144)  # 9 blocks, 8 usable beside the null block
    # a and b fill the cache (z's block evicted for b): one prefill step (10 + 96 ms, to 132 ms), one
    # decode step (10 + 4 ms, to 146 ms)
    assert df.loc["a", "ttft_s"] == df.loc["b", "ttft_s"] == pytest.approx(0.132 - 0.01, abs=1e-12)
    assert df.loc["a", "e2e_s"] == df.loc["b", "e2e_s"] == pytest.approx(0.146 - 0.01, abs=1e-12)
    # c waits for them (it does not fail); their 6 prompt blocks stay cached and 2 blocks are free, so 2
    # more are evicted: prefill 10 + 48 ms (to 204 ms), decode 10 + 2 ms (to 216 ms)
    assert (df["status"] == "ok").all()
    assert df.loc["c", "ttft_s"] == pytest.approx(0.204 - 0.01, abs=1e-12)
    assert df.loc["c", "e2e_s"] == pytest.approx(0.216 - 0.01, abs=1e-12)
    stats = res.config["backend_config"]["cache_stats"][0]
    assert (stats["inserted_blocks"], stats["evicted_blocks"]) == (10, 3)


def test_attention_and_kv_read_terms_use_the_context(tmp_path):
    # b repeats a's 64 tokens: 48 cached, its 16 new tokens attend to 48 before them; then one decode step
    # reads a 65-token context (64 prompt + 1 generated)
    prof = write_profile(tmp_path / "attn.toml", prefill_attn_s=1e-6, decode_ctx_s=1e-4)
    trace = request_trace(tmp_path / "t.parquet", [("a", 0.0, ids(64), 2), ("b", 1.0, ids(64), 2)])
    _, df = run(tmp_path, trace, profile=str(prof))
    pairs_b = 16 * (48 + 17 / 2)  # c * (ctx + (c + 1) / 2)
    assert df.loc["b", "ttft_s"] == pytest.approx(0.01 + 0.016 + 1e-6 * pairs_b, abs=1e-12)
    assert df.loc["b", "e2e_s"] - df.loc["b", "ttft_s"] == pytest.approx(0.01 + 0.002 + 1e-4 * 65, abs=1e-12)


def sim_config(res):
    return res.config["backend_config"]["simulator"]


def test_a_continuing_chunk_uses_the_budget_first(tmp_path):
    # a: 320 tokens in chunks of 128; b (32 tokens) arrives during a's first chunk. Steps 1-2 are a's
    # 128-token chunks (budget spent: b waits); step 3 holds a's last 64 and all of b (10 + 96 ms)
    trace = request_trace(tmp_path / "t.parquet", [("a", 0.0, ids(320), 1), ("b", 0.01, ids(32, 5000), 1)])
    res, df = run(tmp_path, trace, max_batched_tokens=128)
    assert df.loc["a", "ttft_s"] == pytest.approx(0.138 * 2 + 0.106, abs=1e-12)
    assert df.loc["b", "ttft_s"] == pytest.approx(0.138 * 2 + 0.106 - 0.01, abs=1e-12)
    assert steps(res) == [3]
    assert sim_config(res)["busy_s_per_worker"] == pytest.approx([0.382], abs=1e-12)
    assert sim_config(res)["simulated_s"] == pytest.approx(0.382, abs=1e-12)


def test_a_waiting_request_is_admitted_only_with_budget_left(tmp_path):
    # a' repeats a's 256 tokens and arrives during a's first chunk; a's two 128-token chunks use the whole
    # budget, so a' is admitted only after a's prompt is cached: it hits 15 of its 16 blocks
    trace = request_trace(tmp_path / "t.parquet", [("a", 0.0, ids(256), 2), ("a2", 0.01, ids(256), 1)])
    _, df = run(tmp_path, trace, max_batched_tokens=128)
    assert df.loc["a2", "cached_tokens"] == 240
    # a: 2 x (10 + 128) = 276 ms; then a's decode + a2's 16 tokens: 10 + 16 + 2 = 28 ms
    assert df.loc["a2", "ttft_s"] == pytest.approx(0.276 + 0.028 - 0.01, abs=1e-12)


def test_one_token_of_budget_is_still_budget(tmp_path):
    # budget 129: a takes 128, leaving 1 token, which b's prefill gets in the same step
    trace = request_trace(tmp_path / "t.parquet", [
        busy(0.0), ("a", 0.01, ids(128), 1), ("b", 0.01, ids(32, 5000), 1)])
    _, df = run(tmp_path, trace, max_batched_tokens=129)
    # from 26 ms: a 128 + b 1 (10 + 129 ms, to 165 ms); b's other 31 (10 + 31 ms, to 206 ms)
    assert df.loc["a", "ttft_s"] == pytest.approx(0.165 - 0.01, abs=1e-12)
    assert df.loc["b", "ttft_s"] == pytest.approx(0.206 - 0.01, abs=1e-12)


def test_attention_of_continuing_chunks_counts_their_context(tmp_path):
    # 320 tokens in chunks of 128, 128, 64: the pairs add up to those of one 320-token chunk
    prof = write_profile(tmp_path / "attn.toml", prefill_attn_s=1e-6)
    trace = request_trace(tmp_path / "t.parquet", [("a", 0.0, ids(320), 1)])
    _, df = run(tmp_path, trace, profile=str(prof), max_batched_tokens=128)
    pairs = 320 * 321 / 2
    assert df.loc["a", "ttft_s"] == pytest.approx(3 * 0.01 + 0.320 + 1e-6 * pairs, abs=1e-12)


def test_a_request_needing_exactly_the_cache_fits(tmp_path):
    # 48 prompt tokens + 1 output token: ceil((48 + 1 - 1) / 16) = 3 blocks, all the cache has beside the
    # null block (--cache-tokens 64 = 4 blocks)
    trace = request_trace(tmp_path / "t.parquet", [("a", 0.0, ids(48), 1)])
    _, df = run(tmp_path, trace, cache_tokens=64)
    assert df.loc["a", "status"] == "ok"
    # 33 prompt tokens and no output: one token is still sampled, so ceil(33 / 16) = 3 blocks, one more
    # than the 2 usable of --cache-tokens 48; b (one block) runs
    trace = request_trace(tmp_path / "u.parquet", [("a", 0.0, ids(33), 0), ("b", 0.5, ids(16, 5000), 1)])
    _, df = run(tmp_path, trace, "u", cache_tokens=48)
    assert df.loc["a", "status"] == "error" and "needs 3 KV blocks" in df.loc["a", "error"]
    assert df.loc["a", "done_s"] == df.loc["a", "arrival_s"] == 0.0
    assert df.loc["b", "status"] == "ok"


def test_a_one_block_prompt_never_hits(tmp_path):
    trace = request_trace(tmp_path / "t.parquet", [("a", 0.0, ids(16), 1), ("b", 1.0, ids(16), 1)])
    _, df = run(tmp_path, trace)
    assert df["cached_tokens"].tolist() == [0, 0]


def test_a_failed_turn_still_releases_the_next_turn(tmp_path):
    # a session's first turn is too large for the cache and fails at once; the second turn runs after it
    import pandas as pd

    from kvbench.hashing import block_hashes
    from kvbench.trace import TraceMeta, write_trace

    rows = []
    for turn, n in ((0, 96), (1, 32)):
        tokens = ids(n).astype(np.int32)
        rows.append({"request_id": f"t{turn}", "arrival_s": 0.0, "session_id": "s", "turn": turn,
                     "think_s": 0.5 * turn, "group_id": None, "input_tokens": n, "output_tokens": 1, "user_tokens": n,
                     "prompt": None, "prompt_token_ids": tokens, "hash_ids": block_hashes(tokens, 16)})
    trace = write_trace(tmp_path / "s.parquet", pd.DataFrame(rows), TraceMeta(generator="test", block_size=16))
    _, df = run(tmp_path, trace, cache_tokens=64)
    assert df.loc["t0", "status"] == "error" and df.loc["t1", "status"] == "ok"
    assert df.loc["t1", "arrival_s"] == pytest.approx(0.5, abs=1e-12)  # error at t=0, then the think time


def test_the_router_learns_the_times_the_rows_report(tmp_path, monkeypatch):
    from kvbench.routing.round_robin import RoundRobinRouter

    seen = {}
    monkeypatch.setattr(RoundRobinRouter, "on_complete",
                        lambda self, req, w, now, result: seen.setdefault(req.request_id, (now, result)))
    trace = request_trace(tmp_path / "t.parquet", [("a", 0.5, ids(32), 3), ("b", 0.6, ids(32, 5000), 2)])
    _, df = run(tmp_path, trace, workers=2)
    for rid in ("a", "b"):
        now, result = seen[rid]
        assert now == pytest.approx(df.loc[rid, "done_s"], abs=1e-12)
        assert result.ttft_s == pytest.approx(df.loc[rid, "ttft_s"], abs=1e-12)
        assert result.e2e_s == pytest.approx(df.loc[rid, "e2e_s"], abs=1e-12)
        assert (result.cached_tokens, result.output_tokens, result.ok) == (0, df.loc[rid, "output_tokens"], True)


def test_ctrl_c_leaves_unreleased_turns_cancelled(tmp_path, monkeypatch):
    import pandas as pd

    from kvbench.hashing import block_hashes
    from kvbench.routing.round_robin import RoundRobinRouter
    from kvbench.trace import TraceMeta, write_trace

    def interrupt(self, *a):
        raise KeyboardInterrupt

    rows = []
    for turn in range(2):
        tokens = ids(32 * (turn + 1)).astype(np.int32)
        rows.append({"request_id": f"t{turn}", "arrival_s": 0.0, "session_id": "s", "turn": turn, "think_s": 1.0,
                     "group_id": None, "input_tokens": len(tokens), "output_tokens": 1, "user_tokens": 32,
                     "prompt": None, "prompt_token_ids": tokens, "hash_ids": block_hashes(tokens, 16)})
    trace = write_trace(tmp_path / "s.parquet", pd.DataFrame(rows), TraceMeta(generator="test", block_size=16))
    monkeypatch.setattr(RoundRobinRouter, "on_complete", interrupt)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, trace)
    res = read_run(tmp_path / "run")
    df = res.requests.set_index("request_id")
    assert df.loc["t0", "status"] == "ok" and df.loc["t1", "status"] == "cancelled"
    assert np.isnan(df.loc["t1", "arrival_s"]) and df.loc["t1", "worker"] == -1


def test_scheduler_defaults_are_the_replay_defaults():
    from kvbench.sim.engine import SchedulerConfig

    spec = ReplaySpec(trace="t.parquet", output="o")
    assert SchedulerConfig() == SchedulerConfig(spec.max_batched_tokens, spec.max_num_seqs, spec.chunked_prefill)
    assert (spec.max_batched_tokens, spec.max_num_seqs, spec.chunked_prefill) == (8192, 256, True)


def test_every_finished_request_is_reported_once(tmp_path):
    from kvbench.cache import PrefixCache, make_policy
    from kvbench.routing import RouterConfig, make_router
    from kvbench.sim.engine import ClusterSimulator, SchedulerConfig, Worker
    from kvbench.sim.latency import load_profile
    from kvbench.plan import make_plan
    from kvbench.resolve import resolve
    from kvbench.sim.run import build_requests

    trace = read_trace(request_trace(tmp_path / "t.parquet", [
        ("a", 0.0, ids(32), 2), ("big", 0.0, ids(96), 1), ("b", 0.1, ids(32, 5000), 1)]))
    spec = ReplaySpec(trace=tmp_path / "t.parquet", output=tmp_path / "o", workers=1, cache_tokens=64)
    reqs, first = build_requests(make_plan(resolve(spec), trace))
    worker = Worker(0, PrefixCache(4, make_policy("lru"), 16), load_profile(str(write_profile(tmp_path / "h.toml"))),
                    SchedulerConfig())
    reported = []
    sim = ClusterSimulator([worker], make_router("round_robin", RouterConfig(workers=1)), reqs,
                           on_done=lambda r: reported.append((r.route.request_id, r.status)))
    sim.run(first)
    assert sorted(reported) == [("a", "ok"), ("b", "ok"), ("big", "error")]
