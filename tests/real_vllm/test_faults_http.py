"""A real vLLM worker killed mid-run: its in-flight requests become errors, the router stops choosing it,
every other request completes and no row is lost.

Nothing here races the server's speed (an earlier form killed the worker on r5's first token and lost the
race on a fast machine: the whole answer was already in the socket). The victim's process group is frozen
(SIGSTOP) just before its third request (r5: round robin sends r1, r3, r5 to it) is sent, so r5 reaches a
server that can no longer answer it; the worker is killed on the first token of r6, which goes to the
survivor 0.5 s after r5 was written. The kill hook returns only once the group is gone, so every request sent
after that moment finds the port closed; requests routed to it before the replay has seen r5's connection
lost fail too, none after. (A stream cut mid-answer is covered by tests/http/test_http_faults.py.)
"""

from __future__ import annotations

import contextlib
import os
import signal

import numpy as np
import pandas as pd
import pytest

from kvbench.hashing import block_hashes
from kvbench.http.cluster import stop_pid
from kvbench.http.replay import run_http
from kvbench.spec import ReplaySpec
from kvbench.trace import Trace, TraceMeta

pytestmark = pytest.mark.vllm

LONG = 5  # the victim's third request: sent to it frozen, lost when it is killed


def test_worker_killed_mid_run(tmp_path, vllm_worker):
    survivor = vllm_worker(eviction="lru", seed=0)
    victim = vllm_worker(eviction="lru", seed=99)  # a worker no other test asks for
    rng = np.random.default_rng(3)
    rows = []
    for k in range(40):
        ids = rng.integers(0, 16000, 96).tolist()
        rows.append({"request_id": f"r{k}", "arrival_s": k * 0.1 if k <= LONG else 0.4 + k * 0.1, "session_id": None, "turn": 0, "think_s": 0.0,
                     "group_id": None, "input_tokens": 96, "output_tokens": 16,
                     "user_tokens": 96, "prompt": None, "prompt_token_ids": ids,
                     "hash_ids": block_hashes(np.asarray(ids), 16).tolist()})
    trace = Trace(df=pd.DataFrame(rows), meta=TraceMeta(generator="test", block_size=16))
    frozen_on, killed_after = [], []

    def on_event(kind, i, worker):
        if kind == "sending" and i == LONG and not frozen_on:
            frozen_on.append(worker)
            os.killpg(victim.pid, signal.SIGSTOP)
        elif kind == "first_token" and i == LONG + 1 and frozen_on and not killed_after:
            killed_after.append(worker)
            os.killpg(victim.pid, signal.SIGKILL)
            stop_pid(victim.pid)  # waits until the whole group is gone (and reaps it)

    try:
        spec = ReplaySpec(trace=tmp_path / "t", output=tmp_path / "o", router="round_robin", progress=False,
                          target=f"{survivor.url},{victim.url}", timeout_s=120, reset_cache=False)
        res = run_http(spec, trace, on_event)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(victim.pid, signal.SIGKILL)  # a frozen group ignores SIGTERM
        stop_pid(victim.pid)
    df = res.rows.set_index("request_id", drop=False)
    assert frozen_on == [1] and killed_after == [0]  # r5 was sent to the frozen victim, r6 to the survivor
    assert len(df) == 40 and df["request_id"].is_unique
    assert df.at[f"r{LONG}", "status"] == "error" and df.at[f"r{LONG}", "worker"] == 1
    assert "connection lost" in df.at[f"r{LONG}", "error"]  # sent and lost, not refused and routed again
    err = df[df["status"] == "error"]
    assert (err["worker"] == 1).all(), err[["worker", "error"]]
    assert err["error"].str.contains(victim.url).all()
    ok = df[df["status"] == "ok"]
    assert len(ok) == 40 - len(err)
    # The replay learns of the death when r5's lost connection comes back (its done_s); a request routed to
    # the victim before that (the kill hook blocks the loop until the group is gone, so r7 may be routed to
    # it on a pooled keep-alive connection) fails too, and nothing is routed there afterwards.
    noticed_s = df.at[f"r{LONG}", "done_s"]
    assert df.at[f"r{LONG + 1}", "first_token_s"] <= noticed_s  # the kill came first
    assert (err["sent_s"] < noticed_s).all()
    after = df[df["sent_s"] > noticed_s]
    assert len(after) >= 20 and (after["worker"] == 0).all() and (after["status"] == "ok").all()
    assert victim.url in res.config["dead_workers"]
