"""Small traces and specs for the HTTP tests."""

from __future__ import annotations

import numpy as np
import pandas as pd

from kvbench.hashing import block_hashes
from kvbench.spec import ReplaySpec
from kvbench.trace import Trace, TraceMeta


def make_trace(rows: list[dict], block_size: int = 16) -> Trace:
    """A trace from rows giving request_id, arrival_s, prompt_token_ids, output_tokens (+ session fields)."""
    out = []
    for r in rows:
        ids = np.asarray(r["prompt_token_ids"], dtype=np.int64)
        out.append({"session_id": None, "turn": 0, "think_s": 0.0, "group_id": None,
                    "user_tokens": len(ids), "prompt": None, **r,
                    "input_tokens": len(ids), "hash_ids": block_hashes(ids, block_size).tolist()})
    return Trace(df=pd.DataFrame(out), meta=TraceMeta(generator="test", block_size=block_size))


def two_turn_session(seed: int) -> tuple[list[int], list[int], Trace]:
    """A 24-token first turn (3 outputs) and a next turn recording a 3-token answer the fake server will
    not generate (it answers 1000, 1001, ...) plus 8 new user tokens; returns (first, user, trace)."""
    rng = np.random.default_rng(seed)
    first = rng.integers(0, 16000, 24).tolist()
    user = rng.integers(0, 16000, 8).tolist()
    rows = [
        {"request_id": "t0", "arrival_s": 0.0, "session_id": "s", "turn": 0, "user_tokens": 24,
         "output_tokens": 3, "prompt_token_ids": first},
        {"request_id": "t1", "arrival_s": 0.0, "session_id": "s", "turn": 1, "user_tokens": 8,
         "output_tokens": 2, "prompt_token_ids": first + [5, 6, 7] + user},
    ]
    return first, user, make_trace(rows)


def open_loop_trace(n: int, gap_s: float, prompt_len: int = 40, output_tokens: int = 3, shared: int = 32,
                    seed: int = 0) -> Trace:
    rng = np.random.default_rng(seed)
    prefix = rng.integers(0, 16000, shared).tolist()
    rows = [{"request_id": f"r{i}", "arrival_s": i * gap_s, "output_tokens": output_tokens,
             "prompt_token_ids": prefix + rng.integers(0, 16000, prompt_len - shared).tolist()} for i in range(n)]
    return make_trace(rows)


def spec_for(tmp_path, urls: list[str], **kw) -> ReplaySpec:
    base = {"trace": tmp_path / "t.parquet", "output": tmp_path / "out", "target": ",".join(urls),
            "router": "round_robin", "progress": False, "timeout_s": 10.0}
    base.update(kw)
    return ReplaySpec(**base)
