import json

from kvbench.trace import ideal_hit_rate, read_trace


def test_inspect_json(cli, tmp_path):
    out = tmp_path / "g.parquet"
    assert (
        cli(
            "generate",
            "gsp",
            "-o",
            out,
            "--groups",
            "4",
            "--prompts-per-group",
            "4",
            "--lengths",
            "64",
            "--arrival",
            "constant",
            "--rate",
            "2",
        ).code
        == 0
    )
    r = cli("inspect", out, "--json")
    assert r.code == 0
    s = json.loads(r.output)
    assert s["requests"] == 16 and s["sessions"] == 0 and s["groups"] == 4
    assert s["input_tokens"]["total"] == 16 * 64 and s["input_tokens"]["p50"] == 64
    assert s["duration_s"] == 7.5 and s["arrival_rate_per_s"] == 2.0
    assert s["blocks"] == 16 * 4 and s["distinct_blocks"] == 4 * 2 + 16 * 2
    assert s["ideal_hit_rate"] == round(ideal_hit_rate(read_trace(out)), 4)
    assert s["generator"] == "gsp" and s["block_size"] == 16 and s["seed"] == 0


def test_inspect_sessions_table(cli, tmp_path):
    out = tmp_path / "c.parquet"
    assert (
        cli(
            "generate",
            "conversation",
            "--dataset",
            "ultrachat",
            "--synthetic",
            "-o",
            out,
            "--conversations",
            "3",
            "--turns",
            "2",
            "--user-turn-tokens",
            "32",
            "--output-tokens",
            "0",
        ).code
        == 0
    )
    r = cli("inspect", out)
    assert r.code == 0 and "sessions" in r.output and "ideal_hit_rate" in r.output
    s = json.loads(cli("inspect", out, "--json").output)
    assert s["sessions"] == 3 and s["session_requests"] == 6 and s["max_turns"] == 2
    assert s["ideal_hit_rate"] == round(32 / (32 + 64), 4)  # second turns reuse the whole first turn


def test_inspect_missing_file(cli, tmp_path):
    r = cli("inspect", tmp_path / "none.parquet")
    assert r.code == 2 and "none.parquet" in r.message
