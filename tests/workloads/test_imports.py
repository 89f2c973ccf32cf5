import numpy as np

from kvbench.trace import read_trace


def _df(path):
    return read_trace(path).df.sort_values("request_id").reset_index(drop=True)


def test_mooncake_blocks_follow_source_ids(cli, tmp_path, mooncake_file):
    out = tmp_path / "m.parquet"
    r = cli(
        "generate", "trace", "--format", "mooncake", "--input", mooncake_file, "-o", out, "--time-scale", "2",
        "--token-ids",
    )
    assert r.code == 0, r.message
    df = _df(out)
    assert df["input_tokens"].tolist() == [1200, 1100, 700, 512]
    assert df["output_tokens"].tolist() == [10, 20, 5, 1]
    assert df["arrival_s"].tolist() == [0.0, 1.0, 3.0, 4.0]  # ms -> s, times 2
    ids = [np.asarray(x) for x in df["prompt_token_ids"]]
    assert (ids[0][:1024] == ids[1][:1024]).all()  # ids 1, 2 shared
    assert (ids[0][1024:1100] != ids[1][1024:1100]).any()  # 3 vs 4 differ
    assert (ids[3] == ids[0][:512]).all()  # id 1 alone
    assert not (ids[2][:512] == ids[0][:512]).all()
    h = [list(x) for x in df["hash_ids"]]
    assert h[0][:64] == h[1][:64] and h[0][64] != h[1][64] and len(h[0]) == 1200 // 16
    assert h[3] == h[0][:32]
    assert df["session_id"].isna().all()
    meta = read_trace(out).meta
    assert meta.generator == "trace:mooncake" and meta.params["time_scale"] == 2.0


def test_bailian_jsonl_and_csv_agree_and_link_sessions(cli, tmp_path, bailian_jsonl, bailian_csv):
    a, b = tmp_path / "a.parquet", tmp_path / "b.parquet"
    assert cli("generate", "trace", "--format", "bailian", "--input", bailian_jsonl, "-o", a, "--token-ids").code == 0
    r = cli("generate", "trace", "--format", "bailian", "--input", bailian_csv, "-o", b, "--token-ids")
    assert r.code == 0, r.message
    da, db = _df(a), _df(b)
    for col in ("input_tokens", "arrival_s", "session_id", "turn", "think_s", "user_tokens"):
        assert da[col].astype(object).fillna("-").tolist() == db[col].astype(object).fillna("-").tolist()
    assert [list(x) for x in da["hash_ids"]] == [list(x) for x in db["hash_ids"]]
    assert da["session_id"].fillna("-").tolist() == ["chat-100", "-", "chat-100", "chat-100"]
    assert da["turn"].tolist() == [0, 0, 1, 2]
    assert da["think_s"].tolist() == [0.0, 0.0, 3.0, 7.0]
    assert da["arrival_s"].tolist() == [0.0, 0.5, 3.0, 10.0]
    assert da["user_tokens"].tolist() == [40, 33, 70 - 40 - 8, 96 - 70 - 6]
    ids = [np.asarray(x) for x in da["prompt_token_ids"]]
    assert (ids[2][:32] == ids[0][:32]).all() and (ids[3][:64] == ids[2][:64]).all()  # 16-token source blocks
    assert (ids[1][:16] != ids[0][:16]).any()


def test_bailian_flat_and_fixed_think(cli, tmp_path, bailian_jsonl):
    out = tmp_path / "f.parquet"
    assert (
        cli(
            "generate", "trace", "--format", "bailian", "--input", bailian_jsonl, "-o", out, "--no-sessions"
        ).code
        == 0
    )
    assert _df(out)["session_id"].isna().all()
    assert (
        cli(
            "generate",
            "trace",
            "--format",
            "bailian",
            "--input",
            bailian_jsonl,
            "-o",
            out,
            "--think-s",
            "0.25",
            "--arrival",
            "constant",
            "--rate",
            "1",
        ).code
        == 0
    )
    df = _df(out)
    assert df["think_s"].tolist() == [0.0, 0.0, 0.25, 0.25]
    assert df["arrival_s"].tolist() == [0.0, 1.0, 0.25, 0.5]


def test_azure_unique_prompts(cli, tmp_path, azure_file):
    out = tmp_path / "z.parquet"
    r = cli("generate", "trace", "--format", "azure", "--input", azure_file, "-o", out)
    assert r.code == 0, r.message
    df = _df(out)
    assert df["input_tokens"].tolist() == [374, 396, 879]
    assert np.allclose(df["arrival_s"], [0.0, 4.314579, 4.569410], atol=1e-5)
    flat = np.concatenate([np.asarray(x) for x in df["hash_ids"]])
    assert len(np.unique(flat)) == len(flat)  # no prefix information: nothing shared


def test_max_requests_and_no_token_ids(cli, tmp_path, mooncake_file):
    out = tmp_path / "m.parquet"
    r = cli(
        "generate",
        "trace",
        "--format",
        "mooncake",
        "--input",
        mooncake_file,
        "-o",
        out,
        "--max-requests",
        "2",
        "--no-token-ids",
    )
    assert r.code == 0, r.message
    trace = read_trace(out)
    df = trace.df
    assert len(df) == 2 and df["prompt_token_ids"].isna().all()
    # hash-only: the source's ids are kept, the hash ids at any block size are derived from them
    assert trace.meta.source_block == 512 and (df["hash_ids"].map(len) == 0).all()
    assert [list(x) for x in df["source_ids"]] == [[1, 2, 3], [1, 2, 4]] and df["source_row"].tolist() == [0, 1]
    assert [len(h) for h in trace.hash_ids_at(16)] == (df["input_tokens"] // 16).tolist()


def test_seed_changes_tokens_not_structure(cli, tmp_path, mooncake_file):
    a, b, c = (tmp_path / n for n in ("a.parquet", "b.parquet", "c.parquet"))
    for p, seed in ((a, "0"), (b, "0"), (c, "1")):
        assert (
            cli(
                "generate", "trace", "--format", "mooncake", "--input", mooncake_file, "-o", p, "--seed", seed
            ).code
            == 0
        )
    assert a.read_bytes() == b.read_bytes() and a.read_bytes() != c.read_bytes()
    assert _df(a)["input_tokens"].tolist() == _df(c)["input_tokens"].tolist()


def test_hf_tokenizer_ids_stay_in_vocab(cli, tmp_path, mooncake_file):
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {f"w{i}": i for i in range(50)}
    vocab["[UNK]"] = 50
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(["<s>"])
    d = tmp_path / "tok"
    d.mkdir()
    tok.save(str(d / "tokenizer.json"))
    out = tmp_path / "h.parquet"
    r = cli(
        "generate", "trace", "--format", "mooncake", "--input", mooncake_file, "-o", out, "--tokenizer", d
    )
    assert r.code == 0, r.message
    flat = np.concatenate([np.asarray(x) for x in _df(out)["prompt_token_ids"]])
    assert flat.max() <= 50 and 51 not in flat  # the special token <s> (id 51) is never drawn
    assert read_trace(out).meta.tokenizer == "hf:tok"


def test_azure_2024_timezone_timestamps_and_bad_time(cli, tmp_path):
    path = tmp_path / "AzureLLMInferenceTrace_code_1week.csv"
    path.write_text(
        "TIMESTAMP,ContextTokens,GeneratedTokens\n"
        "2024-05-10 00:00:00.009930+00:00,2048,28\n"
        "2024-05-10 00:00:01.509930+00:00,100,3\n",
        encoding="utf-8",
    )
    out = tmp_path / "z.parquet"
    r = cli("generate", "trace", "--format", "azure", "--input", path, "-o", out)
    assert r.code == 0, r.message
    assert np.allclose(_df(out)["arrival_s"], [0.0, 1.5])
    path.write_text(path.read_text() + "yesterday,5,5\n", encoding="utf-8")
    r = cli("generate", "trace", "--format", "azure", "--input", path, "-o", out)
    assert r.code == 2 and f"{path}:4:" in r.message and "TIMESTAMP" in r.message


def test_out_of_order_timestamps_are_sorted_stably_and_recorded(cli, tmp_path):
    import json

    rows = [
        {"timestamp": 3000, "input_length": 600, "output_length": 2, "hash_ids": [1, 2]},
        {"timestamp": 1000, "input_length": 700, "output_length": 3, "hash_ids": [1, 3]},
        {"timestamp": 1000, "input_length": 800, "output_length": 4, "hash_ids": [5, 6]},
        {"timestamp": 2500, "input_length": 900, "output_length": 5, "hash_ids": [1, 2]},
    ]
    src = tmp_path / "disorder.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "m.parquet"
    r = cli("generate", "trace", "--format", "mooncake", "--input", src, "-o", out)
    assert r.code == 0, r.message
    trace = read_trace(out)
    df = trace.df.sort_values("arrival_s", kind="stable")
    # every recorded gap survives (a running maximum would have put the 2.5 s row at 3 s), equal times
    # keep file order
    assert df["arrival_s"].tolist() == [0.0, 0.0, 1.5, 2.0]
    assert df["input_tokens"].tolist() == [700, 800, 900, 600]
    assert trace.meta.params["rows_reordered_by_timestamp"] == 4
    assert "sorted into time order" in trace.meta.source
