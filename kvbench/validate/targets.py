"""Configure the simulator like each real cluster: ask the servers, read the cluster file, fall back to flags.

Every value the simulator gets is recorded with where it came from (a :class:`Setting`). Sources, first
found wins:

- block size: the servers' ``vllm:cache_config_info`` (/metrics), the cluster file, ``--block-size``;
- KV capacity per worker (the server's whole KV size, null block included, as ``--cache-tokens`` takes it):
  ``num_gpu_blocks`` of ``vllm:cache_config_info``, the cluster file, ``--cache-tokens``;
- ``max_num_seqs`` / ``max_num_batched_tokens`` / chunked prefill: the cluster file if it records them, the
  servers' ``GET /server_info?config_format=json`` (vLLM serves it with ``VLLM_SERVER_DEV_MODE=1``, which
  ``kvbench cluster up`` sets), the flags, the simulator's defaults.

A flag that contradicts what the cluster reports is refused: the point is to simulate the cluster as it is.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from kvbench.errors import fail
from kvbench.http import metrics
from kvbench.http.targets import Target, parse_target
from kvbench.resolve import SERVER_EVICTION
from kvbench.spec import ReplaySpec
from kvbench.validate.record import Setting, TargetConfig

# vLLM's own eviction, as the simulator models it (tests/real_vllm/test_plugin_fidelity.py checks that the
# cached tokens of every request agree between a plain vLLM and `--target sim --eviction lru`).
SIM_EVICTION_FOR_SERVER = "lru"
SERVER_EVICTION_NOTE = (f"'{SERVER_EVICTION}' (the servers' own eviction, no kvbench plugin) is simulated as "
                        f"'{SIM_EVICTION_FOR_SERVER}': vLLM's free-block queue evicts the least recently "
                        "freed block first, a freed request's tail blocks first: kvbench's lru order")
TINY_PROFILE = "cpu-tiny-llama"
# The shape of `kvbench model tiny` the shipped cpu-tiny-llama profile was measured on.
TINY_SHAPE = {"kind": "tiny-llama", "hidden": 128, "layers": 2, "heads": 4}
PROBE_TIMEOUT_S = 10.0
_SPEC_DEFAULTS = ReplaySpec(trace=Path("-"), output=Path("-"))


@dataclass
class Flags:
    """Command-line values used only where the cluster says nothing (and refused where it disagrees)."""

    cache_tokens: int | None = None
    block_size: int | None = None
    max_num_seqs: int | None = None
    max_batched_tokens: int | None = None
    model: str | None = None


@dataclass
class ServerReport:
    """What one target's servers said about themselves."""

    target: Target
    model: str  # the model name requests are sent with
    snapshots: list[metrics.MetricsSnapshot]
    server_info: list[dict[str, Any]]  # per worker: {"scheduler_config": {...}} or {} when not served


def split_targets(text: str) -> list[str]:
    """``--target``: the comma-separated URLs of one cluster, or cluster files (one per policy)."""
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise fail("--target is empty; give a cluster.json (several, comma-separated, to compare eviction "
                   "policies) or comma-separated worker URLs")
    urls = [t for t in items if "://" in t]
    if urls and len(urls) != len(items):
        raise fail(f"--target {text}: mixes URLs and cluster files; give the URLs of one cluster, or one "
                   "cluster file per eviction policy")
    if urls:
        return [",".join(items)]
    if len(set(items)) != len(items):
        raise fail(f"--target {text}: a cluster file is repeated")
    return items


async def _server_info(session: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    """vLLM's scheduler settings from ``/server_info`` ({} when the server does not serve it)."""
    try:
        async with session.get(f"{url}/server_info", params={"config_format": "json"},
                               timeout=aiohttp.ClientTimeout(total=PROBE_TIMEOUT_S)) as resp:
            if resp.status != 200:
                return {}
            data = await resp.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return {}
    config = data.get("vllm_config") if isinstance(data, dict) else None
    sched = config.get("scheduler_config") if isinstance(config, dict) else None
    return {"scheduler_config": sched} if isinstance(sched, dict) else {}


async def _probe(target: Target, model: str | None) -> ServerReport:
    from kvbench.http.replay import preflight

    async with aiohttp.ClientSession() as session:
        pre = await preflight(session, target, model)  # one line naming every unreachable worker
        snaps = await asyncio.gather(*(metrics.scrape(session, u, PROBE_TIMEOUT_S) for u in target.urls))
        infos = await asyncio.gather(*(_server_info(session, u) for u in target.urls))
    return ServerReport(target=target, model=pre.model, snapshots=list(snaps), server_info=list(infos))


def probe_targets(targets: list[Target], model: str | None) -> list[ServerReport]:
    async def all_of() -> list[ServerReport]:
        return list(await asyncio.gather(*(_probe(t, model) for t in targets)))

    return asyncio.run(all_of())


def _one(values: list[Any], what: str, where: str) -> Any:
    """The single value every worker reports (None if none does); workers that disagree are refused."""
    seen = [v for v in values if v is not None]
    if len(set(map(str, seen))) > 1:
        shown = ", ".join(sorted(set(map(str, seen))))
        raise fail(f"{where}: the workers report different {what} ({shown}); the simulator gives every "
                   "worker the same; start the cluster with one setting")
    return seen[0] if seen else None


def _recorded(cluster: dict[str, Any], key: str) -> Any:
    """A value the cluster file records at its top level or, the same for all, on its workers."""
    if cluster.get(key) is not None:
        return cluster[key]
    workers = [w for w in cluster.get("workers") or [] if isinstance(w, dict)]
    return _one([w.get(key) for w in workers], key, "cluster file") if workers else None


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    try:
        return int(value) if value is not None and float(value) == int(float(value)) else None
    except (TypeError, ValueError):
        return None


def _setting(where: str, name: str, flag: str, flag_value: Any, found: list[tuple[Any, str]], default: Any,
             default_source: str) -> Setting:
    """The first found (value, source); a flag is taken only when nothing is found and is refused if it
    disagrees with what was found."""
    for value, source in found:
        if value is None:
            continue
        if flag_value is not None and flag_value != value:
            raise fail(f"{flag} {flag_value}: {where} has {name} = {value} ({source}); drop {flag}, the "
                       "simulator is configured like the cluster")
        return Setting(value=value, source=source)
    if flag_value is not None:
        return Setting(value=flag_value, source=flag)
    return Setting(value=default, source=default_source)


def _scheduler_value(report: ServerReport, key: str, where: str) -> Any:
    values = [(info.get("scheduler_config") or {}).get(key) for info in report.server_info]
    return _one(values, key, where)


def configure(report: ServerReport, flags: Flags) -> TargetConfig:
    """The simulator's settings for one target, each with its source."""
    from kvbench.cache import POLICIES

    target = report.target
    where = target.source if target.source != "urls" else ",".join(target.urls)
    cluster = target.cluster or {}
    eviction = target.eviction or SERVER_EVICTION
    if eviction == SERVER_EVICTION:
        sim_eviction, note = SIM_EVICTION_FOR_SERVER, SERVER_EVICTION_NOTE
    elif eviction in POLICIES:
        sim_eviction, note = eviction, None
    else:
        raise fail(f"{where}: runs eviction '{eviction}', which the simulator does not have "
                   f"(known: {', '.join(POLICIES)})")
    params = _recorded(cluster, "eviction_params") or {}
    if not isinstance(params, dict):
        raise fail(f"{where}: eviction_params must be an object of policy parameters")

    snaps = report.snapshots
    block = _setting(where, "block size", "--block-size", flags.block_size, [
        (_one([s.block_size for s in snaps], "block sizes", where), "server /metrics vllm:cache_config_info"),
        (_as_int(_recorded(cluster, "block_size")), "cluster file block_size")], None, "")
    if block.value is None:
        raise fail(f"{where}: the servers report no block size (no vllm:cache_config_info in /metrics); "
                   "pass --block-size")
    bs = int(block.value)
    num_blocks = _one([s.num_blocks for s in snaps], "KV cache sizes (num_gpu_blocks)", where)
    # vLLM's num_gpu_blocks includes its null block (block 0, never holds KV). The simulator's --cache-tokens
    # is the server's whole KV size, num_gpu_blocks * block_size, and it sets the null block aside itself
    # (kvbench.sim.engine.NULL_BLOCKS), so it gets exactly that; not the usable (num_gpu_blocks - 1) blocks,
    # which would set a block aside twice.
    from_file = _as_int(_recorded(cluster, "kv_cache_blocks"))
    if from_file is None and _as_int(_recorded(cluster, "usable_blocks")) is not None:
        from_file = _as_int(_recorded(cluster, "usable_blocks")) + 1
    cache = _setting(where, "KV capacity in tokens", "--cache-tokens", flags.cache_tokens, [
        (None if num_blocks is None else num_blocks * bs,
         f"server /metrics num_gpu_blocks {num_blocks} (vLLM's null block included; the simulator sets it "
         f"aside) x block size {bs}"),
        (None if from_file is None else from_file * bs, "cluster file kv_cache_blocks x block size")],
        None, "")
    if cache.value is None:
        raise fail(f"{where}: the servers report no KV cache size (no num_gpu_blocks in "
                   "vllm:cache_config_info); pass --cache-tokens")
    if int(cache.value) < 2 * bs:
        raise fail(f"{where}: a KV cache of {cache.value} tokens holds no {bs}-token block besides vLLM's "
                   "null block")

    info = "server /server_info scheduler_config"
    seqs = _setting(where, "max_num_seqs", "--max-num-seqs", flags.max_num_seqs, [
        (_as_int(_recorded(cluster, "max_num_seqs")), "cluster file max_num_seqs"),
        (_as_int(_scheduler_value(report, "max_num_seqs", where)), info)],
        _SPEC_DEFAULTS.max_num_seqs, "simulator default (the servers do not report it)")
    batched = _setting(where, "max_num_batched_tokens", "--max-batched-tokens", flags.max_batched_tokens, [
        (_as_int(_recorded(cluster, "max_num_batched_tokens")), "cluster file max_num_batched_tokens"),
        (_as_int(_scheduler_value(report, "max_num_batched_tokens", where)), info)],
        _SPEC_DEFAULTS.max_batched_tokens, "simulator default (the servers do not report it)")
    chunked_file = _recorded(cluster, "enable_chunked_prefill")
    chunked_server = _scheduler_value(report, "enable_chunked_prefill", where)
    chunked = _setting(where, "enable_chunked_prefill", "", None, [
        (chunked_file if isinstance(chunked_file, bool) else None, "cluster file enable_chunked_prefill"),
        (chunked_server if isinstance(chunked_server, bool) else None, info)],
        _SPEC_DEFAULTS.chunked_prefill, "simulator default (the servers do not report it)")
    return TargetConfig(
        target=where, urls=list(target.urls), model=report.model, eviction=eviction,
        sim_eviction=sim_eviction, eviction_note=note, eviction_params=dict(params), workers=len(target.urls),
        block_size=block, num_gpu_blocks=num_blocks, cache_tokens=cache, max_num_seqs=seqs,
        max_batched_tokens=batched, chunked_prefill=chunked)


@dataclass
class ResolvedTarget:
    text: str  # the --target value of this cluster (a cluster file, or the URLs)
    target: Target
    config: TargetConfig


def resolve_targets(text: str, flags: Flags) -> list[ResolvedTarget]:
    """Every cluster of ``--target`` and the simulator's configuration for it; one line for any problem."""
    texts = split_targets(text)
    targets = [parse_target(t) for t in texts]
    seen_urls: dict[str, str] = {}
    for t, src in zip(targets, texts, strict=True):
        for u in t.urls:
            if u in seen_urls:
                raise fail(f"--target: {u} is a worker of both {seen_urls[u]} and {src}; each cluster "
                           "needs its own workers")
            seen_urls[u] = src
    reports = probe_targets(targets, flags.model)
    resolved = [ResolvedTarget(t, r.target, configure(r, flags))
                for t, r in zip(texts, reports, strict=True)]
    by_eviction: dict[str, str] = {}
    for r in resolved:
        if r.config.eviction in by_eviction:
            raise fail(f"--target: {by_eviction[r.config.eviction]} and {r.text} both run eviction "
                       f"'{r.config.eviction}'; give one cluster per eviction policy")
        by_eviction[r.config.eviction] = r.text
    return resolved


def _model_dir(cfg: TargetConfig, cluster: dict[str, Any]) -> Path | None:
    for name in (cluster.get("model"), cfg.model):
        if isinstance(name, str) and (Path(name) / "config.json").exists():
            return Path(name)
    return None


def is_tiny_cpu_model(cfg: TargetConfig, cluster: dict[str, Any]) -> bool:
    """Does the cluster serve kvbench's tiny model, of the shape the shipped CPU profile was measured on,
    on CPU? (`kvbench model tiny` leaves a kvbench_model.json beside the weights.)"""
    if cluster.get("device") not in (None, "cpu"):
        return False
    folder = _model_dir(cfg, cluster)
    if folder is None:
        return False
    try:
        info = json.loads((folder / "kvbench_model.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(info, dict) and all(info.get(k) == v for k, v in TINY_SHAPE.items())


def choose_profile(flag: str | None, resolved: list[ResolvedTarget]) -> Setting:
    """``--profile``, else the shipped CPU tiny-model profile when every cluster serves that model."""
    if flag is not None:
        return Setting(value=flag, source="--profile")
    configs = [r.config for r in resolved]
    if configs and all(is_tiny_cpu_model(r.config, r.target.cluster or {}) for r in resolved):
        return Setting(value=TINY_PROFILE, source="default: the cluster serves kvbench's tiny model on CPU, "
                                                  "the setup the shipped profile was measured on")
    models = sorted({str(c.model) for c in configs})
    raise fail(f"--profile is required: the cluster serves {', '.join(models)}, and the shipped "
               f"{TINY_PROFILE} profile describes only kvbench's tiny model on CPU; fit one with "
               "`kvbench calibrate --target URL -o profile.toml` and pass --profile profile.toml")
