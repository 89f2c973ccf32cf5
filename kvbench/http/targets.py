"""Turn ``--target`` into worker endpoints: comma-separated URLs or a cluster.json from ``kvbench cluster up``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from kvbench.errors import fail
from kvbench.http.cluster import read_cluster


@dataclass
class Target:
    urls: list[str]
    source: str  # "urls" or the cluster.json path
    model: str | None = None  # served model name, when the cluster file knows it
    block_size: int | None = None
    eviction: str | None = None
    cluster: dict[str, Any] = field(default_factory=dict)  # the cluster file as read, for run.json


def normalize_url(url: str, where: str) -> str:
    u = url.strip().rstrip("/")
    u = u.removesuffix("/v1")
    parsed = urlparse(u)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise fail(f"{where}: '{url}' is not an http(s) URL; give e.g. http://127.0.0.1:8000")
    return u


def parse_target(target: str, flag: str = "--target") -> Target:
    """``flag`` names the option the value came from in every error (``--target``, ``--workers``)."""
    text = target.strip()
    if not text:
        raise fail(f"{flag} is empty; give comma-separated worker URLs or a cluster.json")
    if "://" in text:
        urls = [normalize_url(u, flag) for u in text.split(",") if u.strip()]
        if len(set(urls)) != len(urls):
            raise fail(f"{flag} lists the same URL twice ({text}); give each worker once")
        return Target(urls=urls, source="urls")
    return read_cluster_file(Path(text), flag)


def _endpoint_url(entry: Any) -> str | None:
    if isinstance(entry, str):
        return entry
    if isinstance(entry, dict):
        for key in ("url", "base_url", "endpoint"):
            if isinstance(entry.get(key), str):
                return entry[key]
    return None


def read_cluster_file(path: Path, flag: str = "--target") -> Target:
    """Read the endpoints (and model, block size, eviction) a cluster file records."""
    if not path.exists():
        raise fail(f"{flag} {path}: neither URLs (http://...) nor an existing cluster.json; "
                   f"start workers with `kvbench cluster up ... -o {path}`")
    data = read_cluster(path)
    entries = data.get("workers", data.get("endpoints"))
    if not isinstance(entries, list) or not entries:
        raise fail(f"{path}: no 'workers' list of endpoints; re-create it with `kvbench cluster up`")
    urls = []
    for i, e in enumerate(entries):
        u = _endpoint_url(e)
        if u is None:
            raise fail(f"{path}: workers[{i}] has no 'url'")
        urls.append(normalize_url(u, f"{path}: workers[{i}]"))
    model = data.get("served_model_name") or data.get("model_name") or data.get("model")
    first = entries[0] if isinstance(entries[0], dict) else {}
    block = data.get("block_size", first.get("block_size"))
    eviction = data.get("eviction", first.get("eviction"))
    return Target(urls=urls, source=str(path), model=str(model) if model else None,
                  block_size=int(block) if block else None, eviction=str(eviction) if eviction else None,
                  cluster=data)
