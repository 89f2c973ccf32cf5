"""Errors are per request and never lose rows: HTTP errors, timeouts, malformed streams, dead workers,
unreachable URLs, Ctrl-C."""

from __future__ import annotations

import os
import signal
import threading

import numpy as np
import pytest
from tests.http.fake_openai import free_port
from tests.http.http_helpers import open_loop_trace, spec_for

from kvbench.errors import KvbenchError
from kvbench.http.replay import run_http


def test_http_error_is_recorded_per_request(tmp_path, fake_server):
    srv = fake_server(mode="http500")
    res = run_http(spec_for(tmp_path, [srv.url], reset_cache=False), open_loop_trace(3, 0.0))
    assert (res.rows["status"] == "error").all()
    assert res.rows["error"].str.contains("HTTP 500: boom").all()
    assert res.rows["error"].str.contains(srv.url).all()


def test_timeout_is_an_error_row(tmp_path, fake_server):
    srv = fake_server(mode="hang")
    res = run_http(spec_for(tmp_path, [srv.url], reset_cache=False, timeout_s=0.3), open_loop_trace(2, 0.0))
    assert (res.rows["status"] == "error").all()
    assert res.rows["error"].str.contains("timed out after 0.3s").all()


@pytest.mark.parametrize("mode, message", [("malformed", "malformed stream: data line is not JSON"),
                                           ("no_done", "malformed stream: stream ended before 'data: [DONE]'")])
def test_malformed_stream_is_a_clear_error(tmp_path, fake_server, mode, message):
    srv = fake_server(mode=mode)
    res = run_http(spec_for(tmp_path, [srv.url], reset_cache=False), open_loop_trace(2, 0.0))
    assert (res.rows["status"] == "error").all()
    assert res.rows["error"].str.contains(message, regex=False).all()


def test_unreachable_url_fails_before_any_work(tmp_path, fake_server):
    srv = fake_server()
    dead = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(KvbenchError) as exc:
        run_http(spec_for(tmp_path, [srv.url, dead]), open_loop_trace(2, 0.0))
    msg = str(exc.value)
    assert dead in msg and "unreachable" in msg and "\n" not in msg
    assert srv.received == []  # nothing was sent, not even the hygiene probe


def test_worker_dying_mid_run(tmp_path, fake_server):
    a, b = fake_server(token_delay_s=0.05), fake_server(token_delay_s=0.05)
    trace = open_loop_trace(30, gap_s=0.04, output_tokens=4)
    killer = threading.Timer(0.5, b.kill)
    killer.start()
    res = run_http(spec_for(tmp_path, [a.url, b.url], reset_cache=False), trace)
    killer.join()
    df = res.rows
    assert len(df) == 30 and df["request_id"].is_unique  # nothing lost
    err = df[df["status"] == "error"]
    assert len(err) >= 1 and (err["worker"] == 1).all()  # the in-flight requests of the dead worker
    assert err["error"].str.contains("connection lost|cannot connect").all()
    died_at = err["sent_s"].max()
    later = df[df["sent_s"] > died_at + 0.2]
    assert len(later) > 5 and (later["worker"] == 0).all() and (later["status"] == "ok").all()
    assert b.url in res.config["dead_workers"]


def test_ctrl_c_keeps_what_was_gathered(tmp_path, fake_server):
    srv = fake_server(token_delay_s=0.02)
    trace = open_loop_trace(40, gap_s=0.05, output_tokens=3)
    timer = threading.Timer(0.6, lambda: os.kill(os.getpid(), signal.SIGINT))
    timer.start()
    res = run_http(spec_for(tmp_path, [srv.url], reset_cache=False), trace)
    timer.join()
    df = res.rows
    assert res.interrupted and len(df) == 40
    ok = df[df["status"] == "ok"]
    cancelled = df[df["status"] == "cancelled"]
    assert 3 <= len(ok) < 40 and len(cancelled) == 40 - len(ok)
    assert np.isnan(cancelled["sent_s"]).sum() >= len(cancelled) - 1  # at most one was in flight


def test_timeout_flag_is_the_only_request_limit(tmp_path, fake_server, monkeypatch):
    """aiohttp's session default (total=300 s) must not cut requests before --timeout: shrink that default
    below --timeout and the error must still name --timeout's limit."""
    import aiohttp
    import aiohttp.client

    monkeypatch.setattr(aiohttp.client, "DEFAULT_TIMEOUT", aiohttp.ClientTimeout(total=0.1, sock_connect=30))
    srv = fake_server(mode="hang")
    res = run_http(spec_for(tmp_path, [srv.url], reset_cache=False, timeout_s=0.5), open_loop_trace(1, 0.0))
    assert res.rows["error"].tolist() == [f"{srv.url}/v1/completions: timed out after 0.5s"]


TOO_LONG = {"error": {"message": "This model's maximum context length is 32 tokens. However, your request has "
                                 "40 input tokens. Please reduce the length of the input prompt.",
                      "type": "BadRequestError", "param": "prompt", "code": 400}}
UNKNOWN_FIELD = {"detail": [{"type": "extra_forbidden", "loc": ["body", "min_tokens"], "msg": "Extra inputs are "
                             "not permitted", "input": {"prompt": [1, 2, 3], "model": "m"}}]}


@pytest.mark.parametrize("status, body", [(400, TOO_LONG), (422, UNKNOWN_FIELD)], ids=["too_long", "unknown_field"])
def test_unrelated_400_is_an_error_not_a_switch_to_text(tmp_path, fake_server, status, body):
    srv = fake_server(mode="reject_ids", reject_status=status, reject_body=body)
    res = run_http(spec_for(tmp_path, [srv.url], reset_cache=False), open_loop_trace(3, 0.01))
    assert (res.rows["status"] == "error").all()
    assert res.rows["error"].str.contains(f"HTTP {status}").all()
    assert res.config["prompt_format"] == ["token_ids"]
    assert res.config["text_fallbacks"][0]["count"] == 0
    assert all(isinstance(r.body["prompt"], list) for r in srv.received)  # nothing re-sent as text
