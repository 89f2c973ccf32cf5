"""The profile's per-request front-end term ``request_s`` and the fitted range a profile records.

Timings use the ``HAND`` profile (tests/sim/sim_traces.py: a step costs 10 ms + 1 ms per prompt token
computed + 2 ms per decoding sequence) with ``request_s`` added; every number is derived by hand next to
the assertion. A request becomes schedulable ``request_s`` after its release.
"""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from kvbench.errors import KvbenchError
from kvbench.replay import run_replay
from kvbench.spec import ReplaySpec
from kvbench.results import read_run
from kvbench.sim.latency import LatencyProfile, load_profile
from tests.sim.sim_traces import request_trace, write_profile
from tests.sim.test_engine_fidelity import trace

EXACT = 1e-12


def ids(n, start=1000):
    return np.arange(start, start + n)


def replay(tmp_path, path, name="run", request_s=0.0, **kw):
    profile = write_profile(tmp_path / f"{name}.toml", request_s=request_s)
    spec = ReplaySpec(trace=path, output=tmp_path / name, profile=str(profile), workers=1, eviction="lru",
                      progress=False, **kw)
    res = read_run(run_replay(spec))
    return res, res.requests.set_index("request_id")


def test_single_request_pays_the_front_end_once(tmp_path):
    # released at 1.0, schedulable at 1.0 + 0.05; prefill of 48 tokens: 0.010 + 0.048 = 0.058, so the first
    # token is out at 1.108 (TTFT 0.108); two decode steps of one sequence, 0.010 + 0.002 each: e2e 0.132
    path = request_trace(tmp_path / "t.parquet", [("a", 1.0, ids(48), 3)])
    res, df = replay(tmp_path, path, request_s=0.05)
    row = df.loc["a"]
    assert row["arrival_s"] == pytest.approx(1.0, abs=EXACT)
    assert row["first_token_s"] == pytest.approx(1.108, abs=EXACT)
    assert row["ttft_s"] == pytest.approx(0.108, abs=EXACT)
    assert row["e2e_s"] == pytest.approx(0.132, abs=EXACT)
    assert np.allclose(row["itl_s"], [0.012, 0.012], atol=EXACT)
    prof = res.config["backend_config"]["profile"]
    assert prof["coefficients"]["request_s"] == 0.05


def test_a_request_joins_the_queue_only_after_the_front_end(tmp_path):
    # a (100 tokens) released at 0, schedulable at 0.03, computed in 0.03..0.14 (0.010 + 0.100).
    # b (16 tokens) released at 0.05, schedulable at 0.08 while a's step runs, so it waits for the next step:
    # 0.14..0.166 (0.010 + 0.016). TTFT b = 0.03 front end + 0.06 queued + 0.026 step = 0.116.
    path = request_trace(tmp_path / "t.parquet", [("a", 0.0, ids(100), 1), ("b", 0.05, ids(16, 5000), 1)])
    _, df = replay(tmp_path, path, request_s=0.03)
    assert df.loc["a", "first_token_s"] == pytest.approx(0.14, abs=EXACT)
    assert df.loc["b", "first_token_s"] == pytest.approx(0.166, abs=EXACT)
    assert df.loc["b", "ttft_s"] == pytest.approx(0.116, abs=EXACT)


def test_the_front_end_delays_each_turn_of_a_session_and_changes_who_queues(tmp_path):
    # Session turns are released think_s after the previous turn ends, so each turn pays request_s again:
    # the term is not a constant shift of every time, and it changes who waits for whom.
    # t0 (16 tokens) released at 0; t1 (16 tokens) think 0.012 after t0; c (16 tokens) released at 0.03.
    # Without the term: t0 0..0.026; c 0.03..0.056; t1 released 0.038, waits for c: 0.056..0.082, TTFT 0.044.
    # With request_s 0.02: t0 0.02..0.046; c schedulable 0.05, runs 0.05..0.076; t1 released 0.058,
    # schedulable 0.078 on an idle worker, runs 0.078..0.104: TTFT 0.046, no wait.
    path = trace(tmp_path / "s.parquet", [("t0", 0.0, ids(16), 1, "s", 0, 0.0),
                                          ("t1", 0.0, ids(16, 3000), 1, "s", 1, 0.012),
                                          ("c", 0.03, ids(16, 6000), 1)])
    _, old = replay(tmp_path, path, "zero")
    assert old.loc["t1", "ttft_s"] == pytest.approx(0.044, abs=EXACT)
    _, df = replay(tmp_path, path, "front", request_s=0.02)
    assert df.loc["t0", "first_token_s"] == pytest.approx(0.046, abs=EXACT)
    assert df.loc["c", "first_token_s"] == pytest.approx(0.076, abs=EXACT)
    assert df.loc["t1", "arrival_s"] == pytest.approx(0.058, abs=EXACT)
    assert df.loc["t1", "first_token_s"] == pytest.approx(0.104, abs=EXACT)
    assert df.loc["t1", "ttft_s"] == pytest.approx(0.046, abs=EXACT)


# --- profile files -------------------------------------------------------------------------------------------
def test_profiles_without_the_term_load_with_zero_and_misspelt_terms_fail(tmp_path):
    old = tmp_path / "old.toml"
    old.write_text('[profile]\nname = "old"\n[coefficients]\nstep_base_s = 0.01\nprefill_token_s = 0.001\n'
                   'prefill_attn_s = 0.0\ndecode_seq_s = 0.002\ndecode_ctx_s = 0.0\n')
    prof = load_profile(str(old))
    assert prof.request_s == 0.0 and prof.fit_range == {}
    assert prof.to_config()["coefficients"]["request_s"] == 0.0
    typo = tmp_path / "typo.toml"
    typo.write_text(old.read_text() + "request_sec = 0.005\n")
    with pytest.raises(KvbenchError, match=r"typo.toml: unknown coefficient request_sec"):
        load_profile(str(typo))


# --- the fitted range ---------------------------------------------------------------------------------------
def ranged_profile(path, lo=128, hi=1536):
    write_profile(path)
    path.write_text(path.read_text() + f"\n[fit]\nsamples = 10\nprompt_tokens_min = {lo}\n"
                                       f"prompt_tokens_max = {hi}\nmax_concurrency = 4\n")
    return path


def sized_trace(path, lengths):
    return request_trace(path, [(f"r{k}", 0.1 * k, ids(n, 1000 + 7000 * k), 2) for k, n in enumerate(lengths)])


def sim(tmp_path, capsys, profile, lengths, name):
    path = sized_trace(tmp_path / f"{name}.parquet", lengths)
    out = run_replay(ReplaySpec(trace=path, output=tmp_path / name, profile=str(profile), workers=1,
                                progress=False))
    config = json.loads((out / "run.json").read_text())
    return capsys.readouterr().err, config["backend_config"]["profile"]


def test_a_trace_beyond_the_fitted_prompts_warns_and_is_recorded(tmp_path, capsys):
    prof = ranged_profile(tmp_path / "ranged.toml")
    err, recorded = sim(tmp_path, capsys, prof, [512, 6000, 2000], "above")
    lines = [line for line in err.splitlines() if "fitted on prompts" in line]
    assert len(lines) == 1
    assert lines[0].startswith("kvbench: warning: profile hand ")
    assert "128..1536 tokens" in lines[0] and "span 512..6000 tokens" in lines[0] and "above" in lines[0]
    assert f"kvbench calibrate --trace {tmp_path / 'above.parquet'}" in lines[0]
    assert recorded["range_warning"] == lines[0].removeprefix("kvbench: warning: ")
    assert recorded["fitted_range"] == {"prompt_tokens_min": 128, "prompt_tokens_max": 1536, "max_concurrency": 4}
    # far below the fitted minimum warns too
    err, recorded = sim(tmp_path, capsys, prof, [16, 256], "below")
    assert "span 16..256 tokens" in err and "below" in recorded["range_warning"]


def test_a_trace_inside_the_fitted_prompts_is_quiet(tmp_path, capsys):
    # 1900 is within 25% above 1536 and 40 above a quarter of 128: close enough to the measurements
    err, recorded = sim(tmp_path, capsys, ranged_profile(tmp_path / "ranged.toml"), [40, 700, 1900], "inside")
    assert "fitted on prompts" not in err and recorded["range_warning"] is None


def test_a_profile_without_a_range_is_quiet(tmp_path, capsys):
    err, recorded = sim(tmp_path, capsys, write_profile(tmp_path / "plain.toml"), [16, 6000], "plain")
    assert "fitted on prompts" not in err and recorded["range_warning"] is None
    assert recorded["fitted_range"] == {"prompt_tokens_min": None, "prompt_tokens_max": None,
                                        "max_concurrency": None}


def test_the_shipped_cpu_profile_warns_on_long_prompts():
    prof = load_profile("cpu-tiny-llama")
    assert (prof.fit_range["prompt_tokens_min"], prof.fit_range["prompt_tokens_max"]) == (128, 1536)
    assert "128..1536" in prof.range_warning(5800, 6200)
    assert prof.range_warning(128, 1536) is None
    assert load_profile("llama31-8b-a100").range_warning(1, 100000) is None


def test_front_end_spread_is_log_normal_around_request_s_and_drawn_from_the_request_id():
    from kvbench.sim.latency import frontend_delay

    base = LatencyProfile(name="p", source="t", step_base_s=0.001, prefill_token_s=0.0, prefill_attn_s=0.0,
                          decode_seq_s=0.0, decode_ctx_s=0.0, request_s=0.01, request_sigma=0.5)
    ids = [f"r{k}" for k in range(4000)]
    logs = np.log([frontend_delay(base, i) for i in ids])
    assert np.exp(np.median(logs)) == pytest.approx(0.01, rel=0.05)
    assert np.std(logs) == pytest.approx(0.5, rel=0.05)
    assert frontend_delay(base, "r7") == frontend_delay(base, "r7")  # the same request, the same delay
    assert frontend_delay(replace(base, request_sigma=0.0), "r7") == 0.01
    assert frontend_delay(replace(base, request_s=0.0), "r7") == 0.0


def test_a_profile_with_a_spread_round_trips_and_one_without_is_written_as_before(tmp_path):
    from kvbench.sim.latency import load_profile, profile_toml

    coef = {"step_base_s": 0.001, "prefill_token_s": 1e-5, "prefill_attn_s": 0.0, "decode_seq_s": 0.0,
            "decode_ctx_s": 0.0, "request_s": 0.01}
    plain = profile_toml("p", "t", coef, {})
    assert "request_sigma" not in plain
    path = tmp_path / "p.toml"
    path.write_text(profile_toml("p", "t", {**coef, "request_sigma": 0.3}, {}))
    assert load_profile(str(path)).request_sigma == 0.3
