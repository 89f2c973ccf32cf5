"""What a run leaves behind: one result row per request, and run.json saying what ran.

Both backends build their rows here (one set of latency formulas), and run.json's top level is the
:class:`~kvbench.resolve.Resolved` configuration the backend really ran, not the flags as typed. run.json is
built as a :data:`RunRecord`, the model docs/schemas/run.json is written from, so the published schema is
what is written.
"""

from __future__ import annotations

import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, create_model

from kvbench.plan import ReplayPlan
from kvbench.resolve import Resolved
from kvbench.spec import ReplaySpec


@dataclass
class BackendResult:
    """What a backend hands back: rows in the result schema, worker names, extra config and hit rates."""

    rows: pd.DataFrame
    workers: list[str]
    resolved: Resolved  # what ran: on a real target, with the servers' block size and model
    config: dict[str, Any] = field(default_factory=dict)
    hit_rates: dict[str, float | None] = field(default_factory=dict)
    interrupted: bool = False
    timeline: pd.DataFrame | None = None  # --scrape-interval: rows of kvbench.timeline.TIMELINE_SCHEMA

    @property
    def block_size(self) -> int:
        return self.resolved.block_size


def _nan(v: float | None) -> float:
    return np.nan if v is None else v


class RowRecorder:
    """One row per replayed request (keyed by its row in ``plan.trace``), each ``cancelled`` until recorded,
    so a run cut short still accounts for every request."""

    def __init__(self, plan: ReplayPlan) -> None:
        df = plan.trace.df
        self.rows: list[dict[str, Any]] = []
        for i, (rid, sid, turn, group, inp) in enumerate(zip(
                df["request_id"], df["session_id"], df["turn"], df["group_id"], df["input_tokens"])):
            self.rows.append({
                "request_id": str(rid), "session_id": None if pd.isna(sid) else str(sid), "turn": int(turn),
                "group_id": None if pd.isna(group) else group, "worker": -1, "arrival_s": np.nan,
                "sent_s": np.nan, "first_token_s": np.nan, "done_s": np.nan, "ttft_s": np.nan, "e2e_s": np.nan,
                "tpot_s": np.nan, "itl_s": None, "input_tokens": int(inp), "output_tokens": 0,
                "cached_tokens": None, "status": "cancelled", "error": "not sent (run interrupted)",
                "warmup": bool(plan.warm[i])})

    def record(self, i: int, *, worker: int, status: str, error: str | None, sent_s: float | None,
               first_token_s: float | None, done_s: float | None, output_tokens: int,
               token_times: list[float] | np.ndarray = (), cached_tokens: int | None = None,
               input_tokens: int | None = None, arrival_s: float | None = None) -> None:
        """Latencies count from the send, as ``vllm bench serve`` times them; TPOT over the tokens after the
        first. Times are seconds from the run's start."""
        row = self.rows[i]
        ok = status == "ok"
        if arrival_s is not None:
            row["arrival_s"] = arrival_s
        if input_tokens is not None:
            row["input_tokens"] = int(input_tokens)
        row.update(worker=worker, status=status, error=error, sent_s=_nan(sent_s),
                   first_token_s=_nan(first_token_s), done_s=_nan(done_s), output_tokens=int(output_tokens),
                   cached_tokens=cached_tokens)
        if not ok:
            return
        if sent_s is not None:
            row["ttft_s"] = _nan(None if first_token_s is None else first_token_s - sent_s)
            row["e2e_s"] = _nan(None if done_s is None else done_s - sent_s)
        if output_tokens > 1 and first_token_s is not None and done_s is not None:
            row["tpot_s"] = (done_s - first_token_s) / (output_tokens - 1)
        row["itl_s"] = np.diff(np.asarray(token_times, dtype=float)).tolist() if len(token_times) > 1 else []

    def frame(self, order: np.ndarray | None = None) -> pd.DataFrame:
        """The rows (in ``order`` of trace rows, if given) as the result schema's frame."""
        rows = self.rows if order is None else [self.rows[i] for i in order.tolist()]
        df = pd.DataFrame(rows)
        df["cached_tokens"] = pd.array(df["cached_tokens"], dtype="Int64")
        return df


def check_output(out: Path) -> None:
    """Refuse a foreign directory and create the output directory now, so a bad path fails before the run."""
    from kvbench.errors import fail

    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / "run.json").exists()
                                              and not (out / "requests.parquet").exists())):
        raise fail(f"-o {out}: exists and is not a kvbench result directory; choose a new output path")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise fail(f"-o {out}: cannot create the result directory ({exc.strerror or exc})") from None


def ideal(plan: ReplayPlan, block_size: int) -> tuple[float | None, str | None]:
    """The trace's ideal hit rate at the block size the run used, or why it cannot be computed."""
    from kvbench.trace import ideal_hit_rate

    if block_size % plan.trace.block_size:
        return None, (f"ideal hit rate not computed: the block size used ({block_size}) is not a multiple of "
                      f"the trace's ({plan.trace.block_size})")
    return ideal_hit_rate(plan.trace, block_size, plan.warm), None


class TraceFile(BaseModel):
    """run.json ``trace_file``: which trace was replayed, down to its bytes."""

    model_config = ConfigDict(extra="forbid")
    path: str
    meta: dict[str, Any] = Field(description="The trace's metadata (kvbench.trace.TraceMeta, docs/trace-format.md).")
    requests: int = Field(description="Requests in the trace file (before --max-requests).")
    sha256: str | None = Field(description="The trace file's sha256; null when the file was not on disk.")


class _RunTop(BaseModel):
    """run.json's keys besides the replay spec's: what ran, on what, and its summary. Optional keys are
    written only when they apply (absent, not null)."""

    model_config = ConfigDict(extra="forbid")
    result_format_version: str
    block_size: int = Field(description="What caches and routers blocked by (on a real target, the servers' own).")
    block_size_source: str = Field(description="Where block_size came from: --block-size, a cluster.json or "
                                               "the servers' /metrics.")
    requested_block_size: int | None = Field(None, description="--block-size, when what ran differs from it.")
    model: str | None = Field(None, description="Real target: the model sent to the servers.")
    cluster_eviction: str | None = Field(None, description="Real target: the policy its cluster.json says it runs.")
    name: str
    trace_file: TraceFile
    workers: list[str]
    versions: dict[str, str]
    backend: Literal["sim", "http"]
    backend_config: dict[str, Any] = Field(description="Backend-specific detail (simulator state, HTTP hygiene, "
                                                       "latency profile...); not compared across backends.")
    interrupted: bool = Field(description="Ctrl-C cut the run short; unsent requests are rows with status "
                                          "cancelled.")
    summary: dict[str, Any] = Field(description=(
        "kvbench.results.compute_summary over the measured (non-warm-up) requests, named like vllm bench "
        "serve: num_requests, warmup_requests, completed, failed, cancelled, total_input_tokens, "
        "total_output_tokens, duration, request/input/output/total_token_throughput, {mean,median,std,p50,"
        "p90,p95,p99}_{ttft,tpot,e2el,itl}_ms, hit_rate, hit_rates, requests_per_worker, tokens_per_worker, "
        "requests_cv, tokens_cv; with --goodput also goodput_slo_ms, good_requests, request_goodput, "
        "slo_attainment, goodput_attainment. NaN is written as null."))
    ideal_block_size: int = Field(description="The block size the ideal hit rate (summary.hit_rates.ideal) used.")
    ideal_note: str | None = Field(None, description="Why the ideal hit rate was not computed, when it was not.")


def _spec_fields() -> dict[str, Any]:
    """The replay spec's fields as run.json holds them (ReplaySpec.to_config), taken from ReplaySpec itself so
    that a new spec field is a new run.json key without a second list to update."""
    hints = typing.get_type_hints(ReplaySpec)
    as_written: dict[str, Any] = {"trace": str, "output": str, "eviction": str, "api_key": Literal["<set>"] | None,
                                  "headers": dict[str, Literal["<redacted>"]]}
    return {f.name: (as_written.get(f.name, hints[f.name]), ...) for f in fields(ReplaySpec)
            if f.name != "progress" and f.name not in _RunTop.model_fields}


RunRecord = create_model("RunRecord", __base__=_RunTop, __doc__=(
    "run.json: the replay spec as it ran (header values and the API key redacted), then what ran it and the "
    "summary."), **_spec_fields())


def run_config(plan: ReplayPlan, result: BackendResult, summary: dict[str, Any]) -> dict[str, Any]:
    """Everything needed to reproduce and compare the run; no wall-clock values, so equal seeds give equal
    files. The top level is what ran (``result.resolved``)."""
    from kvbench.fsutil import staged
    from kvbench.results import versions
    from kvbench.trace import file_sha256

    resolved = result.resolved
    spec = resolved.spec
    trace = plan.trace
    trace_info: dict[str, Any] = {"path": str(spec.trace), "meta": asdict(trace.meta), "requests": len(trace)}
    local = staged(spec.trace)
    trace_info["sha256"] = file_sha256(local) if local.exists() else None
    return {
        **resolved.to_config(),
        "name": spec.name or Path(spec.output).name,
        "trace_file": trace_info,
        "workers": list(result.workers),
        "versions": versions(),
        "backend": "sim" if spec.is_sim else "http",
        "backend_config": result.config,
        "interrupted": bool(result.interrupted),
        "summary": summary,
    }


def write_record(out: Path, plan: ReplayPlan, result: BackendResult) -> None:
    """requests.parquet + run.json (+ timeline.parquet) for one finished or interrupted run."""
    from kvbench.results import RESULT_FORMAT_VERSION, compute_summary, write_run

    bs = result.resolved.block_size
    ideal_rate, note = ideal(plan, bs)
    extra: dict[str, float | None] = {"ideal": ideal_rate, "server_counters": None, "cache_counters": None}
    extra.update(result.hit_rates)
    rows = result.rows.reset_index(drop=True)
    summary = compute_summary(rows, len(result.workers), extra, result.resolved.spec.goodput)
    config = run_config(plan, result, summary)
    config["ideal_block_size"] = bs
    if note:
        config["ideal_note"] = note
    record = RunRecord.model_validate({"result_format_version": RESULT_FORMAT_VERSION, **config})
    write_run(out, rows, record.model_dump(exclude_unset=True), timeline=result.timeline)
