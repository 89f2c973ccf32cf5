"""Requests longer than a server's max_model_len are announced before the run, not only counted as failures."""

from __future__ import annotations

import json

from tests.http.http_helpers import make_trace, spec_for

from kvbench.replay import run_replay
from kvbench.trace import write_trace


def _trace(tmp_path, lengths, output_tokens=8):
    rows = [{"request_id": f"r{i}", "arrival_s": 0.01 * i, "output_tokens": output_tokens,
             "prompt_token_ids": list(range(100, 100 + n))} for i, n in enumerate(lengths)]
    trace = make_trace(rows)
    write_trace(tmp_path / "t.parquet", trace.df, trace.meta)
    return trace


def test_requests_over_max_model_len_are_counted_up_front(tmp_path, fake_server, capsys):
    short, roomy = fake_server(max_model_len=64), fake_server(max_model_len=1000)
    trace = _trace(tmp_path, [40, 56, 57, 90])  # + 8 output tokens: 48, 64 (fits exactly), 65, 98
    out = run_replay(spec_for(tmp_path, [roomy.url, short.url]), trace)
    err = capsys.readouterr().err
    assert f"2 of 4 requests need more than max_model_len 64 tokens" in err and short.url in err
    assert "the largest needs 98" in err
    config = json.loads((out / "run.json").read_text())["backend_config"]
    assert config["requests_over_max_model_len"] == 2
    assert config["max_model_len"] == {roomy.url: 1000, short.url: 64}


def test_quiet_when_everything_fits_or_the_server_does_not_say(tmp_path, fake_server, capsys):
    trace = _trace(tmp_path, [40, 56])
    out = run_replay(spec_for(tmp_path, [fake_server(max_model_len=64).url]), trace)
    assert "max_model_len" not in capsys.readouterr().err
    assert json.loads((out / "run.json").read_text())["backend_config"]["requests_over_max_model_len"] == 0
    out = run_replay(spec_for(tmp_path, [fake_server().url], output=tmp_path / "o2"), trace)
    assert "max_model_len" not in capsys.readouterr().err
    assert json.loads((out / "run.json").read_text())["backend_config"]["requests_over_max_model_len"] is None
