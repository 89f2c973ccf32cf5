import numpy as np

from kvbench.tokenizer import BuiltinTokenizer
from kvbench.trace import read_trace
from kvbench.workloads.conversation import normalize, parse_sharegpt, parse_ultrachat
from kvbench.workloads.readers import records


def _df(path):
    return read_trace(path).df


def _check_history(df):
    """prompt_k = prompt_{k-1} + answer_{k-1} + user_k, with exact lengths."""
    for _, s in df.sort_values(["session_id", "turn"]).groupby("session_id"):
        ids = [np.asarray(x) for x in s["prompt_token_ids"]]
        arrivals = s["arrival_s"].to_numpy()
        assert (np.diff(arrivals) >= 0).all()
        assert s["turn"].tolist() == list(range(len(s)))
        for k in range(1, len(s)):
            prev_in, prev_out = s["input_tokens"].iloc[k - 1], s["output_tokens"].iloc[k - 1]
            assert s["input_tokens"].iloc[k] == prev_in + prev_out + s["user_tokens"].iloc[k]
            assert (ids[k][:prev_in] == ids[k - 1]).all()
        assert s["user_tokens"].iloc[0] == s["input_tokens"].iloc[0]


def test_sharegpt_oddities_normalized(sharegpt_file):
    convs = parse_sharegpt(records(sharegpt_file, "sharegpt"), str(sharegpt_file))
    assert len(convs) == 7  # the all-empty conversation is skipped
    odd = next(c for c in convs if c.conv_id == "odd")
    assert len(odd.pairs) == 2
    user, answer = odd.pairs[0]
    assert user.startswith("be brief") and "first part\n\nsecond part" in user
    assert answer == "12345"
    assert odd.pairs[1] == ("a\nlist value", "dict value")


def test_normalize_user_without_answer():
    conv = normalize("c", [("user", "hi"), ("assistant", "hello"), ("user", "bye")])
    assert conv.pairs == [("hi", "hello"), ("bye", "")]


def test_sharegpt_sessions(cli, tmp_path, sharegpt_file):
    out = tmp_path / "c.parquet"
    r = cli(
        "generate",
        "conversation",
        "--dataset",
        "sharegpt",
        "--input",
        sharegpt_file,
        "-o",
        out,
        "--conversations",
        "4",
        "--turns",
        "2,3",
        "--user-turn-tokens",
        "64",
        "--think-s",
        "1.5",
    )
    assert r.code == 0, r.message
    df = _df(out)
    assert df["session_id"].nunique() == 4
    assert sorted(df.groupby("session_id").size().tolist()) == [2, 2, 3, 3]
    assert (df["user_tokens"] == 64).all()
    assert (df.loc[df["turn"] > 0, "think_s"] == 1.5).all() and (
        df.loc[df["turn"] == 0, "think_s"] == 0
    ).all()
    _check_history(df)
    tok = BuiltinTokenizer()
    for text, ids in zip(df["prompt"], df["prompt_token_ids"]):
        assert tok.encode(text) == list(ids)
    assert (df["hash_ids"].map(len) == df["input_tokens"] // 16).all()


def test_ultrachat_both_layouts(cli, tmp_path, ultrachat_file):
    convs = parse_ultrachat(records(ultrachat_file, "ultrachat"), str(ultrachat_file))
    assert len(convs) == 5 and len(convs[-1].pairs) == 2 and convs[0].conv_id == "p0"
    out = tmp_path / "u.parquet"
    r = cli(
        "generate",
        "conversation",
        "--dataset",
        "ultrachat",
        "--input",
        ultrachat_file,
        "-o",
        out,
        "--conversations",
        "5",
        "--turns",
        "2",
        "--user-turn-tokens",
        "0",
        "--output-tokens",
        "8",
    )
    assert r.code == 0, r.message
    df = _df(out)
    assert (df["output_tokens"] == 8).all() and len(df) == 10
    _check_history(df)


def test_short_conversations_padded(cli, tmp_path, ultrachat_file):
    out = tmp_path / "u.parquet"
    r = cli(
        "generate",
        "conversation",
        "--dataset",
        "ultrachat",
        "--input",
        ultrachat_file,
        "-o",
        out,
        "--conversations",
        "2",
        "--turns",
        "6",
        "--user-turn-tokens",
        "32",
    )
    assert r.code == 0, r.message
    df = _df(out)
    assert len(df) == 12
    assert "synthesized" in read_trace(out).meta.source
    _check_history(df)


def test_synthetic_rlt_shape(cli, tmp_path):
    out = tmp_path / "s.parquet"
    r = cli(
        "generate",
        "conversation",
        "--dataset",
        "sharegpt",
        "--synthetic",
        "-o",
        out,
        "--conversations",
        "8",
        "--no-prompt-text",
    )
    assert r.code == 0, r.message
    df = _df(out)
    assert df.groupby("session_id").size().tolist() == [2, 4, 6, 8, 2, 4, 6, 8]
    assert (df["user_tokens"] == 1024).all()
    _check_history(df)
    meta = read_trace(out).meta
    assert meta.synthetic and meta.params["preset"] == "rlt"
    assert meta.params["resolved"]["turns"] == [2, 4, 6, 8]


def test_without_token_ids_the_hash_ids_are_those_of_the_full_prompts(cli, tmp_path):
    import pandas as pd

    base = ["generate", "conversation", "--dataset", "sharegpt", "--synthetic", "--turns", "12", "--conversations",
            "3", "--user-turn-tokens", "20", "--output-tokens", "7", "--seed", "5"]
    full, bare = tmp_path / "full.parquet", tmp_path / "bare.parquet"
    assert cli(*base, "-o", full).code == 0
    assert cli(*base, "--no-token-ids", "--no-prompt-text", "-o", bare).code == 0
    a, b = pd.read_parquet(full), pd.read_parquet(bare)
    assert b["prompt_token_ids"].isna().all() and b["prompt"].isna().all()
    assert a["input_tokens"].tolist() == b["input_tokens"].tolist()
    assert [list(x) for x in a["hash_ids"]] == [list(x) for x in b["hash_ids"]]
