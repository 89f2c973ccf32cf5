"""``kvbench gateway`` in front of two real vLLM CPU workers: completions (plain and streamed), chat, and
prefix routing decided by kvbench's own router, checked against the workers' own /metrics counters."""

from __future__ import annotations

import http.client
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from kvbench.hashing import block_hashes
from kvbench.http import metrics
from kvbench.routing import RouterConfig, RouteRequest, make_router

pytestmark = pytest.mark.vllm

GATEWAY_PORTS = range(18240, 18260)
PREFIX = 192  # six 32-token blocks shared by a group; the router keys on the first four
SUFFIX = 32
MAX_TOKENS = 12


def _free_port() -> int:
    for port in GATEWAY_PORTS:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            if s.connect_ex(("127.0.0.1", port)) != 0:
                return port
    raise RuntimeError("no free port in 18240-18259")


def _request(port: int, method: str, path: str, body: dict | None = None, timeout: float = 120.0):
    """(status, headers, parsed JSON or raw text) of one request over a fresh connection."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        data = None if body is None else json.dumps(body).encode()
        conn.request(method, path, body=data, headers={"Content-Type": "application/json"} if data else {})
        resp = conn.getresponse()
        raw = resp.read().decode()
        ctype = resp.getheader("Content-Type") or ""
        return resp.status, resp, json.loads(raw) if ctype.startswith("application/json") else raw
    finally:
        conn.close()


def _stream(port: int, path: str, body: dict, timeout: float = 120.0):
    """(response, SSE data payloads in arrival order), read line by line as the gateway sends them."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", path, body=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        events = []
        while True:
            line = resp.readline()
            if not line:
                break
            line = line.strip()
            if line.startswith(b"data:"):
                events.append(line[5:].strip().decode())
        return resp, events
    finally:
        conn.close()


def _port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1].rstrip("/"))


def _snapshot(url: str) -> metrics.MetricsSnapshot:
    status, _, text = _request(_port_of(url), "GET", "/metrics", timeout=10)
    assert status == 200, f"GET {url}/metrics answered {status}"
    return metrics.MetricsSnapshot.from_text(url, text)


@pytest.fixture(scope="module")
def workers(vllm_worker):
    # the same two workers test_replay_http.py asks for, so one session starts them once
    return [vllm_worker(eviction="lru", kv_cache_tokens=1024, seed=s) for s in (0, 1)]


@pytest.fixture(scope="module")
def gateway(workers, tmp_path_factory):
    """Port of a ``kvbench gateway --router prefix_hash`` subprocess, stopped however the tests end."""
    port = _free_port()
    log_path = tmp_path_factory.mktemp("gateway") / "gateway.log"
    cmd = [sys.executable, "-m", "kvbench", "gateway", "--router", "prefix_hash",
           "--workers", ",".join(w.url for w in workers), "--port", str(port)]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                pytest.fail(f"gateway exited with {proc.returncode}: {Path(log_path).read_text()[-2000:]}")
            try:
                status, _, body = _request(port, "GET", "/health", timeout=5)
                if status == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"gateway /health not ready in 90 s: {Path(log_path).read_text()[-2000:]}")
            time.sleep(0.3)
        assert [w["url"] for w in body["workers"]] == [w.url for w in workers]
        assert all(w["alive"] for w in body["workers"])
        assert body["router"]["name"] == "prefix_hash"
        assert body["block_size"] == workers[0].block_size == 32  # learned from the workers' /metrics
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _completion_body(model: str, ids: list[int], **extra) -> dict:
    return {"model": model, "prompt": ids, "max_tokens": MAX_TOKENS, "ignore_eos": True, "temperature": 0.0,
            **extra}


def test_plain_completion_with_token_ids(workers, gateway):
    ids = np.random.default_rng(11).integers(4, 16000, 100).tolist()
    status, resp, body = _request(gateway, "POST", "/v1/completions", _completion_body(workers[0].model, ids))
    assert status == 200, body
    assert resp.getheader("X-Kvbench-Worker") in ("0", "1")
    assert body["object"] == "text_completion"
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["prompt_tokens"] == len(ids)
    assert body["usage"]["completion_tokens"] == MAX_TOKENS


def test_streamed_completion_passes_events_through_with_usage(workers, gateway):
    ids = np.random.default_rng(12).integers(4, 16000, 100).tolist()
    body = _completion_body(workers[0].model, ids, stream=True, stream_options={"include_usage": True})
    resp, events = _stream(gateway, "/v1/completions", body)
    assert resp.status == 200
    assert resp.getheader("Content-Type", "").startswith("text/event-stream")
    assert resp.getheader("Content-Length") is None  # forwarded as it comes, not buffered into one body
    assert resp.getheader("X-Kvbench-Worker") in ("0", "1")
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    token_chunks = [c for c in chunks if c.get("choices")]
    assert len(token_chunks) >= 2  # one SSE event per generated piece, not a single merged answer
    assert all(c["object"] == "text_completion" for c in chunks)
    assert token_chunks[-1]["choices"][0]["finish_reason"] == "length"
    usage = chunks[-1]
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == MAX_TOKENS
    assert usage["usage"]["prompt_tokens"] == len(ids)


def test_chat_completion_through_the_gateway(workers, gateway):
    body = {"model": workers[0].model, "max_tokens": MAX_TOKENS, "ignore_eos": True, "temperature": 0.0,
            "messages": [{"role": "system", "content": "You answer in short sentences."},
                         {"role": "user", "content": "Name three colours of the sea at dusk."}]}
    status, resp, answer = _request(gateway, "POST", "/v1/chat/completions", body)
    assert status == 200, answer
    assert answer["object"] == "chat.completion"
    assert answer["choices"][0]["message"]["role"] == "assistant"
    assert answer["choices"][0]["finish_reason"] == "length"
    assert answer["usage"]["completion_tokens"] == MAX_TOKENS and answer["usage"]["prompt_tokens"] > 10
    # streamed chat, too
    resp, events = _stream(gateway, "/v1/chat/completions",
                           {**body, "stream": True, "stream_options": {"include_usage": True}})
    assert resp.status == 200 and events[-1] == "[DONE]"
    last = json.loads(events[-2])
    assert last["object"] == "chat.completion.chunk" and last["usage"]["completion_tokens"] == MAX_TOKENS


def _prefixes_for_each_worker(block_size: int) -> list[list[int]]:
    """One shared prefix the prefix_hash router sends to worker 0 and one it sends to worker 1."""
    router = make_router("prefix_hash", RouterConfig(workers=2, block_size=block_size))
    found: dict[int, list[int]] = {}
    rng = np.random.default_rng(2024)
    while len(found) < 2:
        head = rng.integers(4, 16000, PREFIX).tolist()
        req = RouteRequest(request_id="probe", input_tokens=PREFIX, output_tokens=0,
                           hash_ids=block_hashes(np.asarray(head, dtype=np.int64), block_size), prompt_token_ids=head)
        found.setdefault(router.choose(req, 0.0), head)
    return [found[0], found[1]]


def test_prefix_routing_keeps_each_group_on_its_worker(workers, gateway):
    heads = _prefixes_for_each_worker(workers[0].block_size)
    rng = np.random.default_rng(7)
    before = [_snapshot(w.url) for w in workers]
    sent = []  # (group, worker the gateway named, prompt tokens, cached tokens)
    for g in (0, 1, 1, 0, 0, 1):  # not alternating, so round robin could not pass by luck
        ids = heads[g] + rng.integers(4, 16000, SUFFIX).tolist()
        status, resp, body = _request(gateway, "POST", "/v1/completions",
                                      _completion_body(workers[0].model, ids, max_tokens=4))
        assert status == 200, body
        cached = (body["usage"].get("prompt_tokens_details") or {}).get("cached_tokens")
        sent.append((g, int(resp.getheader("X-Kvbench-Worker")), body["usage"]["prompt_tokens"], cached))
    # the gateway's router (same objects as the simulator's) decided: group g on worker g
    assert [w for _, w, _, _ in sent] == [g for g, _, _, _ in sent]
    # repeats reuse the whole shared prefix on the worker that already holds it
    assert [c for _, _, _, c in sent[2:]] == [PREFIX] * 4, sent
    # the workers' own counters agree: each counted exactly the prompt tokens routed to it
    want_queries = [sum(p for _, w, p, _ in sent if w == i) for i in range(2)]
    want_hits = [sum(c for _, w, _, c in sent if w == i) for i in range(2)]
    # vLLM exports the counters just after the last answer, with no event a client can wait on: poll until they
    # agree; the deadline only bounds a real failure (a busy machine is slow, not wrong)
    deadline = time.monotonic() + 120
    while True:
        after = [_snapshot(w.url) for w in workers]
        queries = [metrics.delta(b, a, metrics.PREFIX_QUERIES) for b, a in zip(before, after)]
        hits = [metrics.delta(b, a, metrics.PREFIX_HITS) for b, a in zip(before, after)]
        if (queries, hits) == (want_queries, want_hits) or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert queries == want_queries and hits == want_hits
    assert want_queries[0] > 0 and want_queries[1] > 0
    status, _, health = _request(gateway, "GET", "/health")
    assert status == 200 and all(w["served"] >= 3 for w in health["workers"])
