"""`generate trace --synthetic`: seeded stand-ins in the public formats, imported like real files."""

from __future__ import annotations

import csv
import json
import math

import pyarrow.parquet as pq
import pytest

from kvbench.trace import ideal_hit_rate, read_trace
from kvbench.workloads import synthetic_traces as syn

MOONCAKE_FIELDS = {"timestamp", "input_length", "output_length", "hash_ids"}
BAILIAN_FIELDS = {
    "chat_id",
    "parent_chat_id",
    "timestamp",
    "input_length",
    "output_length",
    "type",
    "turn",
    "hash_ids",
}


def _gen(cli, out, fmt, *extra):
    r = cli("generate", "trace", "--format", fmt, "--synthetic", "-o", out, *extra)
    assert r.code == 0, r.message
    return out


def _jsonl(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _table_without_meta(path):
    return pq.read_table(path).replace_schema_metadata(None)


def _assert_fresh_ids_in_file_order(records):
    """A new id is the next unused integer, as in the public Mooncake files."""
    top = -1
    for rec in records:
        for h in rec["hash_ids"]:
            assert h <= top + 1
            top = max(top, h)


def test_same_seed_byte_identical_other_seed_differs(cli, tmp_path):
    args = ("--requests", "60", "--no-token-ids")
    a = _gen(cli, tmp_path / "a.parquet", "mooncake", *args, "--write-source", tmp_path / "a.jsonl")
    b = _gen(cli, tmp_path / "b.parquet", "mooncake", *args, "--write-source", tmp_path / "b.jsonl")
    c = _gen(cli, tmp_path / "c.parquet", "mooncake", *args, "--seed", "1")
    assert a.read_bytes() == b.read_bytes()
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()
    assert _table_without_meta(a) != _table_without_meta(c)


def test_mooncake_source_is_public_format_and_reimports_identically(cli, tmp_path):
    src = tmp_path / "mooncake_stand_in.jsonl"
    syn_out = _gen(
        cli,
        tmp_path / "s.parquet",
        "mooncake",
        "--flavour",
        "toolagent",
        "--requests",
        "80",
        "--write-source",
        src,
    )
    records = _jsonl(src)
    assert len(records) == 80
    times = [r["timestamp"] for r in records]
    assert times[0] == 0 and times == sorted(times)
    for r in records:
        assert set(r) == MOONCAKE_FIELDS
        assert all(isinstance(r[k], int) for k in ("timestamp", "input_length", "output_length"))
        assert len(r["hash_ids"]) == math.ceil(r["input_length"] / 512)
    _assert_fresh_ids_in_file_order(records)
    assert any(r["hash_ids"][0] == records[0]["hash_ids"][0] for r in records[1:])  # shared prefixes

    real = tmp_path / "r.parquet"
    r = cli("generate", "trace", "--format", "mooncake", "--input", src, "-o", real)
    assert r.code == 0, r.message
    assert _table_without_meta(syn_out).equals(_table_without_meta(real))
    meta_syn, meta_real = read_trace(syn_out).meta, read_trace(real).meta
    assert meta_syn.synthetic and not meta_real.synthetic
    assert "synthetic stand-in for the Mooncake (FAST'25) tool & agent trace" in meta_syn.source
    assert meta_syn.params["stand_in"]["flavour"] == "toolagent"


def test_bailian_source_links_turns_and_reimports_identically(cli, tmp_path):
    src = tmp_path / "qwen_stand_in.jsonl"
    out = _gen(cli, tmp_path / "s.parquet", "bailian", "--requests", "150", "--write-source", src)
    records = _jsonl(src)
    by_id = {}
    for r in records:
        assert set(r) == BAILIAN_FIELDS
        assert r["type"] in {"text", "search", "image", "file"}
        assert len(r["hash_ids"]) == math.ceil(r["input_length"] / 16)
        if r["parent_chat_id"] == -1:
            assert r["turn"] == 1
        else:
            p = by_id[r["parent_chat_id"]]  # parents come earlier in the file
            assert r["turn"] == p["turn"] + 1 and r["type"] == p["type"]
            assert r["timestamp"] >= p["timestamp"]
            assert r["input_length"] > p["input_length"] + p["output_length"]
            full = p["input_length"] // 16
            assert r["hash_ids"][:full] == p["hash_ids"][:full]  # prompt + answer extend the parent
            assert r["hash_ids"][full] not in p["hash_ids"]
        by_id[r["chat_id"]] = r
    assert sum(r["parent_chat_id"] != -1 for r in records) > 20
    _assert_fresh_ids_in_file_order(records)

    real = tmp_path / "r.parquet"
    r = cli("generate", "trace", "--format", "bailian", "--input", src, "-o", real)
    assert r.code == 0, r.message
    assert _table_without_meta(out).equals(_table_without_meta(real))
    df = read_trace(out).df
    assert df["session_id"].notna().sum() > 20 and df["turn"].max() >= 2


def test_azure_source_is_csv_and_reimports_identically(cli, tmp_path):
    src = tmp_path / "azure_stand_in.csv"
    out = _gen(
        cli, tmp_path / "s.parquet", "azure", "--flavour", "code", "--requests", "40", "--write-source", src
    )
    with open(src, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 40 and list(rows[0]) == ["TIMESTAMP", "ContextTokens", "GeneratedTokens"]
    real = tmp_path / "r.parquet"
    assert cli("generate", "trace", "--format", "azure", "--input", src, "-o", real).code == 0
    assert _table_without_meta(out).equals(_table_without_meta(real))


def test_rate_duration_and_max_requests(cli, tmp_path):
    out = _gen(
        cli,
        tmp_path / "r.parquet",
        "mooncake",
        "--flavour",
        "synthetic",
        "--requests",
        "50",
        "--rate",
        "10",
        "--no-token-ids",
    )
    df = read_trace(out).df
    assert 2.0 < df["arrival_s"].max() < 10.0  # 50 requests at 10/s: about 5 s
    out = _gen(
        cli,
        tmp_path / "d.parquet",
        "bailian",
        "--requests",
        "50",
        "--duration",
        "100",
        "--max-requests",
        "20",
        "--no-token-ids",
    )
    t = read_trace(out)
    assert len(t.df) == 20 and "first 20 imported" in t.meta.source
    assert t.df["arrival_s"].max() < 100.0


@pytest.mark.parametrize(
    ("fmt", "flavour", "requests", "block"),
    [("mooncake", "conversation", 120, 512), ("bailian", "chat", 120, 16)],
)
def test_imported_hit_rate_equals_source_hit_rate(cli, tmp_path, fmt, flavour, requests, block):
    src = tmp_path / "src.jsonl"
    out = _gen(
        cli, tmp_path / "t.parquet", fmt, "--requests", requests, "--write-source", src, "--no-token-ids"
    )
    expected = syn.source_hit_rate(_jsonl(src), syn.STAND_INS[(fmt, flavour)].block, block)
    assert expected > 0.1
    assert ideal_hit_rate(read_trace(out), block) == pytest.approx(expected, abs=1e-12)


# Tolerances: at the default sizes the knobs were tuned to within 0.03 of the target; 2,000 requests
# (seed 0) stay within 0.06, the seed-to-seed spread measured at that size.
@pytest.mark.parametrize(("fmt", "flavour"), [k for k in syn.STAND_INS if k[0] != "azure"])
def test_hit_rate_near_target(fmt, flavour):
    spec = syn.STAND_INS[(fmt, flavour)]
    at = 512 if fmt == "mooncake" else spec.block
    assert spec.hit_rate is not None
    small = syn.synthesize_records(fmt, flavour, 2000, spec.duration_s, 0)
    assert syn.source_hit_rate(small, spec.block, at) == pytest.approx(spec.hit_rate, abs=0.06)
    full = syn.synthesize_records(fmt, flavour, spec.requests, spec.duration_s, 0)
    assert len(full) == spec.requests
    assert syn.source_hit_rate(full, spec.block, at) == pytest.approx(spec.hit_rate, abs=0.03)


def test_mooncake_conversation_lengths_match_published_averages():
    spec = syn.STAND_INS[("mooncake", "conversation")]
    records = syn.synthesize_records("mooncake", "conversation", spec.requests, spec.duration_s, 0)
    mean_in = sum(r["input_length"] for r in records) / len(records)
    mean_out = sum(r["output_length"] for r in records) / len(records)
    assert 11000 < mean_in < 13000 and 300 < mean_out < 380
    assert 3000 < records[-1]["timestamp"] / 1000 < 4200  # about one hour


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("--format", "mooncake", "--synthetic", "--input", "x.jsonl"), "--input and --synthetic"),
        (("--format", "mooncake"), "--input FILE is required"),
        (("--format", "mooncake", "--input", "x.jsonl", "--requests", "5"), "--requests only applies"),
        (("--format", "bailian", "--input", "x.jsonl", "--write-source", "s.jsonl"), "--write-source only"),
        (("--format", "mooncake", "--synthetic", "--flavour", "chatbot"), "--flavour chatbot"),
        (("--format", "bailian", "--synthetic", "--flavour", "toolagent"), "has no flavours"),
        (("--format", "mooncake", "--synthetic", "--requests", "0"), "--requests 0"),
        (("--format", "mooncake", "--synthetic", "--duration", "-1"), "--duration -1"),
        (("--format", "mooncake", "--synthetic", "--rate", "2", "--duration", "9"), "give only one"),
        (("--format", "mooncake", "--synthetic", "--rate", "0"), "--rate 0"),
    ],
)
def test_bad_combinations_one_line(cli, tmp_path, args, needle):
    out = tmp_path / "t.parquet"
    r = cli("generate", "trace", "-o", out, *args)
    assert r.code == 2 and needle in r.message and "\n" not in r.message
    assert not out.exists()


def test_write_source_directory_rejected(cli, tmp_path):
    r = cli(
        "generate",
        "trace",
        "--format",
        "mooncake",
        "--synthetic",
        "-o",
        tmp_path / "t.parquet",
        "--write-source",
        tmp_path,
    )
    assert r.code == 2 and "--write-source" in r.message
