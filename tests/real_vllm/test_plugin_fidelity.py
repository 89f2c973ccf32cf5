"""Fidelity: the cached tokens a real vLLM reports equal what kvbench's simulator predicts.

One request at a time (prompt as token ids, 1 output token, ``ignore_eos``) against a worker whose KV
cache (63 usable blocks of 32 tokens) is too small for the working set, under vLLM's own eviction, under
kvbench's ``lru`` and under kvbench's ``rlt`` (seed 0). The prediction is ``kvbench replay --target sim``
on the same trace, block size and capacity (usable blocks = vLLM's ``num_gpu_blocks`` minus its null
block). vLLM details the simulator must share for this to hold: a hit is capped at
``(input_tokens - 1) // block_size`` blocks (the last prompt token is always recomputed), partial blocks
are never cached, and free never-cached blocks are used before any cached block is evicted.

Whole-block prompts are included: with one output token vLLM never allocates a slot for the sampled
token, and neither does the simulator.
"""

from __future__ import annotations

import json
import urllib.request

import pytest
from tests.real_vllm.fidelity_workload import prompts, simulate, write_fidelity_trace

pytestmark = pytest.mark.vllm

BLOCK = 32
KV_TOKENS = 2048  # 64 blocks, 63 usable


def _post(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as resp:
        return json.loads(resp.read())


def serve_sequence(worker, ids: list[list[int]]) -> list[int]:
    with urllib.request.urlopen(urllib.request.Request(f"{worker.url}/reset_prefix_cache", method="POST"),
                                timeout=30):
        pass
    cached = []
    for p in ids:
        out = _post(f"{worker.url}/v1/completions", {"model": worker.model, "prompt": p, "max_tokens": 1,
                                                     "ignore_eos": True, "temperature": 0.0})
        assert out["usage"]["prompt_tokens"] == len(p)
        cached.append(int(out["usage"]["prompt_tokens_details"]["cached_tokens"]))
    return cached


@pytest.fixture(scope="module")
def trace(tmp_path_factory):
    ids = prompts(seed=0, block=BLOCK)
    return ids, write_fidelity_trace(tmp_path_factory.mktemp("fidelity") / "trace.parquet", ids, BLOCK)


@pytest.fixture(scope="module")
def measured(vllm_worker, trace):
    """cached_tokens per request from real vLLM, per eviction setting (workers started one after another)."""
    ids, _ = trace
    out = {}
    for port, eviction in enumerate(("vllm", "lru", "rlt"), start=18150):
        worker = vllm_worker(eviction=eviction, kv_cache_tokens=KV_TOKENS, block_size=BLOCK, seed=0, port=port)
        assert worker.block_size == BLOCK and worker.kv_cache_blocks == KV_TOKENS // BLOCK
        out[eviction] = serve_sequence(worker, ids)
    return out


@pytest.mark.parametrize("eviction", ["lru", "rlt"])
def test_vllm_cached_tokens_equal_simulator_prediction(measured, trace, tmp_path, eviction):
    ids, path = trace
    predicted = simulate(path, tmp_path / "sim", eviction, seed=0, block=BLOCK, kv_tokens=KV_TOKENS)
    got = measured[eviction]
    print(f"{eviction}: vLLM cached {sum(got)} tokens, simulator {sum(predicted)} "
          f"(of {sum(len(p) for p in ids)} prompt tokens, {len(ids)} requests)")
    assert got == predicted


def test_kvbench_lru_equals_vllm_native_eviction(measured):
    assert measured["lru"] == measured["vllm"]


def test_the_sequence_forces_eviction_and_separates_policies(measured, trace):
    ids, _ = trace
    ideal = sum(_infinite_cache_hits(ids))
    assert sum(measured["lru"]) < ideal  # eviction cost hits
    assert measured["lru"] != measured["rlt"]


def _infinite_cache_hits(ids: list[list[int]]) -> list[int]:
    from kvbench.hashing import block_hashes

    seen: set[int] = set()
    hits = []
    for p in ids:
        keys = block_hashes(p, BLOCK).tolist()
        n = 0
        while n < len(keys) and keys[n] in seen:
            n += 1
        hits.append(min(n, (len(p) - 1) // BLOCK) * BLOCK)
        seen.update(keys)
    return hits
