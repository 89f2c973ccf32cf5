"""Server state over time (``--scrape-interval``): ``timeline.parquet`` beside requests.parquet.

A real run scrapes every worker's /metrics each interval (kvbench/http/timeline.py); the simulator samples
its own workers at t = 0, dt, 2dt, ... of simulated time (:class:`SimSampler`). Both write the schema below,
so a simulated and a real run of one combination can be overlaid (kvbench/report/timeline_chart.py).
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from kvbench.errors import fail
from kvbench.fsutil import atomic_path

TIMELINE_FILE = "timeline.parquet"

TIMELINE_SCHEMA = pa.schema(
    [
        pa.field("t_s", pa.float64(), nullable=False),  # since the run's t0: the origin of requests.parquet's times
        pa.field("worker", pa.int32(), nullable=False),  # index into run.json "workers"
        pa.field("source", pa.string(), nullable=False),  # server | simulator
        pa.field("kv_cache_usage", pa.float64()),  # 0..1: blocks held by requests / usable blocks
        pa.field("running", pa.float64()),  # requests being computed
        pa.field("waiting", pa.float64()),  # requests queued in the engine
        # cumulative counters: a server's since it started (vLLM: prefix-cache query/hit tokens; SGLang:
        # prompt/cached tokens), the simulator's since t0
        pa.field("prefix_queries_total", pa.float64()),
        pa.field("prefix_hits_total", pa.float64()),
        pa.field("preemptions_total", pa.float64()),
        pa.field("error", pa.string()),  # why this sample has no values (a failed or skipped scrape)
    ]
)
VALUE_COLUMNS = ("kv_cache_usage", "running", "waiting", "prefix_queries_total", "prefix_hits_total",
                 "preemptions_total")


def check_interval(interval_s: float | None) -> None:
    if interval_s is not None and not (math.isfinite(interval_s) and interval_s > 0):
        raise fail(f"--scrape-interval {interval_s}: must be a positive number of seconds (e.g. 1)")


def timeline_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Rows in the schema's columns (missing values null), sorted by time then worker."""
    df = pd.DataFrame(rows, columns=[f.name for f in TIMELINE_SCHEMA])
    if df.empty:
        return df
    return df.sort_values(["t_s", "worker"], kind="stable").reset_index(drop=True)


def write_timeline(out_dir: str | Path, frame: pd.DataFrame | None) -> None:
    """Write ``timeline.parquet`` atomically; without a timeline, remove one an overwritten run left behind."""
    path = Path(out_dir) / TIMELINE_FILE
    if frame is None:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        return
    frame = frame.reindex(columns=[f.name for f in TIMELINE_SCHEMA])
    table = pa.Table.from_pandas(frame, schema=TIMELINE_SCHEMA, preserve_index=False)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")


def read_timeline(run_dir: str | Path) -> pd.DataFrame | None:
    """The run's timeline, None when it has none; a damaged file is one line naming it."""
    path = Path(run_dir) / TIMELINE_FILE
    if not path.exists():
        return None
    try:
        df = pq.read_table(path).to_pandas()
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for a damaged file
        raise fail(f"{path}: unreadable ({type(exc).__name__}); re-run the replay with --scrape-interval") from None
    missing = [f.name for f in TIMELINE_SCHEMA if f.name not in df.columns]
    if missing:
        raise fail(f"{path}: missing column(s) {', '.join(missing)}")
    return df


# --------------------------------------------------------------------------------------------- server
# (gauge or counter, vLLM name, SGLang name); SGLang counts prompt and cached tokens where vLLM counts
# prefix-cache query and hit tokens, and reports no preemption counter
SERVER_NAMES = (
    ("kv_cache_usage", "vllm:kv_cache_usage_perc", "sglang:token_usage"),
    ("running", "vllm:num_requests_running", "sglang:num_running_reqs"),
    ("waiting", "vllm:num_requests_waiting", "sglang:num_queue_reqs"),
    ("prefix_queries_total", "vllm:prefix_cache_queries_total", "sglang:prompt_tokens_total"),
    ("prefix_hits_total", "vllm:prefix_cache_hits_total", "sglang:cached_tokens_total"),
    ("preemptions_total", "vllm:num_preemptions_total", None),
)


def server_row(t_s: float, worker: int, values: dict[str, float], series: dict[str, int],
               error: str | None) -> dict[str, Any]:
    """One timeline row from a /metrics snapshot (summed ``values`` and how many ``series`` each sum has).

    KV usage is a fraction per engine, so a worker with several engines gets their mean, not their sum."""
    row: dict[str, Any] = {"t_s": t_s, "worker": worker, "source": "server", "error": error}
    for column, *names in SERVER_NAMES:
        name = next((n for n in names if n is not None and n in values), None)
        value = None if name is None else values[name]
        if value is not None and column == "kv_cache_usage":
            value /= max(series.get(name, 1), 1)
        row[column] = value
    return row


# ------------------------------------------------------------------------------------------ simulator
class SimSampler:
    """Samples simulated workers at t = 0, dt, 2dt, ...: called with each event's time before the event is
    handled, so the sample at t shows the state after every event at or before t (exact on a hand trace).

    KV usage is what vLLM's ``kv_cache_usage_perc`` counts: blocks held by running requests (cached blocks
    nobody holds are free to vLLM) over the usable blocks (the null block excluded)."""

    def __init__(self, workers: list, interval_s: float) -> None:
        self.workers = workers
        self.interval_s = interval_s
        self.k = 0  # the next sample is at k * interval_s (no accumulated float error)
        self.rows: list[dict[str, Any]] = []

    def __call__(self, t: float) -> None:
        while self.k * self.interval_s < t:
            self._sample(self.k * self.interval_s)

    def finish(self, end_s: float) -> None:
        """Sample through the first grid time at or after the last event, so the timeline ends in the state
        the run ends in."""
        self(end_s)
        self._sample(self.k * self.interval_s)

    def _sample(self, t: float) -> None:
        self.k += 1
        for w in self.workers:
            cache = w.cache
            capacity = cache.capacity_blocks
            held = cache.used_blocks - cache.evictable_blocks
            self.rows.append({
                "t_s": t, "worker": w.index, "source": "simulator",
                "kv_cache_usage": held / capacity if capacity else None,
                "running": len(w.running), "waiting": len(w.waiting),
                "prefix_queries_total": cache.stats.queries_tokens, "prefix_hits_total": cache.stats.hit_tokens,
                "preemptions_total": w.preemptions, "error": None})

    def frame(self) -> pd.DataFrame:
        return timeline_frame(self.rows)
