"""The same trace row gives a prefix-matching router the same symbols in the simulator and over HTTP."""

from __future__ import annotations

import numpy as np
import pytest
from tests.http.http_helpers import open_loop_trace, spec_for, two_turn_session

import kvbench.http.replay as http_replay
import kvbench.sim.run as sim_run
from kvbench.spec import ReplaySpec
from kvbench.routing.radix import symbols
from kvbench.tokenizer import BuiltinTokenizer


def capture_routes(monkeypatch, module) -> dict:
    """request id -> the RouteRequest the router got first, for routers made by ``module``."""
    seen: dict = {}
    real = module.make_router

    def make(*args, **kw):
        router = real(*args, **kw)
        route = router.route

        def spy(req, now):
            seen.setdefault(req.request_id, req)
            return route(req, now)

        router.route = spy
        return router

    monkeypatch.setattr(module, "make_router", make)
    return seen


def units(req) -> np.ndarray:
    return symbols(req.prompt, req.prompt_token_ids, req.hash_ids)


def both_paths(tmp_path, monkeypatch, fake_server, trace, **kw):
    """The RouteRequests of one sim run and one HTTP run of ``trace`` (the same router and block size)."""
    sim_seen = capture_routes(monkeypatch, sim_run)
    spec = ReplaySpec(trace=tmp_path / "t.parquet", output=tmp_path / "sim", workers=1, block_size=16,
                      eviction="lru", progress=False, **kw)
    sim_run.run_sim(spec, trace)
    http_seen = capture_routes(monkeypatch, http_replay)
    srv = fake_server()
    http_replay.run_http(spec_for(tmp_path, [srv.url], reset_cache=False, **kw), trace)
    return sim_seen, http_seen


def test_trace_rows_give_the_router_the_same_symbols_in_the_sim_and_over_http(tmp_path, monkeypatch,
                                                                              fake_server):
    tok = BuiltinTokenizer()
    for kind in ("hash_ids", "token_ids", "text"):
        trace = open_loop_trace(4, gap_s=0.01, prompt_len=40, shared=32)
        if kind != "token_ids":  # hash_ids: like an imported Mooncake trace
            if kind == "text":
                trace.df["prompt"] = [tok.decode(ids) for ids in trace.df["prompt_token_ids"]]
            trace.df["prompt_token_ids"] = None
        sim_seen, http_seen = both_paths(tmp_path / kind, monkeypatch, fake_server, trace,
                                         router="cache_aware")
        assert sorted(sim_seen) == sorted(http_seen) == [f"r{i}" for i in range(4)]
        for rid, req in sim_seen.items():
            got = http_seen[rid]
            kinds = [(r.prompt is None, r.prompt_token_ids is None) for r in (got, req)]
            assert kinds[0] == kinds[1], (kind, rid)
            np.testing.assert_array_equal(units(got), units(req), err_msg=f"{kind} {rid}")
        if kind == "hash_ids":  # block hashes at the router's block size, as the simulator matches
            np.testing.assert_array_equal(units(http_seen["r0"]), trace.df.at[0, "hash_ids"])


@pytest.mark.parametrize("api", ["completions", "chat"])
def test_generated_history_keeps_a_token_id_session_in_token_ids(tmp_path, monkeypatch, fake_server, api):
    first, _, trace = two_turn_session(3)
    sim_seen, http_seen = both_paths(tmp_path, monkeypatch, fake_server, trace, router="cache_aware",
                                     history="generated", api=api)
    # the first turn is the trace's prompt: token ids on both paths, though chat sends it as text
    assert http_seen["t0"].prompt is None
    np.testing.assert_array_equal(units(http_seen["t0"]), units(sim_seen["t0"]))
    np.testing.assert_array_equal(units(http_seen["t0"]), first)
    # the next turn is what was really sent (first turn + real answer + new user turn), in the same unit,
    # so the router's tree for the first turn is a prefix of it
    later = units(http_seen["t1"])
    assert http_seen["t1"].prompt is None and len(later) == 24 + 3 + 8
    np.testing.assert_array_equal(later[:24], first)
