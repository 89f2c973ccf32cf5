import numpy as np
import pytest

from kvbench.tokenizer import BuiltinTokenizer
from kvbench.trace import read_trace
from kvbench.workloads.docqa import (
    Document,
    parse_loogle,
    parse_quality,
    sample_shuffled,
    sample_windows,
    zipf_probabilities,
)
from kvbench.workloads.readers import read_table, records
from kvbench.workloads.text import Segment


def _df(path):
    return read_trace(path).df


def test_quality_loader_merges_repeated_articles(quality_file):
    docs = parse_quality(records(quality_file, "quality"), str(quality_file))
    assert [d.doc_id for d in docs] == ["art0", "art1", "art2"]
    assert len(docs[0].questions) == 5 and len(docs[1].questions) == 4
    assert "A. boats" in docs[0].questions[0] and "D. 42" in docs[0].questions[0]
    assert docs[0].text.startswith("Title: Harbour 0")


def test_quality_trace_document_before_question(cli, tmp_path, quality_file):
    out = tmp_path / "q.parquet"
    r = cli(
        "generate",
        "docqa",
        "--dataset",
        "quality",
        "--input",
        quality_file,
        "-o",
        out,
        "--requests",
        "40",
        "--window",
        "10",
    )
    assert r.code == 0, r.message
    df = _df(out)
    assert len(df) == 40 and (df["output_tokens"] == 1).all()
    tok = BuiltinTokenizer()
    for text, ids, n, hashes in zip(df["prompt"], df["prompt_token_ids"], df["input_tokens"], df["hash_ids"]):
        assert text.startswith("Title: Harbour") and "Question:" in text
        assert tok.encode(text) == list(ids) and len(ids) == n and len(hashes) == n // 16
    # all requests on one document share the document as a prefix
    for _, part in df.groupby("group_id"):
        doc = part["prompt"].iloc[0].split("\n\nQuestion:")[0]
        assert all(p.startswith(doc) for p in part["prompt"])
    meta = read_trace(out).meta
    assert meta.synthetic is False and "quality.jsonl" in meta.source and "windows" in meta.source


def test_wikiqa_tsv_loader(cli, tmp_path, wikiqa_file):
    rows = list(read_table(wikiqa_file, "wikiqa", "\t", ("QuestionID",)))
    assert len(rows) == 24
    out = tmp_path / "w.parquet"
    r = cli("generate", "docqa", "--dataset", "wikiqa", "--input", wikiqa_file, "-o", out, "--requests", "12")
    assert r.code == 0, r.message
    df = _df(out)
    assert set(df["group_id"]) <= {"D0", "D1", "D2"}
    text = df["prompt"].iloc[0]
    assert text.startswith("Title: Harbour") and text.rstrip().endswith("Answer:")


def test_loogle_loader_and_shuffled_mode(cli, tmp_path, loogle_file):
    docs = parse_loogle(records(loogle_file, "loogle"), str(loogle_file))
    assert len(docs) == 4 and all(len(d.questions) == 5 for d in docs)
    out = tmp_path / "l.parquet"
    r = cli(
        "generate",
        "docqa",
        "--dataset",
        "loogle",
        "--input",
        loogle_file,
        "-o",
        out,
        "--doc-tokens",
        "700,900",
        "--questions-per-doc",
        "3",
    )
    assert r.code == 0, r.message
    df = _df(out)
    # the 600-word document (< 700 tokens) is dropped; the others are cut to 700..900 tokens + question
    assert df["group_id"].nunique() == 3 and len(df) == 9
    assert (df["output_tokens"] == 4).all()
    for _, part in df.groupby("group_id"):
        doc_len = part["input_tokens"].min() - 12
        assert 650 <= doc_len <= 900


def test_windows_sampling_zipf_and_reshuffle():
    docs = [
        Document(f"d{i}", Segment(np.zeros(4, np.int32)), [Segment(np.zeros(1, np.int32))] * 3)
        for i in range(50)
    ]
    picks = sample_windows(docs, 3072, 512, 1.0, np.random.default_rng(0))
    assert len(picks) == 3072
    windows = [np.array([d for d, _ in picks[w * 512 : (w + 1) * 512]]) for w in range(6)]
    tops = [np.bincount(w, minlength=50).argmax() for w in windows]
    assert len(set(tops)) > 1  # the most popular document changes between windows
    share = max(np.bincount(windows[0], minlength=50)) / 512
    assert abs(share - zipf_probabilities(50, 1.0)[0]) < 0.06


def test_shuffled_caps_questions():
    docs = [
        Document(f"d{i}", Segment(np.zeros(4, np.int32)), [Segment(np.zeros(1, np.int32))] * (i + 1))
        for i in range(5)
    ]
    picks = sample_shuffled(docs, 3, None, np.random.default_rng(0))
    assert len(picks) == 1 + 2 + 3 + 3 + 3 and len(set(picks)) == len(picks)


@pytest.mark.parametrize("dataset,mean_prompt", [("quality", 5800), ("wikiqa", 11200)])
def test_synthetic_published_lengths(cli, tmp_path, dataset, mean_prompt):
    out = tmp_path / "s.parquet"
    r = cli(
        "generate",
        "docqa",
        "--dataset",
        dataset,
        "--synthetic",
        "-o",
        out,
        "--requests",
        "300",
        "--no-prompt-text",
    )
    assert r.code == 0, r.message
    df = _df(out)
    assert abs(df["input_tokens"].mean() - mean_prompt) / mean_prompt < 0.15
    meta = read_trace(out).meta
    assert meta.synthetic and "synthetic" in meta.source


def test_synthetic_loogle_range(cli, tmp_path):
    out = tmp_path / "s.parquet"
    r = cli("generate", "docqa", "--dataset", "loogle", "--synthetic", "-o", out, "--documents", "20")
    assert r.code == 0, r.message
    df = _df(out)
    assert df["group_id"].nunique() == 20
    assert df["input_tokens"].min() >= 1000 and df["input_tokens"].max() <= 8000 + 100


def test_hub_offline_fails_fast_with_hint(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    out = tmp_path / "x.parquet"
    r = cli("generate", "docqa", "--dataset", "quality", "-o", out)
    assert r.code == 2 and "--input" in r.message and "--synthetic" in r.message and "\n" not in r.message
    assert not out.exists()


def test_hf_tokenizer_counts_are_exact(cli, tmp_path, quality_file):
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = sorted({w.strip(".,?") for w in quality_file.read_text().split() if w.isascii()})
    vocab = {w: i for i, w in enumerate(words)}
    vocab["[UNK]"] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    d = tmp_path / "tok"
    d.mkdir()
    tok.save(str(d / "tokenizer.json"))
    out = tmp_path / "h.parquet"
    r = cli(
        "generate",
        "docqa",
        "--dataset",
        "quality",
        "--input",
        quality_file,
        "-o",
        out,
        "--tokenizer",
        d,
        "--requests",
        "10",
    )
    assert r.code == 0, r.message
    df = read_trace(out).df
    for text, ids in zip(df["prompt"], df["prompt_token_ids"]):
        doc, question = text.split("\n\nQuestion:")
        expected = (
            tok.encode(doc, add_special_tokens=False).ids
            + tok.encode("Question:" + question, add_special_tokens=False).ids
        )
        assert list(ids) == expected
    assert read_trace(out).meta.tokenizer == "hf:tok"
