"""`kvbench inspect`: what a trace holds, in numbers that predict how a cache will behave on it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from kvbench.trace import Trace, ideal_hit_rate, read_trace


def _distinct(values: np.ndarray) -> int:
    if len(values) == 0:
        return 0
    ordered = np.sort(values)
    return int(np.count_nonzero(ordered[1:] != ordered[:-1])) + 1


def _percentiles(values: np.ndarray) -> dict[str, float]:
    if len(values) == 0:
        return {k: 0.0 for k in ("total", "mean", "p50", "p90", "p99", "max")}
    p50, p90, p99 = np.percentile(values, [50, 90, 99])
    return {
        "total": int(values.sum()),
        "mean": round(float(values.mean()), 2),
        "p50": round(float(p50), 2),
        "p90": round(float(p90), 2),
        "p99": round(float(p99), 2),
        "max": int(values.max()),
    }


PROMPT_COLUMNS = ("prompt_token_ids", "prompt")


def summarize_file(path: Path) -> dict[str, Any]:
    """Summarize without loading the prompts: on a trace with materialized token ids they are most of the file
    (a one-hour Mooncake import: 145M ids), and inspect only counts which rows have them, batch by batch."""
    trace = read_trace(path, skip=PROMPT_COLUMNS)
    present = dict.fromkeys(PROMPT_COLUMNS, 0)
    pf = pq.ParquetFile(path)
    cols = [c for c in PROMPT_COLUMNS if c in pf.schema_arrow.names]
    if cols:
        for batch in pf.iter_batches(columns=cols, batch_size=1024):
            for c in cols:
                present[c] += batch.num_rows - batch.column(c).null_count
    return summarize(trace, present)


def summarize(trace: Trace, present: dict[str, int] | None = None) -> dict[str, Any]:
    """``present``: rows with token ids / text, when counted without loading them (:func:`summarize_file`)."""
    df = trace.df
    n = len(df)
    arrival = df["arrival_s"].to_numpy(dtype=np.float64)
    duration = float(arrival.max() - arrival.min()) if n else 0.0
    sessions = df["session_id"].dropna()
    hashes = trace.hash_ids_at(trace.block_size)
    flat = np.concatenate(hashes) if hashes else np.zeros(0, dtype=np.int64)
    if present is None:
        present = {c: int(df[c].notna().sum()) if c in df else 0 for c in PROMPT_COLUMNS}
    has_ids, has_text = present["prompt_token_ids"], present["prompt"]
    meta = trace.meta
    return {
        "file": str(trace.path) if trace.path else None,
        "generator": meta.generator,
        "source": meta.source,
        "synthetic": meta.synthetic,
        "seed": meta.seed,
        "tokenizer": meta.tokenizer,
        "block_size": meta.block_size,
        "format_version": meta.format_version,
        "requests": n,
        "sessions": int(sessions.nunique()),
        "session_requests": int(len(sessions)),
        "max_turns": int(df["turn"].max()) + 1 if n else 0,
        "groups": int(df["group_id"].dropna().nunique()),
        "input_tokens": _percentiles(df["input_tokens"].to_numpy(dtype=np.int64)),
        "output_tokens": _percentiles(df["output_tokens"].to_numpy(dtype=np.int64)),
        "duration_s": round(duration, 3),
        "arrival_rate_per_s": round((n - 1) / duration, 3) if duration > 0 else None,
        "blocks": int(len(flat)),
        "distinct_blocks": _distinct(flat),
        "with_token_ids": has_ids,
        "with_text": has_text,
        "ideal_hit_rate": round(ideal_hit_rate(trace), 4),
    }


def render(summary: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=summary["file"] or "trace", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    for key, value in summary.items():
        if key == "file":
            continue
        if isinstance(value, dict):
            value = "  ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in value.items())
        table.add_row(key, "-" if value is None else str(value))
    Console().print(table)
