"""--header / --api-key / --extra-body reach every request a real target sees, and no secret reaches run.json."""

from __future__ import annotations

import json

import pytest
from tests.http.http_helpers import open_loop_trace, spec_for

from kvbench.errors import KvbenchError
from kvbench.http.request_options import parse_extra_body, parse_headers
from kvbench.replay import run_replay
from kvbench.resolve import validate_spec
from kvbench.spec import ReplaySpec
from kvbench.trace import write_trace

SECRET = "sk-do-not-record-7731"


def test_headers_parse_name_value_pairs():
    assert parse_headers(["X-Tenant: research", "X-Empty:"]) == {"X-Tenant": "research", "X-Empty": ""}
    assert parse_headers(["Authorization:Bearer a:b"]) == {"Authorization": "Bearer a:b"}  # first colon splits


@pytest.mark.parametrize("bad", ["no-colon", ": value", "Bad Name: x", "X\tTab: y"])
def test_a_malformed_header_is_one_line_naming_the_flag(bad):
    with pytest.raises(KvbenchError, match="^--header .*NAME:VALUE"):
        parse_headers([bad])


@pytest.mark.parametrize("text, why", [("{", "not valid JSON"), ("[1, 2]", "must be a JSON object"),
                                       ('{"max_tokens": 5}', "sets max_tokens"),
                                       ('{"stream": false, "model": "m"}', "sets model, stream")])
def test_extra_body_must_be_an_object_that_leaves_the_measurement_alone(text, why):
    with pytest.raises(KvbenchError, match=f"^--extra-body: .*{why}"):
        parse_extra_body(text)


def test_the_simulator_refuses_request_options_it_cannot_send(tmp_path):
    for kw in ({"headers": {"X-A": "1"}}, {"extra_body": {"top_p": 0.5}}):
        with pytest.raises(KvbenchError, match="simulator sends no requests"):
            validate_spec(ReplaySpec(trace=tmp_path / "t", output=tmp_path / "o", **kw))


def test_spec_values_are_checked_like_the_flags(tmp_path):
    with pytest.raises(KvbenchError, match="--header 'Bad Name'"):
        validate_spec(ReplaySpec(trace=tmp_path / "t", output=tmp_path / "o", target="http://x",
                                 headers={"Bad Name": "v"}))
    with pytest.raises(KvbenchError, match="sets ignore_eos"):
        validate_spec(ReplaySpec(trace=tmp_path / "t", output=tmp_path / "o", target="http://x",
                                 extra_body={"ignore_eos": False}))


def test_every_request_carries_the_headers_and_the_extra_body(tmp_path, fake_server):
    srv = fake_server()
    trace = open_loop_trace(4, 0.01)
    write_trace(tmp_path / "t.parquet", trace.df, trace.meta)
    spec = spec_for(tmp_path, [srv.url], headers={"X-Tenant": "research"}, api_key=SECRET,
                    extra_body={"top_p": 0.9, "vllm_xargs": {"k": 1}})
    out = run_replay(spec, trace)
    paths = {p for p, _ in srv.headers_seen}
    assert {"/v1/completions", "/metrics", "/reset_prefix_cache"} <= paths  # preflight and hygiene too
    for path, headers in srv.headers_seen:
        assert headers.get("X-Tenant") == "research", path
        assert headers.get("Authorization") == f"Bearer {SECRET}", path
    bodies = [r.body for r in srv.received if r.body["max_tokens"] == 3]  # the trace's (not hygiene probes)
    assert len(bodies) == 4 and all(b["top_p"] == 0.9 and b["vllm_xargs"] == {"k": 1} for b in bodies)
    assert all(b["ignore_eos"] is True for b in bodies)  # kvbench's own fields are untouched
    text = (out / "run.json").read_text()
    assert SECRET not in text and "research" not in text
    config = json.loads(text)
    assert config["headers"] == {"X-Tenant": "<redacted>"} and config["api_key"] == "<set>"
    assert config["extra_body"] == {"top_p": 0.9, "vllm_xargs": {"k": 1}}


def test_an_explicit_authorization_header_wins_over_the_api_key(tmp_path, fake_server):
    srv = fake_server()
    trace = open_loop_trace(1, 0.01)
    write_trace(tmp_path / "t.parquet", trace.df, trace.meta)
    run_replay(spec_for(tmp_path, [srv.url], headers={"Authorization": "Basic abc"}, api_key=SECRET), trace)
    assert {h.get("Authorization") for _, h in srv.headers_seen} == {"Basic abc"}
