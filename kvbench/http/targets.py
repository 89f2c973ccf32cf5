"""Turn ``--target`` into worker endpoints: comma-separated URLs or a cluster.json from ``kvbench cluster up``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from kvbench.errors import fail
from kvbench.http.cluster import load_cluster


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


def read_cluster_file(path: Path, flag: str = "--target") -> Target:
    """Read the endpoints (and model, block size, eviction) a cluster file records."""
    if not path.exists():
        raise fail(f"{flag} {path}: neither URLs (http://...) nor an existing cluster.json; "
                   f"start workers with `kvbench cluster up ... -o {path}`")
    info, data = load_cluster(path)
    urls = [normalize_url(w.url, f"{path}: workers[{i}]") for i, w in enumerate(info.workers)]
    model = info.served_model_name or info.model_name or info.model
    first = info.workers[0]
    block = info.block_size if info.block_size is not None else first.block_size
    eviction = info.eviction if info.eviction is not None else first.eviction
    return Target(urls=urls, source=str(path), model=model or None, block_size=block or None,
                  eviction=eviction or None, cluster=data)
