"""Text that JSON allows but Unicode does not (an unpaired UTF-16 surrogate) is one line, not a traceback."""

import json

import pytest


@pytest.mark.parametrize("kind,args,content", [
    ("conversation", ["--dataset", "sharegpt"],
     [{"id": "a", "conversations": [{"from": "human", "value": "hi \ud800 there"}, {"from": "gpt", "value": "ok"}]}]),
    ("docqa", ["--dataset", "quality"],
     {"article": "x \udc00 y", "title": "t", "questions": [{"question": "q?", "options": ["a", "b"]}]}),
])
def test_unpaired_surrogate_is_one_line(cli, tmp_path, kind, args, content):
    src = tmp_path / ("in.json" if isinstance(content, list) else "in.jsonl")
    src.write_text(json.dumps(content) + "\n")  # json.dumps escapes the surrogate as \\udxxx, as real files do
    out = tmp_path / "t.parquet"
    r = cli("generate", kind, *args, "--input", src, "-o", out)
    assert r.code == 2 and "unpaired surrogate" in r.message and str(src.name) in r.message
    assert not out.exists()
