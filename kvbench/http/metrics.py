"""Prometheus /metrics scraping: the server's own view of prefix-cache hits, cache size and TTFT.

Only the text exposition format is parsed (every OpenAI-compatible server we target speaks it). Series of
one metric name are summed over their labels (vLLM labels by engine and model), so a worker with several
engines still yields one number per metric.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass, field
from typing import Any

import aiohttp

PREFIX_QUERIES = "vllm:prefix_cache_queries_total"
PREFIX_HITS = "vllm:prefix_cache_hits_total"
KV_USAGE = "vllm:kv_cache_usage_perc"
CACHE_CONFIG = "vllm:cache_config_info"
TTFT_SUM = "vllm:time_to_first_token_seconds_sum"
TTFT_COUNT = "vllm:time_to_first_token_seconds_count"
REQUEST_SUCCESS = "vllm:request_success_total"
PREEMPTIONS = "vllm:num_preemptions_total"

# SGLang (--enable-metrics) counts every prompt token and the cached ones (summed over its cache_source
# label: device, host, storage), and times TTFT under its own prefix.
SGL_PROMPT = "sglang:prompt_tokens_total"
SGL_CACHED = "sglang:cached_tokens_total"
TTFT_HISTOGRAMS = ("vllm:time_to_first_token_seconds", "sglang:time_to_first_token_seconds")

# The counters and gauges recorded before and after a run (others are parsed but not kept).
KEPT = (PREFIX_QUERIES, PREFIX_HITS, KV_USAGE, TTFT_SUM, TTFT_COUNT, REQUEST_SUCCESS, PREEMPTIONS,
        "vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:prompt_tokens_total",
        "vllm:generation_tokens_total",
        SGL_PROMPT, SGL_CACHED, "sglang:time_to_first_token_seconds_sum", "sglang:time_to_first_token_seconds_count",
        "sglang:num_running_reqs", "sglang:num_queue_reqs", "sglang:token_usage", "sglang:generation_tokens_total")

@dataclass
class Sample:
    name: str
    labels: dict[str, str]
    value: float


def _samples(text: str) -> list[Sample]:
    from prometheus_client.parser import text_string_to_metric_families

    return [Sample(s.name, dict(s.labels), float(s.value))
            for family in text_string_to_metric_families(text) for s in family.samples]


def parse_prometheus(text: str) -> list[Sample]:
    """Samples of a text exposition, parsed by prometheus_client (label escapes, exemplars, comments).

    A text that does not parse as a whole is read line by line, skipping the lines that do not parse:
    one odd line from a server must not hide the counters around it.
    """
    try:
        return _samples(text)
    except ValueError:
        out: list[Sample] = []
        for line in text.splitlines():
            try:
                out.extend(_samples(line + "\n"))
            except ValueError:
                continue
        return out


@dataclass
class MetricsSnapshot:
    """What one scrape of one worker told us; ``error`` says why there is nothing."""

    url: str
    values: dict[str, float] = field(default_factory=dict)  # summed over label sets
    cache_config: dict[str, str] = field(default_factory=dict)  # labels of vllm:cache_config_info
    error: str | None = None
    series: dict[str, int] = field(default_factory=dict)  # label sets summed into each value (engines)

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def block_size(self) -> int | None:
        return int_or_none(self.cache_config.get("block_size"))

    @property
    def num_blocks(self) -> int | None:
        return int_or_none(self.cache_config.get("num_gpu_blocks"))

    def to_json(self) -> dict[str, Any]:
        return {"url": self.url, "values": self.values, "cache_config": self.cache_config, "error": self.error}

    @classmethod
    def from_text(cls, url: str, text: str) -> MetricsSnapshot:
        snap = cls(url=url)
        for s in parse_prometheus(text):
            if s.name == CACHE_CONFIG:
                snap.cache_config = snap.cache_config or dict(s.labels)  # the first, as parse_cache_config
            elif s.name in KEPT and math.isfinite(s.value):
                snap.values[s.name] = snap.values.get(s.name, 0.0) + s.value
                snap.series[s.name] = snap.series.get(s.name, 0) + 1
        return snap


def parse_cache_config(text: str) -> dict[str, str]:
    """Labels of ``vllm:cache_config_info`` in a /metrics text ({} if absent)."""
    return next((s.labels for s in parse_prometheus(text) if s.name == CACHE_CONFIG), {})


def choose_block_size(snaps: list[MetricsSnapshot], fallbacks: list[tuple[int | None, str]]) -> tuple[int, str]:
    """(block size, where it came from) for hashing what the servers cache: a server's own block size when
    its /metrics reports one, else the first given ``(value, source)`` fallback that is set."""
    for s in snaps:
        if s.block_size:
            return s.block_size, "server /metrics cache_config_info"
    for value, source in fallbacks:
        if value:
            return int(value), source
    raise ValueError("choose_block_size: no server block size and no fallback given")


def server_num_blocks(snaps: list[MetricsSnapshot]) -> int | None:
    """KV-cache capacity in blocks of the first server that reports it."""
    return next((s.num_blocks for s in snaps if s.num_blocks), None)


def int_or_none(v: str | None) -> int | None:
    try:
        return int(float(v)) if v not in (None, "", "None") else None
    except ValueError:
        return None


async def scrape(session: aiohttp.ClientSession, url: str, timeout_s: float = 10.0,
                 parse_in_thread: bool = False) -> MetricsSnapshot:
    """Never raises: a worker without /metrics still gets replayed, just without server counters.

    ``parse_in_thread`` parses off the event loop, so scrapes during a run do not delay its requests."""
    try:
        async with session.get(f"{url}/metrics", timeout=aiohttp.ClientTimeout(total=timeout_s)) as resp:
            if resp.status != 200:
                return MetricsSnapshot(url=url, error=f"GET /metrics answered HTTP {resp.status}")
            text = await resp.text()
        if parse_in_thread:
            return await asyncio.to_thread(MetricsSnapshot.from_text, url, text)
        return MetricsSnapshot.from_text(url, text)
    except (aiohttp.ClientError, TimeoutError) as exc:
        return MetricsSnapshot(url=url, error=f"GET /metrics failed: {type(exc).__name__}: {exc}".rstrip(": "))


def delta(before: MetricsSnapshot, after: MetricsSnapshot, name: str) -> float | None:
    if not (before.ok and after.ok) or name not in before.values or name not in after.values:
        return None
    return after.values[name] - before.values[name]


def counter_hit_rate(pairs: list[tuple[MetricsSnapshot, MetricsSnapshot]]) -> dict[str, float | None]:
    """Run hit rate from prefix-cache counter deltas summed over workers (None if any worker lacks them):
    vLLM's prefix-cache hits / queries, or SGLang's cached / prompt tokens."""
    hits = queries = 0.0
    for before, after in pairs:
        h, q = delta(before, after, PREFIX_HITS), delta(before, after, PREFIX_QUERIES)
        if h is None or q is None:
            h, q = delta(before, after, SGL_CACHED), delta(before, after, SGL_PROMPT)
        if h is None or q is None:
            return {"hits": None, "queries": None, "hit_rate": None}
        hits += h
        queries += q
    return {"hits": hits, "queries": queries, "hit_rate": hits / queries if queries else None}


def histogram_mean_delta(before: MetricsSnapshot, after: MetricsSnapshot, base: str) -> float | None:
    """Mean of the observations a histogram received between two scrapes."""
    s, c = delta(before, after, f"{base}_sum"), delta(before, after, f"{base}_count")
    if s is None or not c:
        return None
    return s / c


def server_ttft_mean(before: MetricsSnapshot, after: MetricsSnapshot) -> float | None:
    """The server's own mean TTFT over a run, from whichever server family's histogram it exports."""
    for base in TTFT_HISTOGRAMS:
        value = histogram_mean_delta(before, after, base)
        if value is not None:
            return value
    return None
