"""Bad input: one line naming the file/field/flag and what to do, exit status 2, no output file."""

import json
import os
import subprocess
import sys

import pytest


def _fails(cli, out, *args):
    r = cli(*args, "-o", out)
    assert r.code == 2, (r.code, r.message, r.output)
    assert r.message and "\n" not in r.message
    assert not out.exists()
    assert not list(out.parent.glob(f".{out.name}.*"))  # no temporary left either
    return r.message


def test_missing_file(cli, tmp_path):
    msg = _fails(
        cli,
        tmp_path / "o.parquet",
        "generate",
        "docqa",
        "--dataset",
        "quality",
        "--input",
        tmp_path / "nope.jsonl",
    )
    assert "--input" in msg and "nope.jsonl" in msg


def test_wrong_format(cli, tmp_path, azure_file):
    msg = _fails(
        cli, tmp_path / "o.parquet", "generate", "trace", "--format", "mooncake", "--input", azure_file
    )
    assert azure_file.name in msg and "Mooncake" in msg
    msg = _fails(
        cli,
        tmp_path / "o.parquet",
        "generate",
        "trace",
        "--format",
        "azure",
        "--input",
        tmp_path.parent / "missing.csv",
    )
    assert "missing.csv" in msg


def test_wrong_columns(cli, tmp_path, mooncake_file):
    msg = _fails(
        cli, tmp_path / "o.parquet", "generate", "trace", "--format", "azure", "--input", mooncake_file
    )
    assert "TIMESTAMP" in msg or "JSON" in msg


def test_malformed_json_line_names_line(cli, tmp_path, mooncake_file):
    lines = mooncake_file.read_text().splitlines()
    lines[2] = lines[2][:-3]
    mooncake_file.write_text("\n".join(lines) + "\n")
    msg = _fails(
        cli, tmp_path / "o.parquet", "generate", "trace", "--format", "mooncake", "--input", mooncake_file
    )
    assert f"{mooncake_file}:3:" in msg and "malformed" in msg


def test_malformed_json_document(cli, tmp_path, sharegpt_file):
    sharegpt_file.write_text(sharegpt_file.read_text()[:-20])
    msg = _fails(
        cli,
        tmp_path / "o.parquet",
        "generate",
        "conversation",
        "--dataset",
        "sharegpt",
        "--input",
        sharegpt_file,
    )
    assert str(sharegpt_file) in msg and "malformed JSON" in msg


def test_empty_file_and_empty_dataset(cli, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    msg = _fails(cli, tmp_path / "o.parquet", "generate", "docqa", "--dataset", "loogle", "--input", empty)
    assert "empty" in msg
    no_questions = tmp_path / "nq.jsonl"
    no_questions.write_text(json.dumps({"article": "text", "questions": []}) + "\n")
    msg = _fails(
        cli, tmp_path / "o.parquet", "generate", "docqa", "--dataset", "quality", "--input", no_questions
    )
    assert "no documents with questions" in msg
    blank = tmp_path / "blank.json"
    blank.write_text(json.dumps([{"id": "x", "conversations": [{"from": "human", "value": ""}]}]))
    msg = _fails(
        cli, tmp_path / "o.parquet", "generate", "conversation", "--dataset", "sharegpt", "--input", blank
    )
    assert "no conversations" in msg


def test_missing_field(cli, tmp_path):
    bad = tmp_path / "q.jsonl"
    bad.write_text(json.dumps({"title": "t", "questions": []}) + "\n")
    msg = _fails(cli, tmp_path / "o.parquet", "generate", "docqa", "--dataset", "quality", "--input", bad)
    assert f"{bad}:1:" in msg and "'article'" in msg


def test_negative_lengths(cli, tmp_path, mooncake_file, azure_file):
    rows = [json.loads(x) for x in mooncake_file.read_text().splitlines()]
    rows[1]["output_length"] = -4
    mooncake_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    msg = _fails(
        cli, tmp_path / "o.parquet", "generate", "trace", "--format", "mooncake", "--input", mooncake_file
    )
    assert f"{mooncake_file}:2:" in msg and "output_length" in msg and "negative" in msg
    azure_file.write_text(azure_file.read_text().replace(",374,", ",-374,"))
    msg = _fails(cli, tmp_path / "o.parquet", "generate", "trace", "--format", "azure", "--input", azure_file)
    assert "ContextTokens" in msg and ":2:" in msg
    msg = _fails(cli, tmp_path / "o.parquet", "generate", "gsp", "--lengths", "64,-5")
    assert "--lengths" in msg


@pytest.mark.parametrize(
    "args,flag",
    [
        (("generate", "gsp", "--order", "zigzag"), "--order"),
        (("generate", "gsp", "--preset", "vllm"), "--preset"),
        (("generate", "gsp", "--arrival", "weibull"), "--arrival"),
        (("generate", "gsp", "--rate", "0"), "--rate"),
        (("generate", "gsp", "--burstiness", "-1"), "--burstiness"),
        (("generate", "gsp", "--shared-fraction", "1.5"), "--shared-fraction"),
        (("generate", "gsp", "--arrival", "trace"), "--arrival"),
        (("generate", "docqa", "--dataset", "squad", "--synthetic"), "--dataset"),
        (("generate", "docqa", "--dataset", "quality", "--synthetic", "--sampling", "zipf"), "--sampling"),
        (
            ("generate", "docqa", "--dataset", "loogle", "--synthetic", "--doc-tokens", "800,10"),
            "--doc-tokens",
        ),
        (("generate", "conversation", "--dataset", "lmsys", "--synthetic"), "--dataset"),
        (("generate", "conversation", "--dataset", "sharegpt", "--synthetic", "--turns", "2,x"), "--turns"),
        (("generate", "trace", "--format", "vidur", "--input", "x.csv"), "--format"),
        (("generate", "gsp", "--block-size", "0"), "--block-size"),
    ],
)
def test_unknown_option_values(cli, tmp_path, args, flag):
    msg = _fails(cli, tmp_path / "o.parquet", *args)
    assert msg.startswith(flag)


def test_tokenizer_dir_missing(cli, tmp_path):
    msg = _fails(cli, tmp_path / "o.parquet", "generate", "gsp", "--tokenizer", tmp_path / "none")
    assert "--tokenizer" in msg


def test_existing_output_kept_on_error(cli, tmp_path):
    out = tmp_path / "o.parquet"
    assert (
        cli("generate", "gsp", "--groups", "2", "--prompts-per-group", "2", "--lengths", "32", "-o", out).code
        == 0
    )
    before = out.read_bytes()
    r = cli("generate", "gsp", "--order", "bad", "-o", out)
    assert r.code == 2 and out.read_bytes() == before


def test_real_process_exit_status_and_single_line(tmp_path):
    out = tmp_path / "o.parquet"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "kvbench",
            "generate",
            "trace",
            "--format",
            "mooncake",
            "--input",
            str(tmp_path / "absent.jsonl"),
            "-o",
            str(out),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("kvbench: error: --input")
    assert not out.exists()
