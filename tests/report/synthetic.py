"""Seeded, plausible result directories for the report's tests, benchmark and demos.

Not a simulator: rows only need the shape of real ones (several workers, queueing, TTFT growing with
uncached tokens, some failures) so the report can be exercised without replaying anything.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from kvbench.results import compute_summary, write_run


def synthetic_rows(n: int, workers: int, seed: int, hit_level: float = 0.5, failed: int = 0,
                   rate: float = 12.0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    arrival = np.cumsum(rng.exponential(1.0 / rate, n))
    worker = rng.integers(0, workers, n).astype(np.int32)
    input_tokens = rng.choice([512, 1024, 2048, 4096], n).astype(np.int32)
    output_tokens = rng.integers(4, 64, n).astype(np.int32)
    # Hit rate warms up over the first tenth of the run.
    warm = np.minimum(1.0, np.arange(n) / max(1, n // 10))
    frac = np.clip(rng.normal(hit_level * warm, 0.15), 0.0, 1.0)
    cached = ((frac * input_tokens) // 16 * 16).astype(np.int32)
    queue = rng.exponential(0.02 + 0.01 * worker, n)
    sent = arrival + queue
    prefill = (input_tokens - cached) * 4e-5 + 0.005
    first = sent + prefill
    tpot = rng.uniform(0.01, 0.02, n)
    done = first + tpot * (output_tokens - 1)
    status = np.array(["ok"] * n, dtype=object)
    error = np.array([None] * n, dtype=object)
    if failed:
        bad = rng.choice(n, size=min(failed, n), replace=False)
        status[bad] = "error"
        error[bad] = "HTTP 503: worker overloaded"
    df = pd.DataFrame({
        "request_id": [f"r{i}" for i in range(n)],
        "session_id": None, "turn": np.zeros(n, dtype=np.int32), "group_id": [f"g{i % 32}" for i in range(n)],
        "worker": worker, "arrival_s": arrival, "sent_s": sent, "first_token_s": first, "done_s": done,
        "ttft_s": first - arrival, "e2e_s": done - arrival, "tpot_s": tpot, "itl_s": None,
        "input_tokens": input_tokens, "output_tokens": output_tokens, "cached_tokens": cached,
        "status": status, "error": error,
    })
    failed_rows = df["status"] != "ok"
    for col in ("first_token_s", "done_s", "ttft_s", "e2e_s", "tpot_s", "cached_tokens"):
        df[col] = df[col].astype("float64").where(~failed_rows) if col != "cached_tokens" else \
            df[col].astype("Int32").where(~failed_rows)
    return df


def write_synthetic_run(out: str | Path, *, name: str | None = None, eviction: str = "lru",
                        router: str = "round_robin", n: int = 512, workers: int = 4,
                        cache_tokens: int | None = 65536, seed: int = 0, hit_level: float = 0.5,
                        failed: int = 0, generator: str = "gsp", params: dict[str, Any] | None = None,
                        time_scale: float = 1.0, target: str = "sim", extra: dict[str, Any] | None = None) -> Path:
    params = {"groups": 128, "prompts_per_group": 32, "rate": 12.0} if params is None else params
    # ``seed`` varies the rows; the configured seed stays 0 so runs of a sweep share their settings.
    rows = synthetic_rows(n, workers, seed, hit_level, failed, rate=float(params.get("rate", 12.0)) / time_scale)
    names = [f"w{i}" for i in range(workers)]
    summary = compute_summary(rows, workers, {"ideal": min(1.0, hit_level + 0.2)})
    trace_path = f"traces/{generator}.parquet"
    sha = hashlib.sha256(json.dumps([generator, params], sort_keys=True, default=str).encode()).hexdigest()
    config: dict[str, Any] = {  # the shape `kvbench replay` writes (kvbench.replay.assemble_config)
        "name": name, "target": target, "eviction": eviction, "router": router, "seed": 0,
        "workers": names, "cache_tokens": cache_tokens, "block_size": 16, "time_scale": time_scale,
        "trace": trace_path,
        "trace_file": {"path": trace_path, "requests": n, "sha256": sha,
                       "meta": {"generator": generator, "params": params, "seed": 0}},
        "backend": "sim" if target == "sim" else "http", "interrupted": False,
        "summary": summary,
    }
    config.update(extra or {})
    return write_run(out, rows, config)
