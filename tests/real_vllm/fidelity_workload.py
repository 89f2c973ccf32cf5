"""The deterministic request sequence of the fidelity test, and the simulator's prediction for it.

Requests reuse a few document prefixes in a cyclic, then shuffled, order over a cache too small to hold
them all, so eviction decides every hit and ``lru`` and ``rlt`` end up with different hits. Prompts are
token ids (kvbench's own block hashes of them are the trace's ``hash_ids``), one output token each,
and they are spaced far apart in time so the simulator, like the test, serves one request at a time.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pandas as pd

from kvbench.hashing import block_hashes
from kvbench.trace import TraceMeta, write_trace


def prompts(seed: int = 0, block: int = 32, n: int = 48) -> list[list[int]]:
    rng = random.Random(seed)
    docs = [[rng.randrange(1000, 30000) for _ in range(rng.randrange(10 * block, 20 * block))] for _ in range(6)]
    order = list(range(len(docs))) * 3
    tail_order = [rng.randrange(len(docs)) for _ in range(n - len(order))]
    out = []
    for i, d in enumerate(order + tail_order):
        doc = docs[d]
        cut = len(doc) - rng.randrange(0, 2 * block)
        tail = [rng.randrange(1000, 30000) for _ in range(rng.randrange(1, block))]
        out.append(doc[:cut] + tail)
    return out


def write_fidelity_trace(path: Path, ids: list[list[int]], block: int) -> Path:
    df = pd.DataFrame({
        "request_id": [f"r{i:03d}" for i in range(len(ids))],
        "arrival_s": [100.0 * i for i in range(len(ids))],
        "session_id": [None] * len(ids),
        "turn": [0] * len(ids),
        "think_s": [0.0] * len(ids),
        "group_id": [None] * len(ids),
        "input_tokens": [len(p) for p in ids],
        "output_tokens": [1] * len(ids),
        "user_tokens": [len(p) for p in ids],
        "prompt": [None] * len(ids),
        "prompt_token_ids": [list(p) for p in ids],
        "hash_ids": [block_hashes(np.asarray(p, dtype=np.int64), block).tolist() for p in ids],
    })
    return write_trace(path, df, TraceMeta(generator="kvbench-fidelity-test", block_size=block, seed=0))


def simulate(trace: Path, out: Path, eviction: str, seed: int, block: int, kv_tokens: int) -> list[int]:
    """cached_tokens per request from `kvbench replay --target sim` (one worker with the server's KV size;
    the simulator sets aside vLLM's null block itself)."""
    from kvbench.replay import run_replay
    from kvbench.spec import ReplaySpec

    spec = ReplaySpec(trace=trace, output=out, target="sim", eviction=eviction, seed=seed, workers=1,
                      cache_tokens=kv_tokens, block_size=block, progress=False)
    run_replay(spec)
    rows = pd.read_parquet(out / "requests.parquet").sort_values("request_id")
    return [int(x) for x in rows["cached_tokens"]]
