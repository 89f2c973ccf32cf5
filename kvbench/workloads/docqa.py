"""Document question answering: the document first (a cacheable prefix shared by all its questions),
then one question.

Sources: QuALITY (JSONL, one article per line with its questions), WikiQA (TSV of answer-candidate
sentences; the document is the sentences of one DocumentID in order), LooGLE (JSONL, a long ``context``
or ``input`` with ``qa_pairs``). Sampling modes:

- ``windows`` (ARC paper): ``--requests`` split into windows of ``--window``; each window reshuffles the
  documents and draws each request's document from Zipf(``--zipf-alpha``) over that shuffled ranking.
- ``shuffled`` (RLT paper): up to ``--questions-per-doc`` questions of each document, all shuffled.
"""

from __future__ import annotations

import ast
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Literal, get_args

import numpy as np

from kvbench.errors import fail
from kvbench.workloads.arrivals import ArrivalSpec, arrival_times
from kvbench.workloads.build import Rows, tracked, warn
from kvbench.workloads.readers import Row, as_text, hub_rows, read_table, records
from kvbench.workloads.text import Segment, TextCodec, join

Dataset = Literal["quality", "wikiqa", "loogle"]
Sampling = Literal["windows", "shuffled"]
DATASETS: tuple[str, ...] = get_args(Dataset)
SAMPLING: tuple[str, ...] = get_args(Sampling)
DEFAULT_SAMPLING = {"quality": "windows", "wikiqa": "windows", "loogle": "shuffled"}
EXPECTED = {
    "quality": "QuALITY JSONL (one object per line with 'article' and "
    "'questions': [{'question', 'options'}])",
    "wikiqa": "WikiQA TSV with header QuestionID, Question, DocumentID, DocumentTitle, "
    "SentenceID, Sentence, Label",
    "loogle": "LooGLE JSONL (one object per line with 'context' or 'input', 'title' and 'qa_pairs')",
}
HUB = {  # (repo, config, split): used only when neither --input nor --synthetic is given
    "quality": ("emozilla/quality", None, "train"),
    "wikiqa": ("microsoft/wiki_qa", None, "train"),
    "loogle": ("bigai-nlco/LooGLE", "longdep_qa", "test"),
}


@dataclass
class RawDocument:
    doc_id: str
    text: str
    questions: list[str] = field(default_factory=list)


@dataclass
class Document:
    doc_id: str
    body: Segment
    questions: list[Segment]


# --- synthetic stand-ins: published length statistics, in tokens -----------------------------------


@dataclass(frozen=True)
class SyntheticShape:
    documents: int
    doc_mean: float
    doc_sd: float
    doc_min: int
    doc_max: int
    questions_min: int
    questions_max: int
    question_mean: float
    question_sd: float
    description: str


SYNTHETIC = {
    # QuALITY: 265 train+dev articles of 2k-8k tokens, about 18-20 multiple-choice questions each;
    # article + one question with options is about 5.8k tokens (ARC paper).
    "quality": SyntheticShape(
        265,
        5600,
        1200,
        2000,
        8000,
        15,
        20,
        180,
        40,
        "synthetic QuALITY stand-in: 265 articles ~N(5600,1200) tokens in [2000,8000], "
        "15-20 questions of ~180 tokens (prompt ~5.8k tokens)",
    ),
    # WikiQA with the full Wikipedia article: about 11.2k tokens per prompt (ARC paper), 1-3 short questions.
    "wikiqa": SyntheticShape(
        1000,
        11200,
        3000,
        3000,
        20000,
        1,
        3,
        12,
        4,
        "synthetic WikiQA stand-in: 1000 articles ~N(11200,3000) tokens in [3000,20000], "
        "1-3 questions of ~12 tokens (prompt ~11.2k tokens)",
    ),
    # LooGLE: long documents cut to 1k-8k tokens (RLT paper), several questions each.
    "loogle": SyntheticShape(
        512,
        0,
        0,
        1000,
        8000,
        1,
        16,
        25,
        10,
        "synthetic LooGLE stand-in: 512 documents uniform in [1000,8000] tokens, "
        "1-16 questions of ~25 tokens",
    ),
}


def synthetic_documents(
    dataset: str, codec: TextCodec, rng: np.random.Generator, documents: int | None
) -> list[Document]:
    shape = SYNTHETIC[dataset]
    n = documents or shape.documents
    if shape.doc_mean > 0:
        lengths = np.clip(rng.normal(shape.doc_mean, shape.doc_sd, n), shape.doc_min, shape.doc_max).astype(
            int
        )
    else:
        lengths = rng.integers(shape.doc_min, shape.doc_max + 1, n)
    out = []
    for d in range(n):
        nq = int(rng.integers(shape.questions_min, shape.questions_max + 1))
        qlens = np.clip(rng.normal(shape.question_mean, shape.question_sd, nq), 2, None).astype(int)
        out.append(
            Document(
                f"doc{d:05d}", codec.random(rng, int(lengths[d])), [codec.random(rng, int(q)) for q in qlens]
            )
        )
    return out


# --- real formats ------------------------------------------------------------------------------------


def _doc_key(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:12]


def _with_title(title: str, body: str) -> str:
    return f"Title: {title}\n\n{body}" if title else body


def _quality_question(q: Any) -> str:
    if isinstance(q, dict):
        text = as_text(q.get("question"))
        options = q.get("options") or []
    else:
        text, options = as_text(q), []
    if not text.strip():
        return ""
    lines = [f"Question: {text.strip()}"]
    if isinstance(options, list):
        lines += [f"{chr(65 + i)}. {as_text(o).strip()}" for i, o in enumerate(options[:26])]
    lines.append("Answer:")
    return "\n".join(lines)


def parse_quality(rows: Iterable[Row], where: str) -> list[RawDocument]:
    """Articles repeat across QuALITY lines (one per writer batch): questions are merged per article."""
    docs: dict[str, RawDocument] = {}
    for line, rec in rows:
        if "article" not in rec:
            raise fail(f"{where}:{line}: missing field 'article'; expected {EXPECTED['quality']}")
        article = as_text(rec["article"])
        if not article.strip():
            continue
        key = as_text(rec.get("article_id")) or _doc_key(article)
        doc = docs.setdefault(key, RawDocument(key, _with_title(as_text(rec.get("title")).strip(), article)))
        qs = rec.get("questions")
        if qs is None and "question" in rec:  # hub layout: one question per row
            qs = [{"question": rec.get("question"), "options": rec.get("options")}]
        if qs is not None and not isinstance(qs, list):
            raise fail(f"{where}:{line}: field 'questions' must be a list; expected {EXPECTED['quality']}")
        for q in qs or []:
            text = _quality_question(q)
            if text and text not in doc.questions:
                doc.questions.append(text)
    return list(docs.values())


def parse_wikiqa(rows: Iterable[Row], where: str) -> list[RawDocument]:
    sentences: dict[str, list[tuple[int, str]]] = {}
    titles: dict[str, str] = {}
    questions: dict[str, list[str]] = {}
    for line, rec in rows:
        doc_id = as_text(rec.get("DocumentID") or rec.get("document_title"))
        if not doc_id:
            raise fail(f"{where}:{line}: empty field 'DocumentID'; expected {EXPECTED['wikiqa']}")
        sent_id = as_text(rec.get("SentenceID"))
        try:
            pos = int(sent_id.rsplit("-", 1)[-1]) if sent_id else len(sentences.get(doc_id, []))
        except ValueError:
            pos = len(sentences.get(doc_id, []))
        sentence = as_text(rec.get("Sentence", rec.get("answer")))
        seen = sentences.setdefault(doc_id, [])
        if sentence.strip() and all(p != pos for p, _ in seen):
            seen.append((pos, sentence.strip()))
        titles.setdefault(doc_id, as_text(rec.get("DocumentTitle", rec.get("document_title"))).strip())
        q = as_text(rec.get("Question", rec.get("question"))).strip()
        if q:
            qtext = f"Question: {q}\nAnswer:"
            if qtext not in questions.setdefault(doc_id, []):
                questions[doc_id].append(qtext)
    out = []
    for doc_id, sents in sentences.items():
        body = " ".join(s for _, s in sorted(sents))
        out.append(RawDocument(doc_id, _with_title(titles.get(doc_id, ""), body), questions.get(doc_id, [])))
    return out


def _loogle_pairs(value: Any, where: str, line: int) -> list[Any]:
    if value is None or value == "":
        return []
    if isinstance(value, str):  # the LooGLE files store qa_pairs as a Python/JSON literal string
        for parse in (json.loads, ast.literal_eval):
            try:
                value = parse(value)
                break
            except (ValueError, SyntaxError, MemoryError, RecursionError):
                continue
        else:
            raise fail(
                f"{where}:{line}: field 'qa_pairs' is not a list literal; expected {EXPECTED['loogle']}"
            )
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list):
        raise fail(f"{where}:{line}: field 'qa_pairs' must be a list; expected {EXPECTED['loogle']}")
    return value


def parse_loogle(rows: Iterable[Row], where: str) -> list[RawDocument]:
    docs: dict[str, RawDocument] = {}
    for line, rec in rows:
        if "context" not in rec and "input" not in rec:
            raise fail(f"{where}:{line}: missing field 'context' (or 'input'); expected {EXPECTED['loogle']}")
        body = as_text(rec.get("context", rec.get("input")))
        if not body.strip():
            continue
        key = as_text(rec.get("doc_id") or rec.get("id")) or _doc_key(body)
        doc = docs.setdefault(key, RawDocument(key, _with_title(as_text(rec.get("title")).strip(), body)))
        pairs = _loogle_pairs(rec.get("qa_pairs"), where, line)
        if "question" in rec:
            pairs.append({"Q": rec["question"]})
        for p in pairs:
            q = as_text(p.get("Q", p.get("question", p.get("q")))) if isinstance(p, dict) else as_text(p)
            qtext = f"Question: {q.strip()}\nAnswer:" if q.strip() else ""
            if qtext and qtext not in doc.questions:
                doc.questions.append(qtext)
    return list(docs.values())


def load_raw(dataset: str, input_path: Path | None) -> tuple[list[RawDocument], str]:
    expected = EXPECTED[dataset]
    if input_path is not None:
        where = str(input_path)
        if dataset == "wikiqa":
            rows: Iterable[Row] = read_table(
                input_path, expected, "\t", ("QuestionID", "Question", "DocumentID", "Sentence")
            )
        else:
            rows = records(input_path, expected)
        source = f"{dataset} from local file {input_path.name}"
    else:
        repo, config, split = HUB[dataset]
        where = f"hub:{repo}"
        rows = hub_rows("--dataset " + dataset, repo, split, expected, config)
        source = f"{dataset} from the Hugging Face hub ({repo}, {split})"
    parse = {"quality": parse_quality, "wikiqa": parse_wikiqa, "loogle": parse_loogle}[dataset]
    docs = [d for d in parse(tracked(rows, f"reading {dataset}"), where) if d.questions]
    if not docs:
        raise fail(f"{where}: no documents with questions found; expected {expected}")
    return docs, source


def encode_documents(raw: list[RawDocument], codec: TextCodec) -> list[Document]:
    return [
        Document(d.doc_id, codec.encode(d.text), [codec.encode(q) for q in d.questions])
        for d in tracked(raw, "tokenizing documents", total=len(raw))
    ]


def cut_documents(
    docs: list[Document], doc_tokens: tuple[int, int], codec: TextCodec, rng: np.random.Generator
) -> list[Document]:
    """Keep documents of at least MIN tokens, each cut to a length drawn uniformly from [MIN, MAX]."""
    lo, hi = doc_tokens
    out = []
    for d in docs:
        if len(d.body) < lo:
            continue
        target = int(rng.integers(lo, hi + 1))
        body = d.body
        if len(body) > target:
            body = codec.exactly(body, target, rng)
        out.append(Document(d.doc_id, body, d.questions))
    dropped = len(docs) - len(out)
    if dropped:
        warn(f"dropped {dropped} document(s) shorter than --doc-tokens minimum {lo}")
    if not out:
        raise fail(f"--doc-tokens {lo},{hi}: every document is shorter than {lo} tokens; lower the minimum")
    return out


def zipf_probabilities(n: int, alpha: float) -> np.ndarray:
    p = 1.0 / np.arange(1, n + 1, dtype=np.float64) ** alpha
    return p / p.sum()


def sample_windows(
    docs: list[Document], requests: int, window: int, alpha: float, rng: np.random.Generator
) -> list[tuple[int, int]]:
    """(document, question) pairs: per window a fresh document ranking, Zipf-distributed picks."""
    p = zipf_probabilities(len(docs), alpha)
    out: list[tuple[int, int]] = []
    while len(out) < requests:
        n = min(window, requests - len(out))
        ranking = rng.permutation(len(docs))
        for d in ranking[rng.choice(len(docs), size=n, p=p)].tolist():
            out.append((d, int(rng.integers(len(docs[d].questions)))))
    return out


def sample_shuffled(
    docs: list[Document], questions_per_doc: int, requests: int | None, rng: np.random.Generator
) -> list[tuple[int, int]]:
    pairs = [(d, q) for d, doc in enumerate(docs) for q in range(min(questions_per_doc, len(doc.questions)))]
    pairs = [pairs[i] for i in rng.permutation(len(pairs))]
    return pairs[:requests] if requests else pairs


@dataclass
class DocqaSettings:
    dataset: str
    sampling: str
    requests: int | None
    window: int
    zipf_alpha: float
    documents: int | None
    questions_per_doc: int
    doc_tokens: tuple[int, int] | None
    output_tokens: int
    arrival: ArrivalSpec


def generate_docqa(
    cfg: DocqaSettings, docs: list[Document], codec: TextCodec, rng: np.random.Generator, with_text: bool
) -> Rows:
    if cfg.doc_tokens is not None:
        docs = cut_documents(docs, cfg.doc_tokens, codec, rng)
    if cfg.documents and len(docs) > cfg.documents:
        keep = np.sort(rng.permutation(len(docs))[: cfg.documents])
        docs = [docs[i] for i in keep]
    if cfg.sampling == "windows":
        picks = sample_windows(docs, cfg.requests or 3072, cfg.window, cfg.zipf_alpha, rng)
    else:
        picks = sample_shuffled(docs, cfg.questions_per_doc, cfg.requests, rng)
    arrivals = arrival_times(len(picks), cfg.arrival, rng)
    rows = Rows()
    for k, (d, q) in enumerate(picks):
        doc = docs[d]
        prompt = join([doc.body, doc.questions[q]], codec if with_text else None)
        rows.add(
            request_id=f"{cfg.dataset}-{k:06d}",
            arrival_s=arrivals[k],
            tokens=prompt.ids,
            output_tokens=cfg.output_tokens,
            group_id=doc.doc_id,
            prompt=prompt.text if with_text else None,
        )
    return rows
