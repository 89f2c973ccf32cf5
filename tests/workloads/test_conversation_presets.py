"""Real conversations as recorded by default; the RLT paper's construction behind --preset rlt.

The digests pin the request rows that the RLT construction produced before real data defaulted to the
recorded turns, so `--preset rlt` (and the reproduction specs that name it) cannot drift.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pandas as pd
import pytest

from kvbench import workloads
from kvbench.experiment import load_spec, plan
from kvbench.trace import read_trace

ROOT = Path(__file__).resolve().parents[2]

# Token counts under the built-in tokenizer (a word or a punctuation mark is one token), by hand.
SHAREGPT = [
    {
        "id": "eggs",
        "conversations": [
            {"from": "human", "value": "How do I boil an egg?"},  # 7
            {"from": "gpt", "value": "Put it in boiling water for nine minutes."},  # 9
            {"from": "human", "value": "And a soft one?"},  # 5
            {"from": "gpt", "value": "Six minutes."},  # 3
            {"from": "human", "value": "Thanks!"},  # 2
            {"from": "gpt", "value": "You are welcome."},  # 4
        ],
    },
    {
        "id": "tea",
        "conversations": [
            {"from": "human", "value": "Green or black tea?"},  # 5
            {"from": "gpt", "value": "Black, with milk."},  # 5
        ],
    },
]
# (user tokens, answer tokens) of each recorded turn.
RECORDED = {"eggs": [(7, 9), (5, 3), (2, 4)], "tea": [(5, 5)]}

ULTRACHAT = [
    # 5, 3, 5 and 5 tokens
    {"id": "u1", "data": ["Name a red fruit.", "A strawberry.", "And a yellow one?", "A banana, usually."]},
    {
        "prompt_id": "u2",
        "messages": [
            {"role": "user", "content": "Count to three."},  # 4
            {"role": "assistant", "content": "One, two, three."},  # 6
        ],
    },
]


def _sessions(df: pd.DataFrame) -> list[list[tuple[int, int]]]:
    """(user_tokens, output_tokens) per turn of each session; sessions sorted, their order is not tested."""
    out = []
    for _, s in df.sort_values(["session_id", "turn"]).groupby("session_id"):
        out.append(list(zip(s["user_tokens"].tolist(), s["output_tokens"].tolist(), strict=True)))
    return sorted(out)


def _digest(path: Path) -> str:
    """The request rows that matter to a replay (lengths, hashes, token ids, times), not file bytes."""
    df = pd.read_parquet(path)
    rows = [
        [
            r.request_id,
            round(float(r.arrival_s), 9),
            r.session_id,
            int(r.turn),
            int(r.input_tokens),
            int(r.output_tokens),
            int(r.user_tokens),
            [int(x) for x in r.hash_ids],
            [int(x) for x in r.prompt_token_ids],
        ]
        for r in df.itertuples()
    ]
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()


def _sharegpt_file(tmp_path: Path) -> Path:
    path = tmp_path / "sharegpt.json"
    path.write_text(json.dumps(SHAREGPT), encoding="utf-8")
    return path


def _ultrachat_file(tmp_path: Path) -> Path:
    path = tmp_path / "ultrachat.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ULTRACHAT), encoding="utf-8")
    return path


def _generate(cli, tmp_path: Path, *args: str, name: str = "t.parquet") -> Path:
    out = tmp_path / name
    r = cli("generate", "conversation", *args, "-o", out)
    assert r.code == 0, r.message
    return out


def test_sharegpt_recorded_by_default(cli, tmp_path):
    out = _generate(cli, tmp_path, "--dataset", "sharegpt", "--input", _sharegpt_file(tmp_path))
    df = read_trace(out).df
    assert _sessions(df) == sorted(RECORDED.values())
    eggs = df[df["input_tokens"] == 7].session_id.iloc[0]
    history = df[df["session_id"] == eggs].sort_values("turn")["input_tokens"].tolist()
    assert history == [7, 7 + 9 + 5, 21 + 3 + 2]
    assert "synthesized" not in read_trace(out).meta.source


def test_ultrachat_recorded_by_default(cli, tmp_path):
    out = _generate(cli, tmp_path, "--dataset", "ultrachat", "--input", _ultrachat_file(tmp_path))
    assert _sessions(read_trace(out).df) == [[(4, 6)], [(5, 3), (5, 5)]]


def test_recorded_answers_are_not_capped_at_1024(cli, tmp_path):
    long = [{"id": "x", "conversations": [{"from": "human", "value": "Go on."},
                                          {"from": "gpt", "value": "word " * 1500}]}]
    src = tmp_path / "long.json"
    src.write_text(json.dumps(long), encoding="utf-8")
    df = read_trace(_generate(cli, tmp_path, "--dataset", "sharegpt", "--input", src)).df
    assert df["output_tokens"].tolist() == [1500]
    capped = _generate(cli, tmp_path, "--dataset", "sharegpt", "--input", src, "--max-output-tokens", "100",
                       name="capped.parquet")
    assert read_trace(capped).df["output_tokens"].tolist() == [100]
    rlt = _generate(cli, tmp_path, "--dataset", "sharegpt", "--input", src, "--preset", "rlt", "--turns", "1",
                    name="rlt.parquet")
    assert read_trace(rlt).df["output_tokens"].tolist() == [1024]


def test_conversations_takes_a_seeded_sample(cli, tmp_path):
    src = _sharegpt_file(tmp_path)
    seen = set()
    for seed in range(6):
        out = _generate(cli, tmp_path, "--dataset", "sharegpt", "--input", src, "--conversations", "1",
                        "--seed", str(seed), name=f"s{seed}.parquet")
        df = read_trace(out).df
        assert df["session_id"].nunique() == 1
        seen.add(tuple(_sessions(df)[0]))
    assert seen == {tuple(v) for v in RECORDED.values()}


def test_user_turn_tokens_shapes_recorded_turns(cli, tmp_path):
    out = _generate(cli, tmp_path, "--dataset", "sharegpt", "--input", _sharegpt_file(tmp_path),
                    "--user-turn-tokens", "16")
    assert _sessions(read_trace(out).df) == sorted([[(16, 9), (16, 3), (16, 4)], [(16, 5)]])


def test_turns_shapes_recorded_turns(cli, tmp_path):
    src = _sharegpt_file(tmp_path)
    out = _generate(cli, tmp_path, "--dataset", "sharegpt", "--input", src, "--turns", "2")
    eggs, tea = sorted(_sessions(read_trace(out).df), reverse=True)
    assert eggs == [(7, 9), (5, 3)]  # cut to two turns, lengths as recorded
    assert len(tea) == 2 and tea[0] == (5, 5)  # one recorded turn, one synthesized
    assert "1 turns synthesized" in read_trace(out).meta.source


def test_preset_rlt_is_the_paper_construction(cli, tmp_path, sharegpt_file):
    out = _generate(cli, tmp_path, "--dataset", "sharegpt", "--input", sharegpt_file, "--preset", "rlt",
                    "--conversations", "4", "--no-prompt-text")
    df = read_trace(out).df
    assert df.groupby("session_id").size().tolist() == [2, 4, 6, 8]
    assert (df["user_tokens"] == 1024).all()


# The rows the RLT construction wrote for these inputs before --preset existed (then the default).
PINNED = {
    "sharegpt": "23440807c9f0e2cb260ebb252fff3cf841403eccc5fe9791e09de463f516b14e",
    "ultrachat": "39a371a349319fd3f87a3d5e3ad0df0ca260371e58250b1e29e7a500c4f51116",
}


@pytest.mark.parametrize("dataset", ["sharegpt", "ultrachat"])
def test_preset_rlt_rows_unchanged(cli, tmp_path, dataset):
    src = (_sharegpt_file if dataset == "sharegpt" else _ultrachat_file)(tmp_path)
    out = _generate(cli, tmp_path, "--dataset", dataset, "--input", src, "--preset", "rlt", "--conversations",
                    "5", "--seed", "7")
    assert _digest(out) == PINNED[dataset]


PINNED_SPECS = {  # equal: the answers are fixed at 4 tokens, so only the dataset name differs
    "rlt-sharegpt": "f9191432058edfd06b964e1a74129e151847c15ac55bc0813ffc60d9a8618468",
    "rlt-ultrachat": "f9191432058edfd06b964e1a74129e151847c15ac55bc0813ffc60d9a8618468",
}


@pytest.mark.parametrize("name", sorted(PINNED_SPECS))
def test_rlt_specs_name_the_preset_and_keep_their_rows(tmp_path, name):
    exp = load_spec(ROOT / "workloads" / f"{name}.toml", reduced=True)
    assert exp.gen_args.get("preset") == "rlt"
    (_, config), *_ = plan(exp, tmp_path)[0]
    assert config.seed == 0
    out = workloads.generate(exp.gen_kind, config, tmp_path / "spec.parquet")
    assert _digest(out) == PINNED_SPECS[name]


@pytest.mark.parametrize(
    "args,needle",
    [
        (("--synthetic", "--preset", "recorded"), "--preset recorded keeps recorded conversations"),
        (("--synthetic", "--preset", "paper"), "--preset paper: unknown value"),
        (("--input", "FILE", "--preset", "recorded", "--turns", "2,4"), "so --turns 2,4 conflicts"),
        (("--input", "FILE", "--preset", "recorded", "--user-turn-tokens", "0"), "so --user-turn-tokens 0"),
    ],
)
def test_preset_errors_are_one_line(cli, tmp_path, args, needle):
    src = _sharegpt_file(tmp_path)
    args = tuple(str(src) if a == "FILE" else a for a in args)
    r = cli("generate", "conversation", "--dataset", "sharegpt", *args, "-o", tmp_path / "x.parquet")
    assert r.code == 2 and needle in r.message and "\n" not in r.message
    assert not (tmp_path / "x.parquet").exists()
