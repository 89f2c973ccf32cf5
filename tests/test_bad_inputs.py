"""Careless and hostile input, one table: each case is a command, exit status 2, one `kvbench: error:` line
that names what to fix, and no file written or replaced."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from kvbench import cli
from kvbench.trace import TraceMeta, write_trace

SPEC = 'name = "x"\n[generate]\nkind = "gsp"\nargs = {{ groups = 2, prompts_per_group = 2, lengths = [64] }}\n' \
       '[replay]\n{replay}\n'


def _inputs(d: Path) -> None:
    (d / "huge.jsonl").write_text(json.dumps({"timestamp": 0, "input_length": 1e12, "output_length": 1,
                                              "hash_ids": [1]}) + "\n")
    (d / "two.toml").write_text(SPEC.format(replay='workers = "two"'))
    (d / "escape.toml").write_text(SPEC.format(replay="workers = 2").replace('name = "x"', 'name = "../../escape"'))
    (d / "binary.toml").write_bytes(bytes(range(256)))
    (d / "empty").mkdir()
    (d / "listrun").mkdir()
    (d / "listrun" / "run.json").write_text("[1, 2]")
    import numpy as np
    import pandas as pd

    from kvbench.hashing import block_hashes

    ids = [np.arange(64, dtype=np.int32) + 7 * i for i in range(3)]
    df = pd.DataFrame({"request_id": ["a", "b", "c"], "arrival_s": [0.0, 1.0, 2.0], "input_tokens": [64] * 3,
                       "output_tokens": [4] * 3, "prompt_token_ids": ids,
                       "hash_ids": [block_hashes(i, 16) for i in ids]})
    write_trace(d / "ok.parquet", df, TraceMeta(generator="test", block_size=16))
    write_trace(d / "future.parquet", df, TraceMeta(generator="test", block_size=16, format_version="2"))


CASES = [
    (["generate", "gsp", "--groups", "2", "--prompts-per-group", "2", "--lengths", "1000000000000", "-o", "o.parquet"],
     "--lengths"),
    (["generate", "gsp", "--groups", "2", "--prompts-per-group", "2", "--lengths", "64", "--output-tokens",
      "10000000000", "-o", "o.parquet"], "--output-tokens"),
    (["generate", "gsp", "--groups", "2", "--prompts-per-group", "2", "--lengths", "64,,128", "-o", "o.parquet"],
     "--lengths 64,,128"),
    (["generate", "gsp", "--groups", "100000", "--prompts-per-group", "1000", "--lengths", "100000", "-o",
      "o.parquet"], "more than a trace holds"),
    (["generate", "trace", "--format", "mooncake", "--input", "huge.jsonl", "-o", "o.parquet"], "huge.jsonl:1"),
    (["generate", "gsp", "--groups", "2", "--prompts-per-group", "2", "--lengths", "64", "-o", "/dev/null"],
     "not a regular file"),
    (["replay", "ok.parquet", "--target", "sim", "--workers", "100000", "-o", "r"], "--workers 100000"),
    (["replay", "ok.parquet", "--target", "sim", "--cache-tokens", "32", "-o", "r"], "use --cache-tokens 96"),
    (["replay", "future.parquet", "--target", "sim", "-o", "r"], "format_version"),
    (["report", "empty", "-o", "report.html"], "no finished runs"),
    (["report", "listrun", "-o", "report.html"], "no finished runs"),
    (["run", "two.toml", "-o", "out"], "workers = 'two'"),
    (["run", "escape.toml", "-o", "out"], "plain folder name"),
    (["run", "binary.toml", "-o", "out"], "not UTF-8"),
]


@pytest.mark.parametrize("argv,needle", CASES, ids=[" ".join(c[0][:3]) + f" #{i}" for i, c in enumerate(CASES)])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, monkeypatch, capsys, argv, needle):
    _inputs(tmp_path)
    monkeypatch.chdir(tmp_path)
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")}
    monkeypatch.setattr(sys, "argv", ["kvbench", *argv])
    with pytest.raises(SystemExit) as info:
        cli.main()
    err = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("kvbench: warning:")]
    assert info.value.code == 2, err
    assert len(err) == 1 and err[0].startswith("kvbench: error: ") and needle in err[0], err
    after = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")}
    assert after == before, f"files changed: {set(after) ^ set(before)}"
    assert os.path.exists("/dev/null") and not Path("/dev/null").is_file()
