"""The summary table: one row per run, the same columns in HTML, CSV and JSON.

Column names follow ``vllm bench serve`` where one exists so scripts can join both outputs. Ratios against
the baseline are only filled for runs of the baseline's workload: comparing across workloads is meaningless.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pandas as pd

from kvbench.report.model import HIT_RATE_SOURCES, ReportRun, _num

METRICS = (
    "mean_ttft_ms", "median_ttft_ms", "p99_ttft_ms",
    "mean_e2el_ms", "median_e2el_ms", "p99_e2el_ms",
    "request_throughput", "total_token_throughput",
    "requests_cv", "tokens_cv",
    "request_goodput", "goodput_attainment",  # NaN unless the run was replayed or reported with --goodput
)
INT_COLUMNS = ("workers", "cache_tokens", "num_requests", "completed", "failed")
# (column, source metric, higher is better)
RATIOS = (
    ("vs_baseline_hit_rate", "hit_rate", True),
    ("vs_baseline_mean_ttft", "mean_ttft_ms", False),
    ("vs_baseline_p99_ttft", "p99_ttft_ms", False),
    ("vs_baseline_mean_e2el", "mean_e2el_ms", False),
    ("vs_baseline_request_throughput", "request_throughput", True),
    ("vs_baseline_token_throughput", "total_token_throughput", True),
    ("vs_baseline_request_goodput", "request_goodput", True),
)


def ordered_runs(runs: list[ReportRun]) -> list[ReportRun]:
    """Group by workload (in order of first appearance), keeping the command-line order inside each."""
    first: dict[str, int] = {}
    for i, run in enumerate(runs):
        first.setdefault(run.workload_key, i)
    return sorted(runs, key=lambda r: first[r.workload_key])


def run_flags(run: ReportRun) -> str:
    """What makes a run's numbers partial, in a few words ("" for a clean run): shown beside its name."""
    flags = []
    if run.config.get("interrupted"):
        flags.append("interrupted")
    status = run.requests["status"]
    failed, cancelled = int((status == "error").sum()), int((status == "cancelled").sum())
    if failed:
        flags.append(f"{failed} failed")
    if cancelled:
        flags.append(f"{cancelled} cancelled")
    return ", ".join(flags)


def summary_row(run: ReportRun) -> dict[str, Any]:
    s = run.summary
    row: dict[str, Any] = {
        "run": run.name,
        "workload": run.workload_label,
        "workload_id": run.workload_key,
        "target": run.target_kind,
        "workers": run.n_workers,
        "cache_tokens": run.cache_tokens,
        "eviction": run.combination.eviction,
        "router": run.combination.router,
        "request_rate": run.request_rate,
        "time_scale": run.time_scale,
        "num_requests": len(run.requests),
        "completed": int((run.requests["status"] == "ok").sum()),
        "failed": run.n_failed,
        "hit_rate": run.hit_rate(),
        "flags": run_flags(run),
    }
    for source in HIT_RATE_SOURCES:
        row[f"hit_rate_{source}"] = run.hit_rate(source)
    for metric in METRICS:
        row[metric] = _num(s.get(metric))
    return row


def summary_table(runs: list[ReportRun], baseline: ReportRun | None = None) -> pd.DataFrame:
    rows = [summary_row(r) for r in ordered_runs(runs)]
    df = pd.DataFrame(rows)
    for column in INT_COLUMNS:
        if column in df:
            df[column] = pd.array(df[column].tolist(), dtype="Int64")
    if baseline is None or df.empty:
        return df
    base = summary_row(baseline)
    same = df["workload_id"] == baseline.workload_key
    for column, metric, _ in RATIOS:
        ref = base.get(metric)
        values = pd.to_numeric(df[metric], errors="coerce")
        if ref is None or ref == 0:
            df[column] = float("nan")
        else:
            df[column] = (values / ref).where(same)
    df["baseline"] = df["run"] == baseline.name
    return df


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None
    if hasattr(value, "item"):  # numpy scalar
        return _jsonable(value.item())
    return value


def to_json(df: pd.DataFrame) -> str:
    records = [{k: _jsonable(v) for k, v in rec.items()} for rec in df.to_dict(orient="records")]
    return json.dumps({"runs": records}, indent=2, ensure_ascii=False) + "\n"


def to_csv(df: pd.DataFrame) -> str:
    return df.to_csv(index=False, lineterminator="\n")
