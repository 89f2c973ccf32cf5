"""HTTP replay against fake OpenAI-compatible workers: timing, sessions, streaming, hit rates."""

from __future__ import annotations

import numpy as np
import pytest
from tests.http.http_helpers import make_trace, open_loop_trace, spec_for, two_turn_session

from kvbench.http.replay import run_http
from kvbench.results import compute_summary, requests_table


def test_open_loop_send_times_follow_the_trace(tmp_path, fake_server):
    srv = fake_server()
    trace = open_loop_trace(25, gap_s=0.03)
    res = run_http(spec_for(tmp_path, [srv.url]), trace)
    df = res.rows.sort_values("arrival_s")
    assert (df["status"] == "ok").all()
    np.testing.assert_allclose(df["arrival_s"], np.arange(25) * 0.03)
    lag = (df["sent_s"] - df["arrival_s"]).to_numpy()
    assert (lag >= 0).all()
    # the server saw the trace's spacing: judged by the median gap, as a stall of the shared machine may delay
    # any one request (never early: lag >= 0 above), while a client that bunched or spread its sends moves
    # the median
    seen = np.array([r.t for r in srv.received if "prompt" in r.body and len(r.body["prompt"]) == 40])
    assert len(seen) == 25
    assert np.median(np.diff(seen)) == pytest.approx(0.03, abs=0.01)
    lag_cfg = res.config["send_lag"]
    assert lag_cfg["n"] == 25 and lag_cfg["p50_ms"] <= lag_cfg["p99_ms"] <= lag_cfg["max_ms"]
    requests_table(res.rows)  # rows follow the result schema


def test_streaming_times_tokens_and_cached_tokens(tmp_path, fake_server):
    srv = fake_server(ttft_s=0.05, token_delay_s=0.02)
    trace = open_loop_trace(3, gap_s=0.3, output_tokens=5, shared=32)
    res = run_http(spec_for(tmp_path, [srv.url]), trace)
    df = res.rows.sort_values("arrival_s").reset_index(drop=True)
    assert list(df["output_tokens"]) == [5, 5, 5]
    assert list(df["cached_tokens"]) == [0, 32, 32]
    assert list(df["input_tokens"]) == [40, 40, 40]
    for _, r in df.iterrows():
        assert len(r["itl_s"]) == 4
        assert r["ttft_s"] >= 0.05
        assert min(r["itl_s"]) >= 0.015
        assert r["e2e_s"] >= r["ttft_s"] + 0.06
        assert r["tpot_s"] == pytest.approx((r["done_s"] - r["first_token_s"]) / 4)
    body = srv.received[-1].body
    assert body["ignore_eos"] is True and body["max_tokens"] == 5 and body["min_tokens"] == 5
    assert body["stream_options"] == {"include_usage": True}
    assert isinstance(body["prompt"], list)


def test_request_hit_rate_equals_counter_delta(tmp_path, fake_server):
    a, b = fake_server(), fake_server()
    trace = open_loop_trace(12, gap_s=0.01, shared=48, prompt_len=60)
    res = run_http(spec_for(tmp_path, [a.url, b.url], router="prefix_hash"), trace)
    summary = compute_summary(res.rows, 2, res.hit_rates)
    assert summary["hit_rates"]["requests"] == pytest.approx(res.hit_rates["server_counters"])
    assert summary["hit_rates"]["requests"] > 0.5
    assert [h["verified"] for h in res.config["cache_hygiene"]] == [True, True]


def test_closed_loop_turns_wait_for_previous_turn_plus_think(tmp_path, fake_server):
    srv = fake_server(token_delay_s=0.02)
    rng = np.random.default_rng(1)
    ctx: list[int] = []
    rows = []
    for t in range(3):
        ctx = ctx + rng.integers(0, 16000, 20).tolist()
        rows.append({"request_id": f"s0-{t}", "arrival_s": 0.0, "session_id": "s0", "turn": t,
                     "think_s": 0.1, "user_tokens": 20, "output_tokens": 4, "prompt_token_ids": list(ctx)})
    rows.append({"request_id": "single", "arrival_s": 0.05, "output_tokens": 2,
                 "prompt_token_ids": rng.integers(0, 16000, 30).tolist()})
    res = run_http(spec_for(tmp_path, [srv.url], reset_cache=False), make_trace(rows))
    df = res.rows.set_index("request_id")
    assert res.config["cache_hygiene"] == "skipped (--no-reset-cache)"
    assert (df["status"] == "ok").all()
    for t in (1, 2):
        prev, cur = df.loc[f"s0-{t - 1}"], df.loc[f"s0-{t}"]
        assert cur["arrival_s"] >= prev["done_s"] + 0.1 - 1e-6
        assert cur["sent_s"] >= cur["arrival_s"]
    assert df.loc["single", "arrival_s"] == pytest.approx(0.05)
    prompts = [r.body["prompt"] for r in srv.received]
    assert prompts[0] == rows[0]["prompt_token_ids"]  # recorded history: the trace's prompts, in turn order
    assert prompts[-1] == rows[2]["prompt_token_ids"]


def test_generated_history_appends_actual_output(tmp_path, fake_server):
    srv = fake_server()
    # the recorded turn-1 prompt has a different "assistant" part than what the server will generate
    first, second_user, trace = two_turn_session(2)
    res = run_http(spec_for(tmp_path, [srv.url], history="generated", reset_cache=False), trace)
    sent = [r.body for r in srv.received]
    assert sent[0]["prompt"] == first and sent[0]["return_token_ids"] is True
    assert sent[1]["prompt"] == first + [1000, 1001, 1002] + second_user
    df = res.rows.set_index("request_id")
    assert df.loc["t1", "input_tokens"] == 24 + 3 + 8
    assert df.loc["t1", "cached_tokens"] == 16


def test_chat_api_sends_messages(tmp_path, fake_server):
    srv = fake_server()
    trace = open_loop_trace(2, gap_s=0.0)
    res = run_http(spec_for(tmp_path, [srv.url], api="chat", reset_cache=False), trace)
    assert (res.rows["status"] == "ok").all()
    assert srv.received[0].path == "/v1/chat/completions"
    assert isinstance(srv.received[0].body["messages"][0]["content"], str)
    assert res.config["prompt_format"] == ["chat"]


def test_token_id_prompts_fall_back_to_text(tmp_path, fake_server):
    srv = fake_server(mode="reject_ids")
    trace = open_loop_trace(3, gap_s=0.01)
    res = run_http(spec_for(tmp_path, [srv.url], reset_cache=False), trace)
    assert (res.rows["status"] == "ok").all()
    assert res.config["prompt_format"] == ["text"]
    assert isinstance(srv.received[-1].body["prompt"], str)
    assert list(res.rows["input_tokens"]) == [40, 40, 40]  # builtin text round-trips to the same length
    fallback = res.config["text_fallbacks"][0]
    assert fallback["count"] >= 1 and "prompt must be a string" in fallback["first_reason"]


def test_hash_only_trace_gets_prefix_preserving_prompts(tmp_path, fake_server):
    srv = fake_server()
    trace = open_loop_trace(4, gap_s=0.01, prompt_len=40, shared=32)
    trace.df["prompt_token_ids"] = None  # like an imported Mooncake trace: hash ids only
    res = run_http(spec_for(tmp_path, [srv.url], reset_cache=False), trace)
    df = res.rows.sort_values("arrival_s")
    assert list(df["cached_tokens"]) == [0, 32, 32, 32]
    assert list(df["input_tokens"]) == [40, 40, 40, 40]


def test_concurrency_cap_limits_in_flight(tmp_path, fake_server):
    srv = fake_server(ttft_s=0.1)
    trace = open_loop_trace(6, gap_s=0.0)
    res = run_http(spec_for(tmp_path, [srv.url], max_concurrency=2, reset_cache=False), trace)
    sent = np.sort(res.rows["sent_s"].to_numpy())
    assert (res.rows["status"] == "ok").all()
    assert sent[2] >= sent[0] + 0.09 and sent[4] >= sent[2] + 0.09


def test_latencies_count_from_send_not_from_client_queue(tmp_path, fake_server, monkeypatch):
    """Like vllm bench serve, TTFT/E2E start when the request is sent; waiting for a --max-concurrency slot
    shows as sent_s - arrival_s, and the router learns the same TTFT as the row records."""
    import kvbench.http.replay as http_replay

    learned: dict[str, float] = {}
    real_make = http_replay.make_router

    def recording_router(*args, **kw):
        router = real_make(*args, **kw)
        complete = router.complete

        def spy(req, worker, now, c):
            learned[req.request_id] = c.ttft_s
            return complete(req, worker, now, c)

        router.complete = spy
        return router

    monkeypatch.setattr(http_replay, "make_router", recording_router)
    srv = fake_server(ttft_s=0.02)
    res = run_http(spec_for(tmp_path, [srv.url], max_concurrency=1, reset_cache=False),
                   open_loop_trace(4, gap_s=0.0))
    df = res.rows.sort_values("sent_s").reset_index(drop=True)
    assert (df["status"] == "ok").all() and (df["arrival_s"] == 0.0).all()
    assert (df["sent_s"].iloc[1:].to_numpy() >= df["done_s"].iloc[:-1].to_numpy()).all()  # one at a time
    np.testing.assert_allclose(df["ttft_s"], df["first_token_s"] - df["sent_s"], atol=1e-9)
    np.testing.assert_allclose(df["e2e_s"], df["done_s"] - df["sent_s"], atol=1e-9)
    assert (df["ttft_s"].iloc[1:] < (df["first_token_s"] - df["arrival_s"]).iloc[1:]).all()  # queueing excluded
    np.testing.assert_allclose([learned[r] for r in df["request_id"]], df["ttft_s"], atol=1e-9)
    assert "measured from sent_s" in res.config["latency_origin"]


def test_result_reports_the_block_size_really_used(tmp_path, fake_server):
    srv = fake_server(block_size=32)
    res = run_http(spec_for(tmp_path, [srv.url], block_size=16), open_loop_trace(2, 0.0))
    assert res.block_size == 32 and res.config["block_size_source"] == "server /metrics cache_config_info"
    quiet = fake_server(cache_config=False)  # no cache_config_info: --block-size is what the router hashes at
    res = run_http(spec_for(tmp_path, [quiet.url], block_size=48), open_loop_trace(2, 0.0))
    assert res.block_size == 48 and res.config["router_block_size"] == 48


@pytest.mark.parametrize("server_bs, flag_bs, source", [(24, 16, "server /metrics"), (None, 40, "--block-size")])
def test_block_size_not_a_multiple_of_the_trace_fails_before_sending(tmp_path, fake_server, server_bs, flag_bs,
                                                                     source):
    from kvbench.errors import KvbenchError

    srv = fake_server(block_size=server_bs or 16, cache_config=server_bs is not None)
    with pytest.raises(KvbenchError) as exc:
        run_http(spec_for(tmp_path, [srv.url], block_size=flag_bs), open_loop_trace(2, 0.0))
    msg = str(exc.value)
    bad = server_bs or flag_bs
    assert f"size {bad}" in msg and "block size 16" in msg and source in msg and "\n" not in msg
    assert "--block-size 8" in msg  # gcd(bad, 16): a trace block size that divides the server's
    assert srv.received == []  # not a single completion (not even the hygiene probe) was sent


def test_sleep_until_is_never_early_and_cancels_cleanly():
    """The precise tail runs in a helper thread: it must still wake at (never before) each deadline, serve
    several loops one after another, and let a cancelled waiter go without waking anything later."""
    import asyncio
    import time

    from kvbench.http.replay import sleep_until

    async def main() -> list[float]:
        early = []
        for k in range(20):
            deadline = time.monotonic() + 0.0005 * (k % 4)  # within and past the loop timer's reach
            await sleep_until(deadline)
            early.append(deadline - time.monotonic())
        waiter = asyncio.create_task(sleep_until(time.monotonic() + 0.001))
        await asyncio.sleep(0)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        await asyncio.sleep(0.005)  # the cancelled deadline passes: nothing breaks
        return early

    for _ in range(2):  # a second event loop after the first has closed
        assert max(asyncio.run(main())) <= 0


def test_an_imported_hash_only_trace_sends_the_tokens_a_materialized_import_stores(tmp_path, fake_server):
    """A hash-only Mooncake import synthesizes each prompt when it is sent: the server receives the token ids
    the same import stores under --token-ids, and its cache hits follow the shared source blocks."""
    from tests.workloads.conftest import run_cli

    from kvbench.trace import read_trace

    paths = {}
    for name, extra in (("ids", ["--token-ids"]), ("hash", [])):
        paths[name] = tmp_path / f"{name}.parquet"
        r = run_cli("generate", "trace", "--format", "mooncake", "--synthetic", "--flavour", "conversation",
                    "--requests", "12", "--duration", "1", "--seed", "5", "-o", paths[name], *extra)
        assert r.code == 0, r.message
    srv = fake_server()
    res = run_http(spec_for(tmp_path, [srv.url], reset_cache=False), read_trace(paths["hash"]))
    assert (res.rows["status"] == "ok").all()
    stored = read_trace(paths["ids"]).df
    expected = {len(ids): np.asarray(ids).tolist() for ids in stored["prompt_token_ids"]}
    sent = [r.body["prompt"] for r in srv.received if r.path.endswith("/completions")]
    assert len(sent) == len(stored) and len(expected) == len(stored)  # lengths identify the prompts here
    assert all(p == expected[len(p)] for p in sent)
    assert res.rows["cached_tokens"].sum() > 0
