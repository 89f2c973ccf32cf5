"""What the report knows about one run, derived from a result directory once.

run.json is written by several backends and grows over time, so every field here is read tolerantly:
a missing key gives ``None`` and the report shows "n/a" instead of failing.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from kvbench.results import RunResult, compute_summary, warmup_rows

# Trace generator parameters that set the arrival rate: runs that differ only in them share a workload,
# so a rate sweep is drawn as one line per combination instead of one workload per rate.
RATE_PARAMS = ("rate", "request_rate", "arrival_rate", "qps")
# Seeds draw replicates of one workload (kvbench run repeats every combination over several seeds).
_SHAPE_SKIP = (*RATE_PARAMS, "seed")
# Generator parameters too noisy to name a workload in a heading (they still tell workloads apart).
_LABEL_SKIP = {"seed", "tokenizer", "block_size", "prompt_text", "token_ids", "resolved", "arrival", "burstiness"}
HIT_RATE_SOURCES = ("requests", "server_counters", "cache_counters", "ideal")


@dataclass(frozen=True)
class Combination:
    """An eviction x routing pair: the unit that keeps one colour in every chart."""

    eviction: str
    router: str

    @property
    def label(self) -> str:
        return f"{self.eviction} × {self.router}"


@dataclass
class ReportRun:
    name: str
    path: Path
    config: dict[str, Any]
    requests: pd.DataFrame  # the measured rows: warm-up rows (--warmup) are in no chart, as in no summary
    summary: dict[str, Any]
    workload_key: str
    workload_label: str
    combination: Combination
    target_kind: str  # "sim" | "http"
    n_workers: int | None
    worker_names: list[str]
    cache_tokens: int | None
    request_rate: float | None  # effective: the trace's rate / time_scale, when the trace names one
    time_scale: float | None
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> pd.DataFrame:
        return self.requests[self.requests["status"] == "ok"]

    @property
    def n_failed(self) -> int:
        return int((self.requests["status"] != "ok").sum())

    def hit_rate(self, source: str | None = None) -> float | None:
        rates = self.summary.get("hit_rates") or {}
        if source is None:
            value = self.summary.get("hit_rate")
            if value is None:
                value = next((rates.get(s) for s in HIT_RATE_SOURCES if rates.get(s) is not None), None)
            return _num(value)
        return _num(rates.get(source))


def _num(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(out) else out


def _trace_info(config: dict[str, Any]) -> tuple[str | None, str | None, dict[str, Any]]:
    """(path, sha256, meta) from ``trace_file`` (what `kvbench replay` writes), a dict-valued ``trace``,
    or a bare ``trace`` path."""
    for key in ("trace_file", "trace"):
        info = config.get(key)
        if isinstance(info, dict):
            meta = info.get("meta") if isinstance(info.get("meta"), dict) else {}
            path = info.get("path", config.get("trace") if key == "trace_file" else None)
            return (str(path) if path is not None else None), info.get("sha256"), meta
    trace = config.get("trace")
    return (str(trace) if trace is not None else None), None, {}


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, default=str) if isinstance(value, (dict, list)) else str(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _without_rate(value: Any) -> Any:
    """Generator parameters minus the arrival rate and seed, at any depth (generators also record resolved
    values)."""
    if isinstance(value, dict):
        return {k: _without_rate(v) for k, v in value.items() if k not in _SHAPE_SKIP}
    return value


def workload_identity(config: dict[str, Any]) -> tuple[str, str]:
    """(key, label): runs with equal keys replay the same kind of requests (up to arrival rate and seed)."""
    path, sha, meta = _trace_info(config)
    generator = meta.get("generator")
    params = meta.get("params") if isinstance(meta.get("params"), dict) else {}
    if generator:
        shape = _without_rate(params)
        key_src = json.dumps({"generator": generator, "params": shape}, sort_keys=True, default=str)
        shown = [f"{k}={_short(v)}" for k, v in sorted(shape.items())
                 if k not in _LABEL_SKIP and v is not None and not isinstance(v, (dict, list))][:6]
        label = " ".join([str(generator), *shown])
    elif sha:
        key_src = f"sha256:{sha}"
        label = f"{Path(path).name if path else 'trace'} ({str(sha)[:10]})"
    elif path:
        key_src = f"path:{path}"
        label = Path(path).name
    else:
        key_src = "unknown"
        label = "unknown workload"
    if config.get("max_requests") is not None:
        key_src += f"|max_requests={config.get('max_requests')}"
        label += f" (first {config.get('max_requests')} requests)"
    if config.get("warmup"):  # another warm-up measures other requests on a differently warmed cache
        key_src += f"|warmup={config.get('warmup')}"
        label += f" (after a warm-up of {config.get('warmup')} requests)"
    return hashlib.sha256(key_src.encode()).hexdigest()[:12], label


def workload_description(config: dict[str, Any]) -> str:
    """The generator's own sentence about the trace, when it wrote one."""
    _, _, meta = _trace_info(config)
    source = meta.get("source")
    return str(source) if source else ""


def _request_rate(config: dict[str, Any], time_scale: float | None) -> float | None:
    _, _, meta = _trace_info(config)
    params = meta.get("params") if isinstance(meta.get("params"), dict) else {}
    resolved = params.get("resolved") if isinstance(params.get("resolved"), dict) else {}
    arrival = resolved.get("arrival") if isinstance(resolved.get("arrival"), dict) else {}
    for source in (params, arrival):
        for key in RATE_PARAMS:
            rate = _num(source.get(key))
            if rate is not None:
                return rate / time_scale if time_scale else rate
    return None


def _workers(config: dict[str, Any], requests: pd.DataFrame) -> tuple[int | None, list[str]]:
    workers = config.get("workers")
    if isinstance(workers, list):
        return len(workers), [str(w) for w in workers]
    if isinstance(workers, int) and not isinstance(workers, bool):
        return workers, [f"worker {i}" for i in range(workers)]
    seen = requests["worker"].dropna()
    seen = seen[seen >= 0]
    if len(seen):
        n = int(seen.max()) + 1
        return n, [f"worker {i}" for i in range(n)]
    return None, []


def _target_kind(target: Any) -> str:
    if target is None or target == "sim":
        return "sim"
    return "http"


def report_run(result: RunResult, name: str | None = None) -> ReportRun:
    config = result.config if isinstance(result.config, dict) else {}
    df = result.requests
    n_workers, names = _workers(config, df)
    notes: list[str] = []
    summary = config.get("summary")
    if not isinstance(summary, dict) or not summary:
        summary = compute_summary(df, n_workers or 0)
        notes.append("run.json has no summary; computed from requests.parquet")
    if config.get("interrupted"):
        notes.append("interrupted (Ctrl-C): the run stopped early; unfinished requests are 'cancelled'")
    df = df[~warmup_rows(df)]  # the workload's label says a warm-up ran
    backend = config.get("backend_config")
    simulator = backend.get("simulator") if isinstance(backend, dict) else None
    if isinstance(simulator, dict) and isinstance(simulator.get("belady_note"), str):
        notes.append(simulator["belady_note"])  # what the offline number bounds in this run
    key, label = workload_identity(config)
    time_scale = _num(config.get("time_scale"))
    cache = config.get("cache_tokens")
    return ReportRun(
        name=name or result.name,
        path=result.path,
        config=config,
        requests=df,
        summary=summary,
        workload_key=key,
        workload_label=label,
        combination=Combination(str(config.get("eviction") or "?"), str(config.get("router") or "?")),
        target_kind=_target_kind(config.get("target", "sim")),
        n_workers=n_workers,
        worker_names=names,
        cache_tokens=int(cache) if isinstance(cache, (int, float)) and not isinstance(cache, bool) else None,
        request_rate=_request_rate(config, time_scale),
        time_scale=time_scale,
        notes=notes,
    )
