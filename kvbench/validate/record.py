"""fidelity.json: the typed record `kvbench validate` writes and `kvbench report` reads.

Every model forbids unknown fields, so a file from another version fails to load with an error that names
the field instead of being half-read. ``version`` changes whenever a field changes meaning.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from kvbench.errors import fail

FIDELITY_FILE = "fidelity.json"
FIDELITY_CSV = "fidelity.csv"
KIND = "kvbench-fidelity"
VERSION = 1

# metric key in fidelity.json -> (summary key in run.json, fallback summary key, label, higher is better)
METRICS: dict[str, tuple[str, str | None, str, bool]] = {
    "hit_rate": ("hit_rate", None, "hit rate", True),
    "mean_ttft_ms": ("mean_ttft_ms", None, "mean TTFT (ms)", False),
    "ttft_p50_ms": ("p50_ttft_ms", "median_ttft_ms", "TTFT p50 (ms)", False),
    "ttft_p90_ms": ("p90_ttft_ms", None, "TTFT p90 (ms)", False),
    "ttft_p99_ms": ("p99_ttft_ms", None, "TTFT p99 (ms)", False),
    "request_throughput": ("request_throughput", None, "requests/s", True),
}
RANKED = ("hit_rate", "mean_ttft_ms")  # the metrics whose orders over combinations are compared
RankedMetric = Literal["hit_rate", "mean_ttft_ms"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RealStats(_Model):
    """One metric over the complete real repeats (sample std: n - 1 in the denominator, 0 for one repeat)."""

    values: list[float | None]
    n: int
    mean: float | None
    min: float | None
    max: float | None
    std: float | None


class MetricFidelity(_Model):
    real: RealStats
    sim: float | None
    difference: float | None  # sim - real mean
    ratio: float | None  # sim / real mean
    sim_in_real_range: bool | None  # real min <= sim <= real max


class CombinationFidelity(_Model):
    label: str  # <eviction>-<router>, the directory name under real/ and sim/
    router: str
    eviction: str  # what the real cluster runs ('vllm' = the server's own)
    sim_eviction: str  # the kvbench.cache policy the simulator ran for it
    target: str  # the cluster file or URLs
    repeats: int  # complete real repeats the statistics use
    real_runs: list[str]  # run directories, relative to the validation directory
    sim_run: str | None
    real_failed: list[int]  # failed requests per real repeat
    sim_failed: int | None
    # where the router sent the requests: a load-aware router that routes differently in the simulator
    # (its latencies differ) explains a hit-rate gap
    real_requests_per_worker: list[list[int]]
    sim_requests_per_worker: list[int] | None
    metrics: dict[str, MetricFidelity]  # keys of METRICS
    hit_rate_tolerance: float | None  # max(0.02, real hit-rate range)
    hit_rate_within: bool | None  # |sim - real mean| <= tolerance

    @field_validator("metrics")
    @classmethod
    def _every_metric(cls, value: dict[str, MetricFidelity]) -> dict[str, MetricFidelity]:
        if set(value) != set(METRICS):
            raise ValueError(f"needs exactly the metrics {', '.join(METRICS)}")
        return value


class Ranking(_Model):
    """Do the real means and the simulator order the combinations alike on one metric?"""

    metric: RankedMetric
    higher_is_better: bool
    combinations: list[str]  # those with both a real mean and a simulated value
    real_mean: list[float]
    sim: list[float]
    kendall_tau_b: float | None  # None: fewer than two combinations, or one side all equal
    resolved_pairs: int  # pairs whose real ranges do not overlap (every repeat agrees on their order)
    discordant_resolved_pairs: int  # of those, the pairs the simulator orders the other way (or ties)
    agrees: bool | None  # no discordant resolved pair; None when no pair is resolved


class EvictionOrder(_Model):
    """Under one router: do the eviction policies rank the same in real runs and in the simulator?"""

    router: str
    metric: RankedMetric
    evictions: list[str]
    real_mean: list[float]  # aligned with evictions
    sim: list[float]
    real_order: list[str]  # best first, by real mean (equal values by name: see order_text for ties)
    sim_order: list[str]  # best first
    kendall_tau_b: float | None
    resolved_pairs: int
    discordant_resolved_pairs: int
    agrees: bool | None


class Setting(_Model):
    value: Any
    source: str  # where it came from: server /metrics or /server_info, the cluster file, a flag, a default


class TargetConfig(_Model):
    target: str
    urls: list[str]
    model: str | None
    eviction: str  # as the real cluster runs it
    sim_eviction: str
    eviction_note: str | None  # how a server's own eviction maps onto a kvbench policy
    eviction_params: dict[str, Any]
    workers: int
    block_size: Setting
    num_gpu_blocks: int | None  # as vLLM reports it: includes its null block
    cache_tokens: Setting  # the simulator's --cache-tokens: the server's KV size, null block included
    max_num_seqs: Setting
    max_batched_tokens: Setting
    chunked_prefill: Setting


class ValidateConfig(_Model):
    trace: str
    trace_sha256: str | None
    routers: list[str]
    router_params: dict[str, Any]
    repeats: int
    seed: int
    profile: Setting
    time_scale: float
    max_requests: int | None
    warmup: int = 0  # records written before --warmup existed have none
    history: str
    api: str
    targets: list[TargetConfig]


class Verdict(_Model):
    """Booleans of the record; None where nothing could be judged (see docs/simulator.md)."""

    hit_rates_within: bool | None  # every combination's simulated hit rate within its tolerance
    hit_rate_ranking_agrees: bool | None
    ttft_ranking_agrees: bool | None
    eviction_order_agrees: bool | None  # under every router, on both ranked metrics
    trusted: bool | None  # all of the above that could be judged are true


class FidelityRecord(_Model):
    kind: Literal["kvbench-fidelity"] = KIND
    version: Literal[1] = VERSION
    complete: bool  # every planned run finished
    interrupted: bool
    config: ValidateConfig
    combinations: list[CombinationFidelity]
    rankings: list[Ranking]
    eviction_orders: list[EvictionOrder]
    verdict: Verdict
    notes: list[str]
    versions: dict[str, str]

    def to_json_text(self) -> str:
        return json.dumps(self.model_dump(mode="json"), indent=2, sort_keys=True) + "\n"


def load_record(path: Path) -> FidelityRecord:
    """Read and check a fidelity.json; one line naming the file and the first bad field otherwise."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise fail(f"{path}: cannot read ({exc.strerror or exc})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise fail(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict) or data.get("kind") != KIND:
        raise fail(f"{path}: not a kvbench fidelity record (no \"kind\": \"{KIND}\")")
    try:
        return FidelityRecord.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        raise fail(f"{path}: field {where}: {err['msg']}; re-run `kvbench validate`") from None


# --- CSV ----------------------------------------------------------------------------------------------
def csv_rows(record: FidelityRecord) -> list[dict[str, Any]]:
    """One row per combination: real mean / min / max / std, sim, difference and ratio of every metric."""
    rows = []
    for c in record.combinations:
        row: dict[str, Any] = {"combination": c.label, "router": c.router, "eviction": c.eviction,
                               "sim_eviction": c.sim_eviction, "target": c.target, "repeats": c.repeats}
        for key, m in c.metrics.items():
            row.update({f"real_{key}_mean": m.real.mean, f"real_{key}_min": m.real.min,
                        f"real_{key}_max": m.real.max, f"real_{key}_std": m.real.std, f"sim_{key}": m.sim,
                        f"{key}_difference": m.difference, f"{key}_ratio": m.ratio,
                        f"{key}_sim_in_real_range": m.sim_in_real_range})
        row["hit_rate_tolerance"] = c.hit_rate_tolerance
        row["hit_rate_within"] = c.hit_rate_within
        rows.append(row)
    return rows


def to_csv(record: FidelityRecord) -> str:
    import csv
    import io

    rows = csv_rows(record)
    buf = io.StringIO()
    columns = list(rows[0]) if rows else ["combination"]
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if v is None else v for k, v in row.items()})
    return buf.getvalue()
