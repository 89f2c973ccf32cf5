"""The simulator's memory model against vLLM v1's (0.32: scheduler.py, kv_cache_manager.py, block_pool.py).

Each test pins one rule by a scenario whose numbers are derived by hand next to the assertions, with the
``HAND`` profile (tests/sim/sim_traces.py: a step costs 10 ms + 1 ms per prompt token computed + 2 ms per
decoding sequence). The rules:

- ``--cache-tokens`` is the server's KV capacity, ``num_gpu_blocks * block_size``; vLLM gives one of those
  blocks to its null block, so a worker uses ``num_gpu_blocks - 1``.
- Every full block of a request is cached as soon as the step that computes its last token is scheduled:
  prompt blocks chunk by chunk, output blocks as decoding fills them. Cached blocks stay cached (evictable)
  when the request ends or is preempted.
- Blocks are allocated step by step for the tokens the step computes. A waiting request is admitted when
  its whole known sequence fits (vLLM's ``scheduler_reserve_full_isl``, default on); a running request
  that cannot get a block preempts the last admitted running request (possibly itself), whose blocks are
  freed tail first and which goes back to the front of the waiting queue, to recompute its prompt and
  output so far (hitting whatever of its own blocks is still cached).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from kvbench.cache import PrefixCache, make_policy
from kvbench.hashing import block_hashes
from kvbench.replay import run_replay
from kvbench.spec import ReplaySpec
from kvbench.results import read_run
from kvbench.routing import RouterConfig, make_router
from kvbench.sim.engine import ClusterSimulator, SchedulerConfig, Worker
from kvbench.sim.latency import load_profile
from kvbench.plan import make_plan
from kvbench.resolve import resolve
from kvbench.sim.run import build_requests, run_sim
from kvbench.trace import TraceMeta, read_trace, write_trace
from tests.sim.sim_traces import make_trace, write_profile


def ids(n, start=1000):
    return np.arange(start, start + n)


def trace(path, rows, block_size=16):
    """A trace from (request_id, arrival_s, token ids, output_tokens[, session_id, turn, think_s]) rows."""
    out = []
    for row in rows:
        rid, arrival, tokens, output, session, turn, think = (*row, None, 0, 0.0)[:7]
        tokens = np.asarray(tokens, dtype=np.int32)
        out.append({"request_id": rid, "arrival_s": float(arrival), "session_id": session, "turn": turn,
                    "think_s": think, "group_id": session, "input_tokens": len(tokens), "output_tokens": output,
                    "user_tokens": len(tokens), "prompt": None, "prompt_token_ids": tokens,
                    "hash_ids": block_hashes(tokens, block_size)})
    meta = TraceMeta(generator="test", block_size=block_size, seed=0, synthetic=True, source="unit test")
    return write_trace(path, pd.DataFrame(out), meta)


def replay(tmp_path, path, name="run", **kw):
    kw.setdefault("profile", str(write_profile(tmp_path / "hand.toml")))
    kw.setdefault("workers", 1)
    kw.setdefault("eviction", "lru")
    kw.setdefault("progress", False)
    res = read_run(run_replay(ReplaySpec(trace=path, output=tmp_path / name, **kw)))
    return res, res.requests.set_index("request_id")


def stats(res):
    return res.config["backend_config"]["cache_stats"][0]


def engine(tmp_path, path, cache_tokens, block_size, history=None):
    """One worker driven directly (as kvbench.sim.run drives it), for what result files do not show."""
    spec = ReplaySpec(trace=path, output=tmp_path / "engine", block_size=block_size, cache_tokens=cache_tokens,
                      workers=1, progress=False)
    reqs, first = build_requests(make_plan(resolve(spec), read_trace(path)))
    if history is not None:
        history(reqs)
    # each request's block keys as the run starts (the engine drops a finished request's list to save memory)
    keys = {r.route.request_id: list(r.block_keys()) for r in reqs}
    capacity = None if cache_tokens is None else cache_tokens // block_size
    cache = PrefixCache(capacity, make_policy("lru"), block_size)
    profile = load_profile(str(write_profile(tmp_path / "hand.toml")))
    worker = Worker(0, cache, profile, SchedulerConfig())
    router = make_router("round_robin", RouterConfig(workers=1, block_size=block_size, seed=0))
    ClusterSimulator([worker], router, reqs).run(first)
    worker.keys_at_start = keys
    return {r.route.request_id: r for r in reqs}, worker


# --- 4. the null block --------------------------------------------------------------------------------------
def test_cache_tokens_count_vllms_null_block(tmp_path):
    # --cache-tokens 64 at block 16: vLLM's num_gpu_blocks = 4, of which 3 hold KV.
    # a (3 blocks) is cached, b (2 blocks) must evict 2 of them (a's tail first), so the repeat of a hits
    # only its first block. With 4 usable blocks b would evict one, and the repeat would hit 2 blocks.
    path = trace(tmp_path / "t.parquet", [("a", 0.0, ids(48), 1), ("b", 1.0, ids(32, 5000), 1),
                                          ("a2", 2.0, ids(48), 1)])
    res, df = replay(tmp_path, path, cache_tokens=64)
    assert df.loc["a2", "cached_tokens"] == 16
    assert (stats(res)["inserted_blocks"], stats(res)["evicted_blocks"]) == (3 + 2 + 2, 2 + 2)
    # a request of 64 tokens needs all 4 of vLLM's blocks: it cannot run on such a server
    big = trace(tmp_path / "big.parquet", [("big", 0.0, ids(64), 1), ("ok", 1.0, ids(48), 1)])
    rows = run_sim(ReplaySpec(trace=big, output=tmp_path / "e", cache_tokens=64, block_size=16, eviction="lru",
                               progress=False),
                   read_trace(big)).rows.set_index("request_id")
    assert rows.loc["big", "status"] == "error" and "holds 3 blocks (48 tokens" in rows.loc["big", "error"]
    assert rows.loc["ok", "status"] == "ok"


# --- 2. prompt blocks are hittable chunk by chunk -------------------------------------------------------------
def test_prompt_blocks_are_hittable_as_each_chunk_is_scheduled(tmp_path):
    # a: 320 tokens in chunks of 128 (budget 128): steps 0-138 ms and 138-276 ms, then its last 64 tokens.
    # b: a's first 300 tokens + 20 of its own, arriving at 5 ms; it is admitted in the third step, beside
    # a's last chunk. vLLM caches a chunk's full blocks when the chunk is scheduled, so b (scheduled after
    # a in that step) already hits a's first 18 blocks (288 tokens; block 18 holds b's own tokens), those
    # of the chunk computed in the same step included. Its 32 remaining tokens join a's 64: one step of
    # 10 + 96 ms, to 382 ms.
    a = ids(320)
    b = np.concatenate([a[:300], ids(20, 9000)])
    path = trace(tmp_path / "t.parquet", [("a", 0.0, a, 1), ("b", 0.005, b, 1)])
    _, df = replay(tmp_path, path, max_batched_tokens=128)
    assert df.loc["b", "cached_tokens"] == 288
    assert df.loc["b", "ttft_s"] == pytest.approx(0.382 - 0.005, abs=1e-12)
    assert df.loc["a", "ttft_s"] == pytest.approx(0.382, abs=1e-12)


# --- 1. output blocks are cached --------------------------------------------------------------------------
def test_output_blocks_are_cached_and_evictable_when_the_request_ends(tmp_path):
    # 40 prompt + 60 output tokens: KV for 99 tokens (the last sampled token is never fed back), whose 6
    # full blocks get cached: 2 of the prompt, 4 holding output (the first mixes prompt and output)
    path = trace(tmp_path / "t.parquet", [("a", 0.0, ids(40), 60)])
    res, _ = replay(tmp_path, path)
    assert stats(res)["inserted_blocks"] == 6
    reqs, worker = engine(tmp_path, path, cache_tokens=None, block_size=16)
    cache = worker.cache
    assert cache.cached_blocks == cache.evictable_blocks == 6 and cache.used_blocks == 6
    keys = worker.keys_at_start["a"]
    assert keys[:2] == reqs["a"].hashes.tolist() and len(keys) == 6 and all(k in cache for k in keys)


def test_output_blocks_compete_for_eviction(tmp_path):
    # --cache-tokens 192 at block 16: 11 usable blocks. One request at a time:
    #   x: 65 tokens, 1 output         -> caches x0..x3 (4 blocks; 1 partial block freed)
    #   y: 32 tokens, 64 outputs       -> KV for 95 tokens: caches y0, y1 and 3 output blocks (5), frees 1
    #   z: 96 tokens, 1 output         -> needs 6 blocks, 2 are free: evicts the 4 least recently freed,
    #                                     x3, x2, x1, x0 (lru; each request's tail first)
    #   x again                        -> no hit; its 5 blocks evict y's 5.
    # Were y's output blocks not cached, 5 blocks would be free, z would evict only x3, and x would hit 48.
    path = trace(tmp_path / "t.parquet", [("x", 0.0, ids(65), 1), ("y", 1.0, ids(32, 5000), 64),
                                          ("z", 3.0, ids(96, 9000), 1), ("x2", 4.0, ids(65), 1)])
    res, df = replay(tmp_path, path, cache_tokens=192)
    assert df["cached_tokens"].tolist() == [0, 0, 0, 0]
    assert (stats(res)["inserted_blocks"], stats(res)["evicted_blocks"]) == (4 + 5 + 6 + 4, 4 + 5)


def session_trace(path):
    # turn 0: 40 tokens, 40 outputs (KV for 79 tokens: 4 full blocks, 2 of them output);
    # turn 1: turn 0's prompt + a 40-token answer + 20 new tokens = 100 tokens (6 full blocks)
    t0 = ids(40)
    t1 = np.concatenate([t0, ids(40, 7000), ids(20, 9000)])
    return trace(path, [("t0", 0.0, t0, 40, "s", 0, 0.0), ("t1", 0.0, t1, 1, "s", 1, 0.5)])


def test_answer_blocks_are_hit_by_the_next_turn_only_with_generated_history(tmp_path):
    from kvbench.sim.engine import use_generated_history

    path = session_trace(tmp_path / "s.parquet")
    # recorded history (what kvbench replay sends by default): the next prompt holds the trace's recorded
    # answer, which the server did not generate, so only turn 0's 2 full prompt blocks hit
    reqs, _ = engine(tmp_path, path, cache_tokens=None, block_size=16)
    assert reqs["t1"].cached == 32
    # generated history: turn 0's output blocks hold the answer the next prompt repeats, so they hit too
    reqs, worker = engine(tmp_path, path, cache_tokens=None, block_size=16, history=use_generated_history)
    assert worker.keys_at_start["t0"] == reqs["t1"].hashes[:4].tolist()
    assert reqs["t1"].cached == 64
    # a next turn that does not extend this turn's prompt and answer keeps per-request keys
    other = trace(tmp_path / "o.parquet", [("t0", 0.0, ids(40), 40, "s", 0, 0.0),
                                           ("t1", 0.0, ids(100, 3000), 1, "s", 1, 0.5)])
    reqs, worker = engine(tmp_path, other, cache_tokens=None, block_size=16, history=use_generated_history)
    keys = worker.keys_at_start["t0"]
    assert keys[:2] == reqs["t0"].hashes.tolist() and keys[2] != reqs["t1"].hashes[2]
    assert reqs["t1"].cached == 0


def test_replay_with_generated_history_lets_each_turn_hit_the_previous_answer(tmp_path):
    # One 3-turn conversation, 100 new tokens a turn, 40-token answers, block 16, unbounded cache:
    # turn 0: 100 tokens (6 full blocks) + 40 generated = KV for 139 tokens, 8 full blocks (2 hold output);
    # turn 1: turn 0 + answer + 100 = 240 tokens (15 blocks), KV for 279 tokens = 17 full blocks;
    # turn 2: 380 tokens. Recorded: a turn hits only the previous prompt's full blocks (6, then 15);
    # generated: the previous answer's blocks too (8, then 17).
    path = make_trace(tmp_path / "conv.parquet", n_groups=0, sessions=1, turns=3, output=40)
    res, df = replay(tmp_path, path, name="recorded")
    turns = ["s0-t0", "s0-t1", "s0-t2"]
    assert df.loc[turns, "cached_tokens"].tolist() == [0, 6 * 16, 15 * 16]
    sim = res.config["backend_config"]["simulator"]
    assert (sim["history"], sim["history_linked_turns"]) == ("recorded", None)
    res, df = replay(tmp_path, path, name="generated", history="generated")
    assert df.loc[turns, "cached_tokens"].tolist() == [0, 8 * 16, 17 * 16]
    sim = res.config["backend_config"]["simulator"]
    assert (sim["history"], sim["history_linked_turns"]) == ("generated", 2)
    assert stats(res)["hit_tokens"] == (8 + 17) * 16


# --- 3. block-by-block allocation and preemption ------------------------------------------------------------
def test_blocks_are_allocated_per_step_and_the_last_admitted_request_is_preempted(tmp_path):
    # Block 4, --cache-tokens 24: 5 usable blocks. a and b: 4-token prompts, 13 outputs (KV for 16 tokens:
    # 4 blocks each, 8 together); c: a 4-token prompt, 1 output, arriving at 100 ms.
    #   0 ms    a's prefill (10 + 4 ms). a's 1st token at 14 ms.
    #   14 ms   a decodes (position 4: its 2nd block); b is admitted because its prompt fits (1 block):
    #           10 + 4 + 2 ms. b's 1st token at 30 ms.
    #   30..86  both decode, 14 ms a step; a takes its 3rd block at position 8 (72 ms): none left free.
    #   86 ms   a (position 9) runs; b (position 8) needs a 3rd block: b, the last admitted, is preempted.
    #           Its 2 cached blocks (b0 prompt, b1 output) become evictable, tail first; b holds 5 tokens of
    #           output. a decodes alone, 12 ms a step.
    #   98..158 b, at the head of the queue, needs 3 blocks for its 9 known tokens (2 hits + 1), and only
    #           2 are evictable: it waits, and so does c behind it (FCFS), though c's one block would fit.
    #           At 122 ms a's 4th block evicts b1.
    #   170 ms  a is done (13 tokens). b recomputes: hits b0 (4 tokens), computes 5 (its prompt's rest and
    #           output so far); c is admitted after it: 10 + 5 + 4 = 19 ms. b's 6th token and c's only
    #           token at 189 ms.
    #   189..273 b decodes alone, 12 ms a step: its 13th token at 273 ms.
    path = trace(tmp_path / "t.parquet", [("a", 0.0, ids(4), 13), ("b", 0.005, ids(4, 5000), 13),
                                          ("c", 0.100, ids(4, 9000), 1)], block_size=4)
    res, df = replay(tmp_path, path, cache_tokens=24, block_size=4)
    assert (df["status"] == "ok").all()
    assert df.loc["a", "ttft_s"] == pytest.approx(0.014, abs=1e-12)
    assert df.loc["a", "e2e_s"] == pytest.approx(0.170, abs=1e-12)
    assert df.loc["b", "ttft_s"] == pytest.approx(0.030 - 0.005, abs=1e-12)
    b_tokens = [0.030, 0.044, 0.058, 0.072, 0.086] + [0.189 + 0.012 * k for k in range(8)]
    assert np.allclose(np.diff(b_tokens), df.loc["b", "itl_s"], rtol=0, atol=1e-12)
    assert df.loc["b", "e2e_s"] == pytest.approx(0.273 - 0.005, abs=1e-12)
    assert df.loc["c", "ttft_s"] == pytest.approx(0.189 - 0.100, abs=1e-12)
    # cached_tokens is the first admission's hit, as vLLM reports it; the counters count first admissions
    assert df["cached_tokens"].tolist() == [0, 0, 0]
    s = stats(res)
    assert (s["queries_tokens"], s["hit_tokens"]) == (12, 0)
    # inserted: a0-a3; b0, b1, b1 again after the preemption, b2, b3; c0. evicted: b1 (122 ms), a3 and a2
    # (b's recompute), a1 (c), a0 (b's 4th block at 237 ms)
    assert (s["inserted_blocks"], s["evicted_blocks"]) == (10, 5)
    reqs, worker = engine(tmp_path, path, cache_tokens=24, block_size=4)
    assert worker.preemptions == 1 and [reqs[k].preemptions for k in "abc"] == [0, 1, 0]
    assert reqs["b"].adm.hit_tokens == 4 and reqs["b"].cached == 0  # the recompute hit its own prompt block
    assert worker.cache.used_blocks == worker.cache.evictable_blocks == 5


def test_a_request_alone_never_preempts_itself(tmp_path):
    # one request whose KV (prompt 30 + 99 outputs - 1 = 128 tokens) fills all 8 usable blocks of
    # --cache-tokens 144: it grows block by block to the whole cache and finishes in 1 + 98 steps
    path = trace(tmp_path / "t.parquet", [("a", 0.0, ids(30), 99)])
    res, df = replay(tmp_path, path, cache_tokens=144)
    assert df.loc["a", "status"] == "ok"
    assert df.loc["a", "e2e_s"] == pytest.approx(0.040 + 98 * 0.012, abs=1e-9)
    assert res.config["backend_config"]["simulator"]["steps_per_worker"] == [99]
    assert stats(res)["inserted_blocks"] == 8
