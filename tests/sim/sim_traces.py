"""Small traces for simulator tests, built directly with the trace writer (token ids from a seeded RNG)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from kvbench.hashing import block_hashes
from kvbench.trace import TraceMeta, write_trace


def make_trace(path, n_groups=6, per_group=5, prefix=256, suffix=64, rate=4.0, output=4, seed=0,
               block_size=16, sessions=0, turns=3, think_s=0.5, with_ids=True):
    """Shared-prefix groups (open loop, Poisson arrivals) plus optional closed-loop sessions."""
    rng = np.random.default_rng(seed)
    rows = []
    t = 0.0
    docs = [rng.integers(0, 30000, prefix) for _ in range(n_groups)]
    order = rng.permutation(n_groups * per_group)
    for k in order:
        g = int(k) // per_group
        ids = np.concatenate([docs[g], rng.integers(0, 30000, suffix)]).astype(np.int32)
        t += float(rng.exponential(1.0 / rate))
        rows.append(dict(request_id=f"g{g}-{int(k)}", arrival_s=t, session_id=None, turn=0, think_s=0.0,
                         group_id=f"g{g}", input_tokens=len(ids), output_tokens=output, user_tokens=suffix,
                         prompt=None, prompt_token_ids=ids if with_ids else None,
                         hash_ids=block_hashes(ids, block_size)))
    for s in range(sessions):
        hist = np.zeros(0, dtype=np.int32)
        for turn in range(turns):
            hist = np.concatenate([hist, rng.integers(0, 30000, 100)]).astype(np.int32)
            rows.append(dict(request_id=f"s{s}-t{turn}", arrival_s=0.1 * s + turn * 0.01, session_id=f"s{s}",
                             turn=turn, think_s=think_s if turn else 0.0, group_id=f"s{s}",
                             input_tokens=len(hist), output_tokens=output, user_tokens=100, prompt=None,
                             prompt_token_ids=hist.copy() if with_ids else None,
                             hash_ids=block_hashes(hist, block_size)))
            hist = np.concatenate([hist, rng.integers(0, 30000, output)]).astype(np.int32)
    meta = TraceMeta(generator="test", block_size=block_size, seed=seed, synthetic=True, source="unit test")
    return write_trace(path, pd.DataFrame(rows), meta)


# Round coefficients, so step times in tests can be derived by hand: a step costs 10 ms, plus 1 ms per prompt
# token computed, plus 2 ms per decoding sequence (attention and KV-read terms off unless a test sets them).
HAND = {"step_base_s": 0.01, "prefill_token_s": 0.001, "prefill_attn_s": 0.0, "decode_seq_s": 0.002,
        "decode_ctx_s": 0.0}


def write_profile(path, **coefficients):
    """A latency profile file with ``HAND``'s coefficients, overridden by ``coefficients``."""
    from kvbench.sim.latency import profile_toml

    values = {**HAND, **coefficients}
    path.write_text(profile_toml("hand", "round numbers for hand-derived test timings", values, {}))
    return path


def request_trace(path, requests, block_size=16):
    """A trace of open-loop requests given as (request_id, arrival_s, token ids, output_tokens)."""
    rows = []
    for rid, arrival, ids, output in requests:
        ids = np.asarray(ids, dtype=np.int32)
        rows.append(dict(request_id=rid, arrival_s=float(arrival), session_id=None, turn=0, think_s=0.0,
                         group_id=None, input_tokens=len(ids), output_tokens=output, user_tokens=len(ids),
                         prompt=None, prompt_token_ids=ids, hash_ids=block_hashes(ids, block_size)))
    meta = TraceMeta(generator="test", block_size=block_size, seed=0, synthetic=True, source="unit test")
    return write_trace(path, pd.DataFrame(rows), meta)
