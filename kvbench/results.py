"""The result format shared by the simulator and the HTTP path: requests.parquet + run.json.

``requests.parquet`` has one row per request (schema below, written down once). ``run.json`` holds the
full configuration and a ``summary`` whose keys follow ``vllm bench serve`` (``mean_ttft_ms``,
``median_ttft_ms``, ``p99_ttft_ms``, ``request_throughput``, ...) plus hit rates from every source.
"""

from __future__ import annotations

import json
import math
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from kvbench.errors import fail
from kvbench.fsutil import atomic_path, write_json_atomic

RESULT_FORMAT_VERSION = "1"
REQUESTS_FILE = "requests.parquet"
RUN_FILE = "run.json"

REQUESTS_SCHEMA = pa.schema(
    [
        pa.field("request_id", pa.string(), nullable=False),
        pa.field("session_id", pa.string()),
        pa.field("turn", pa.int32()),
        pa.field("group_id", pa.string()),
        pa.field("worker", pa.int32()),  # index into run.json "workers"; -1 if never sent
        pa.field("arrival_s", pa.float64()),  # when the request became eligible (open loop: trace time)
        pa.field("sent_s", pa.float64()),  # when it was sent to a worker (simulator: routed, before queueing)
        pa.field("first_token_s", pa.float64()),
        pa.field("done_s", pa.float64()),
        pa.field("ttft_s", pa.float64()),  # first_token_s - sent_s (as vllm bench serve times it)
        pa.field("e2e_s", pa.float64()),  # done_s - sent_s; sent_s - arrival_s is client-side wait
        pa.field("tpot_s", pa.float64()),  # (done - first token) / (output_tokens - 1)
        pa.field("itl_s", pa.list_(pa.float64())),  # inter-token latencies when streamed
        pa.field("input_tokens", pa.int32()),
        pa.field("output_tokens", pa.int32()),
        pa.field("cached_tokens", pa.int32()),  # null when the server does not report it
        pa.field("status", pa.string(), nullable=False),  # ok | error | cancelled
        pa.field("error", pa.string()),
        pa.field("warmup", pa.bool_()),  # sent before the --warmup barrier: in no metric (missing: all False)
    ]
)


def requests_table(rows: list[dict[str, Any]] | pd.DataFrame) -> pa.Table:
    df = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(rows)
    for f in REQUESTS_SCHEMA:
        if f.name not in df.columns:
            df[f.name] = False if f.name == "warmup" else None
    return pa.Table.from_pandas(df[[f.name for f in REQUESTS_SCHEMA]], schema=REQUESTS_SCHEMA, preserve_index=False)


def _pct(values: np.ndarray, q: float) -> float:
    return float(np.percentile(values, q)) if len(values) else float("nan")


def _stats(prefix: str, seconds: np.ndarray, percentiles=(50, 90, 95, 99)) -> dict[str, float]:
    ms = seconds[~np.isnan(seconds)] * 1000.0
    out = {
        f"mean_{prefix}_ms": float(ms.mean()) if len(ms) else float("nan"),
        f"median_{prefix}_ms": float(np.median(ms)) if len(ms) else float("nan"),
        f"std_{prefix}_ms": float(ms.std()) if len(ms) else float("nan"),
    }
    for p in percentiles:
        out[f"p{p}_{prefix}_ms"] = _pct(ms, p)
    return out


def _cv(values: list[float]) -> float:
    arr = np.asarray(values, dtype=float)
    if len(arr) == 0 or arr.mean() == 0:
        return 0.0
    return float(arr.std() / arr.mean())


def compute_summary(df: pd.DataFrame, n_workers: int, extra_hit_rates: dict[str, float | None] | None = None,
                    goodput: dict[str, float] | None = None) -> dict[str, Any]:
    """Summary metrics named like ``vllm bench serve``; pure function of the request rows (and of the
    goodput objectives, in ms, when given). Warm-up rows (``--warmup``) count in ``warmup_requests`` only:
    every metric, the duration's start included, covers the measured requests."""
    warm = warmup_rows(df)
    df = df[~warm]
    ok = df[df["status"] == "ok"]
    summary: dict[str, Any] = {
        "num_requests": int(len(df)),
        "warmup_requests": int(warm.sum()),
        "completed": int(len(ok)),
        "failed": int((df["status"] == "error").sum()),
        "cancelled": int((df["status"] == "cancelled").sum()),
        "total_input_tokens": int(ok["input_tokens"].sum()),
        "total_output_tokens": int(ok["output_tokens"].sum()),
    }
    if len(ok):
        start = float(df["arrival_s"].min())
        end = float(ok["done_s"].max())
        duration = max(end - start, 1e-9)
    else:
        duration = float("nan")
    summary["duration"] = duration
    summary["request_throughput"] = len(ok) / duration if len(ok) else 0.0
    summary["input_throughput"] = summary["total_input_tokens"] / duration if len(ok) else 0.0
    summary["output_throughput"] = summary["total_output_tokens"] / duration if len(ok) else 0.0
    summary["total_token_throughput"] = summary["input_throughput"] + summary["output_throughput"]
    summary.update(_stats("ttft", ok["ttft_s"].to_numpy(dtype=float)))
    summary.update(_stats("tpot", ok["tpot_s"].to_numpy(dtype=float)))
    summary.update(_stats("e2el", ok["e2e_s"].to_numpy(dtype=float)))
    itl = [x for lst in ok["itl_s"] if lst is not None for x in lst]
    summary.update(_stats("itl", np.asarray(itl, dtype=float)))
    if goodput:
        from kvbench.goodput import goodput_summary

        summary.update(goodput_summary(df, goodput, duration))

    hit_rates: dict[str, float | None] = {}
    cached = ok["cached_tokens"]
    if len(ok) and cached.notna().all():
        q = float(ok["input_tokens"].sum())
        hit_rates["requests"] = float(cached.sum()) / q if q else 0.0
    else:
        hit_rates["requests"] = None
    for k, v in (extra_hit_rates or {}).items():
        hit_rates[k] = v
    summary["hit_rates"] = hit_rates
    primary = hit_rates.get("requests")
    if primary is None:
        primary = hit_rates.get("server_counters")
    summary["hit_rate"] = primary

    per_req = [int((ok["worker"] == w).sum()) for w in range(n_workers)]
    per_tok = [int(ok.loc[ok["worker"] == w, "input_tokens"].sum() + ok.loc[ok["worker"] == w, "output_tokens"].sum())
               for w in range(n_workers)]
    summary["requests_per_worker"] = per_req
    summary["tokens_per_worker"] = per_tok
    summary["requests_cv"] = _cv(per_req)
    summary["tokens_cv"] = _cv(per_tok)
    return _clean(summary)


def warmup_rows(df: pd.DataFrame) -> np.ndarray:
    """The warm-up mask of result rows; files written before the column existed have none."""
    if "warmup" not in df.columns:
        return np.zeros(len(df), dtype=bool)
    return df["warmup"].astype("boolean").fillna(False).to_numpy(dtype=bool)


def measured_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The rows every metric covers: all but the warm-up."""
    return df[~warmup_rows(df)]


def _clean(obj: Any) -> Any:
    """JSON has no NaN: map it to null."""
    if isinstance(obj, float) and (math.isnan(obj) or math.isinf(obj)):
        return None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_clean(v) for v in obj]
    return obj


def versions() -> dict[str, str]:
    import kvbench

    out = {"kvbench": kvbench.__version__, "python": platform.python_version()}
    for mod in ("numpy", "pandas", "pyarrow"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception:  # pragma: no cover
            pass
    return out


@dataclass
class RunResult:
    path: Path
    config: dict[str, Any]
    requests: pd.DataFrame

    @property
    def summary(self) -> dict[str, Any]:
        return self.config.get("summary", {})

    @property
    def name(self) -> str:
        return self.config.get("name") or self.path.name


def write_run(out_dir: str | Path, rows: list[dict[str, Any]] | pd.DataFrame, config: dict[str, Any],
              timeline: pd.DataFrame | None = None) -> Path:
    """Write requests.parquet, timeline.parquet (--scrape-interval) then run.json (each atomically); run.json
    last marks the run complete."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = requests_table(rows)
    with atomic_path(out / REQUESTS_FILE) as tmp:
        pq.write_table(table, tmp, compression="zstd")
    from kvbench.timeline import write_timeline

    write_timeline(out, timeline)  # without one, an overwritten run's stale timeline goes
    config = {"result_format_version": RESULT_FORMAT_VERSION, **config}
    write_json_atomic(out / RUN_FILE, config)
    return out


def read_run(path: str | Path) -> RunResult:
    p = Path(path)
    if p.is_file() and p.name == RUN_FILE:
        p = p.parent
    run_json = p / RUN_FILE
    req = p / REQUESTS_FILE
    if not p.exists():
        raise fail(f"{p}: no such result directory")
    if not run_json.exists() or not req.exists():
        raise fail(f"{p}: not a kvbench result directory (needs {RUN_FILE} and {REQUESTS_FILE}); "
                   f"produce one with `kvbench replay`")
    try:
        config = json.loads(run_json.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise fail(f"{run_json}: invalid JSON ({exc.msg} at line {exc.lineno})") from None
    try:
        df = pq.read_table(req).to_pandas()
    except Exception as exc:
        raise fail(f"{req}: unreadable ({type(exc).__name__}); re-run the replay") from None
    if "warmup" not in df.columns:  # written before --warmup existed: nothing was warm-up
        df["warmup"] = False
    missing = [f.name for f in REQUESTS_SCHEMA if f.name not in df.columns]
    if missing:
        raise fail(f"{req}: missing column(s) {', '.join(missing)}")
    return RunResult(path=p, config=config, requests=df)
