"""Errors are per request and never lose rows: HTTP errors, timeouts, malformed streams, dead workers,
unreachable URLs, Ctrl-C."""

from __future__ import annotations

import os
import signal

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
    trace.df.loc[5, "output_tokens"] = 100  # r5 streams for 5 s: cut mid-stream however slow the machine is
    trace.df.loc[6:, "arrival_s"] += 0.3  # requests left to send once b is dead, whatever the load
    streams_on_b, answered_by_b = [], []

    def on_event(kind, i, worker):
        # b dies on an event, not on a timer: while its third request (r5 under round robin) is streaming.
        # kill() returns once b's port is closed, so any request sent later is refused and routed again.
        if kind == "first_token" and worker == 1:
            streams_on_b.append(i)
            if len(streams_on_b) == 3:
                b.kill()
        elif kind == "done" and worker == 1 and len(streams_on_b) < 3:
            answered_by_b.append(f"r{i}")

    res = run_http(spec_for(tmp_path, [a.url, b.url], reset_cache=False), trace, on_event)
    df = res.rows.set_index("request_id", drop=False)
    assert len(df) == 30 and df["request_id"].is_unique  # nothing lost
    assert streams_on_b == [1, 3, 5]  # no stream started on b once it was dead
    assert df.at["r5", "status"] == "error" and df.at["r5", "worker"] == 1
    assert "connection lost" in df.at["r5", "error"] and b.url in df.at["r5", "error"]
    err = df[df["status"] == "error"]
    assert (err["worker"] == 1).all()  # only b's in-flight requests fail
    assert err["error"].str.contains("connection lost").all()
    died_s = df.at["r5", "first_token_s"]  # b was killed right after this token
    assert (err["sent_s"] < died_s).all()
    assert (df.loc[answered_by_b, "status"] == "ok").all()  # what b answered before it died is kept
    later = df[df["sent_s"] > died_s]
    assert len(later) >= 20 and (later["worker"] == 0).all() and (later["status"] == "ok").all()
    assert b.url in res.config["dead_workers"]


def test_ctrl_c_keeps_what_was_gathered(tmp_path, fake_server):
    # a process started in the background by a shell without job control inherits SIGINT ignored; a user's
    # Ctrl-C reaches a foreground process with Python's default handler, which is what is tested here
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        _ctrl_c_keeps_what_was_gathered(tmp_path, fake_server)
    finally:
        signal.signal(signal.SIGINT, old)


def _ctrl_c_keeps_what_was_gathered(tmp_path, fake_server):
    srv = fake_server(token_delay_s=0.02)
    # r0-r2 are short; every later request streams 100 tokens (2 s), so a Ctrl-C pressed on a first token
    # always finds that request in flight; arrivals 0.25 s apart leave requests unsent whatever the load
    trace = open_loop_trace(40, gap_s=0.05, output_tokens=3)
    trace.df.loc[3:, "output_tokens"] = 100
    trace.df.loc[3:, "arrival_s"] = 0.15 + 0.25 * (trace.df.index[3:] - 3)
    done, pressed = [], []

    def on_event(kind, i, worker):
        if kind == "done":
            done.append(i)
        elif kind == "first_token" and len(done) >= 3 and not pressed:
            pressed.append((i, list(done)))  # Ctrl-C once three requests have finished, with request i streaming
            os.kill(os.getpid(), signal.SIGINT)

    res = run_http(spec_for(tmp_path, [srv.url], reset_cache=False), trace, on_event)
    df = res.rows
    assert len(pressed) == 1, (pressed, done)  # Ctrl-C was pressed once, with a request streaming
    assert res.interrupted, df["status"].value_counts().to_dict()
    assert len(df) == 40
    (cut, finished), = pressed
    ok = df[df["status"] == "ok"]
    cancelled = df[df["status"] == "cancelled"]
    assert set(ok.index) >= set(finished) and len(ok) >= 3  # everything finished before Ctrl-C is kept
    assert len(cancelled) == 40 - len(ok) and cut in cancelled.index
    assert df.at[cut, "error"] == "in flight when the run was interrupted"
    in_flight = cancelled[cancelled["error"] == "in flight when the run was interrupted"]
    unsent = cancelled[cancelled["error"] == "not sent (run interrupted)"]
    assert len(in_flight) + len(unsent) == len(cancelled) and len(unsent) >= 1
    assert unsent.index.min() > max(ok.index.max(), in_flight.index.max())  # sent in arrival order, the rest not
    assert unsent["sent_s"].isna().all() and (unsent["worker"] == -1).all()


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
