import numpy as np
import pyarrow.parquet as pq

from kvbench.tokenizer import BuiltinTokenizer
from kvbench.trace import ideal_hit_rate, read_trace
from kvbench.workloads.gsp import request_order

SMALL = ["--groups", "6", "--prompts-per-group", "4", "--lengths", "64,128,256", "--shared-fraction", "0.5"]


def _rows(path):
    return read_trace(path).df


def test_groups_share_exactly_their_prefix(cli, tmp_path):
    out = tmp_path / "g.parquet"
    assert cli("generate", "gsp", "-o", out, *SMALL, "--seed", "3").code == 0
    df = _rows(out)
    assert len(df) == 24
    for g, part in df.groupby("group_id"):
        length = int(part["input_tokens"].iloc[0])
        assert length == [64, 128, 256][int(g[1:]) % 3]
        assert (part["input_tokens"] == length).all()
        ids = [np.asarray(x) for x in part["prompt_token_ids"]]
        shared = length // 2
        assert all((x[:shared] == ids[0][:shared]).all() for x in ids)
        assert len({x[shared:].tobytes() for x in ids}) == len(ids)  # suffixes are unique
    firsts = {np.asarray(x)[:16].tobytes() for x in df.groupby("group_id")["prompt_token_ids"].first()}
    assert len(firsts) == 6  # groups do not share anything
    assert (df["hash_ids"].map(len) == df["input_tokens"] // 16).all()
    assert (df["output_tokens"] == 4).all()
    assert (np.diff(df["arrival_s"].to_numpy()) >= 0).all()
    meta = read_trace(out).meta
    assert meta.generator == "gsp" and meta.synthetic and meta.seed == 3
    assert meta.params["lengths"] == "64,128,256"


def test_rlt_shape_ideal_hit_rate(cli, tmp_path):
    out = tmp_path / "g.parquet"
    assert cli("generate", "gsp", "-o", out, "--groups", "10", "--prompts-per-group", "8").code == 0
    trace = read_trace(out)
    # half of every prompt is shared; all but the first prompt of a group hit it
    assert abs(ideal_hit_rate(trace) - 0.5 * 7 / 8) < 0.01


def test_orders():
    rng = np.random.default_rng(0)
    assert request_order(2, 3, "grouped", rng).tolist() == [0, 1, 2, 3, 4, 5]
    assert request_order(2, 3, "interleaved", rng).tolist() == [0, 3, 1, 4, 2, 5]
    assert sorted(request_order(2, 3, "random", rng).tolist()) == list(range(6))


def test_interleaved_order_in_trace(cli, tmp_path):
    out = tmp_path / "g.parquet"
    assert (
        cli("generate", "gsp", "-o", out, *SMALL, "--order", "interleaved", "--arrival", "constant").code == 0
    )
    assert _rows(out)["group_id"].tolist()[:7] == [
        "g0000",
        "g0001",
        "g0002",
        "g0003",
        "g0004",
        "g0005",
        "g0000",
    ]


def test_sglang_preset(cli, tmp_path):
    out = tmp_path / "s.parquet"
    assert cli("generate", "gsp", "-o", out, "--preset", "sglang").code == 0
    df = _rows(out)
    assert len(df) == 64 * 16
    assert (df["input_tokens"] == 2048 + 128).all()
    assert (df["output_tokens"] == 256).all()
    assert (df["arrival_s"] == 0).all()  # sglang default: rate inf
    part = df[df["group_id"] == "g0005"]
    ids = [np.asarray(x) for x in part["prompt_token_ids"]]
    assert all((x[:2048] == ids[0][:2048]).all() for x in ids)


def test_prompt_text_round_trips_builtin(cli, tmp_path):
    out = tmp_path / "t.parquet"
    assert cli("generate", "gsp", "-o", out, *SMALL, "--prompt-text").code == 0
    tok = BuiltinTokenizer()
    for text, ids in zip(_rows(out)["prompt"], _rows(out)["prompt_token_ids"]):
        assert tok.encode(text) == list(ids)


def test_no_token_ids_keeps_hashes(cli, tmp_path):
    a, b = tmp_path / "a.parquet", tmp_path / "b.parquet"
    assert cli("generate", "gsp", "-o", a, *SMALL).code == 0
    assert cli("generate", "gsp", "-o", b, *SMALL, "--no-token-ids").code == 0
    da, db = _rows(a), _rows(b)
    assert db["prompt_token_ids"].isna().all()
    assert [list(x) for x in da["hash_ids"]] == [list(x) for x in db["hash_ids"]]


def test_deterministic_bytes_and_seed_sensitivity(cli, tmp_path):
    paths = [tmp_path / n for n in ("a.parquet", "b.parquet", "c.parquet")]
    for p, seed in zip(paths, ("1", "1", "2")):
        assert cli("generate", "gsp", "-o", p, *SMALL, "--seed", seed).code == 0
    assert paths[0].read_bytes() == paths[1].read_bytes()
    assert paths[0].read_bytes() != paths[2].read_bytes()
    assert pq.read_table(paths[0]).num_rows == 24
