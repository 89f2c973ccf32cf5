"""Small files in the real public formats, and a CLI runner that maps KvbenchError to exit status 2
exactly as `kvbench.cli.main` does."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kvbench.cli import app
from kvbench.errors import KvbenchError


@dataclass
class Outcome:
    code: int
    message: str
    output: str


def run_cli(*args: str) -> Outcome:
    result = CliRunner().invoke(app, [str(a) for a in args])
    if isinstance(result.exception, KvbenchError):
        return Outcome(2, str(result.exception), result.output)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return Outcome(result.exit_code, "", result.output)


@pytest.fixture
def cli():
    return run_cli


WORDS = (
    "the river bank was quiet while the old keeper counted boats and wrote notes about the tide "
    "every morning before the market opened near the harbour"
).split()


def prose(n_words: int, salt: int) -> str:
    words = [WORDS[(i * 7 + salt) % len(WORDS)] for i in range(n_words)]
    return " ".join(words) + f" salt{salt}."


@pytest.fixture
def quality_file(tmp_path: Path) -> Path:
    rows = []
    for a in range(3):
        qs = [
            {
                "question": f"What did the keeper count {a}-{q}?",
                "options": ["boats", "fish", "notes", 42],
                "gold_label": 1,
                "question_unique_id": f"q{a}{q}",
            }
            for q in range(4)
        ]
        rows.append(
            {
                "article_id": f"art{a}",
                "set_unique_id": f"art{a}_1",
                "title": f"Harbour {a}",
                "article": prose(300 + 50 * a, a),
                "questions": qs,
            }
        )
    # QuALITY repeats an article on another line with more questions: they must merge.
    rows.append(
        {
            "article_id": "art0",
            "set_unique_id": "art0_2",
            "title": "Harbour 0",
            "article": prose(300, 0),
            "questions": [{"question": "A fifth question?", "options": ["a", "b", "c", "d"]}],
        }
    )
    path = tmp_path / "quality.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def wikiqa_file(tmp_path: Path) -> Path:
    path = tmp_path / "WikiQA-train.tsv"
    header = ["QuestionID", "Question", "DocumentID", "DocumentTitle", "SentenceID", "Sentence", "Label"]
    lines = ["\t".join(header)]
    for d in range(3):
        for q in range(2):
            for s in range(4):
                lines.append(
                    "\t".join(
                        [
                            f"Q{d}{q}",
                            f"how is the harbour {d} run {q}",
                            f"D{d}",
                            f"Harbour {d}",
                            f"D{d}-{s}",
                            prose(20, 10 * d + s),
                            str(int(s == 1)),
                        ]
                    )
                )
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def loogle_file(tmp_path: Path) -> Path:
    rows = []
    for d in range(4):
        pairs = [{"Q": f"Question {d}.{q} about the tide?", "A": "yes", "S": "evidence"} for q in range(5)]
        # The published files store qa_pairs as a Python literal string.
        rows.append(
            {
                "context": prose(600 + 400 * d, d),
                "title": f"Doc {d}",
                "qa_pairs": str(pairs),
                "doc_id": f"d{d}",
            }
        )
    path = tmp_path / "loogle.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def sharegpt_file(tmp_path: Path) -> Path:
    convs = []
    for c in range(6):
        turns = []
        for t in range(3 + c % 3):
            turns.append({"from": "human", "value": prose(30, c * 10 + t)})
            turns.append({"from": "gpt", "value": prose(40, c * 10 + t + 5)})
        convs.append({"id": f"conv{c}", "conversations": turns})
    # The oddities of the real file: non-alternating roles, empty turns, non-text values, system, leading gpt.
    convs.append(
        {
            "id": "odd",
            "conversations": [
                {"from": "gpt", "value": "leading answer without a question"},
                {"from": "system", "value": "be brief"},
                {"from": "human", "value": "first part"},
                {"from": "human", "value": "second part"},
                {"from": "gpt", "value": ""},
                {"from": "gpt", "value": 12345},
                {"from": "human", "value": None},
                {"from": "human", "value": ["a", {"text": "list value"}]},
                {"from": "bing", "value": {"content": "dict value"}},
            ],
        }
    )
    convs.append({"id": "empty", "conversations": [{"from": "human", "value": "   "}]})
    path = tmp_path / "sharegpt.json"
    path.write_text(json.dumps(convs, indent=1), encoding="utf-8")
    return path


@pytest.fixture
def ultrachat_file(tmp_path: Path) -> Path:
    rows = []
    for c in range(4):
        msgs = []
        for t in range(4):
            msgs += [
                {"role": "user", "content": prose(25, c + t)},
                {"role": "assistant", "content": prose(35, c + t + 1)},
            ]
        rows.append({"prompt_id": f"p{c}", "prompt": msgs[0]["content"], "messages": msgs})
    rows.append({"id": 9, "data": [prose(10, 90), prose(12, 91), prose(10, 92), prose(12, 93)]})
    path = tmp_path / "ultrachat.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def mooncake_file(tmp_path: Path) -> Path:
    rows = [
        {"timestamp": 0, "input_length": 1200, "output_length": 10, "hash_ids": [1, 2, 3]},
        {"timestamp": 500, "input_length": 1100, "output_length": 20, "hash_ids": [1, 2, 4]},
        {"timestamp": 1500, "input_length": 700, "output_length": 5, "hash_ids": [5, 6]},
        {"timestamp": 2000, "input_length": 512, "output_length": 1, "hash_ids": [1]},
    ]
    path = tmp_path / "mooncake.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


BAILIAN_ROWS = [
    {
        "chat_id": 100,
        "parent_chat_id": -1,
        "timestamp": 10.0,
        "input_length": 40,
        "output_length": 8,
        "type": "text",
        "turn": 1,
        "hash_ids": [1, 2],
    },
    {
        "chat_id": 101,
        "parent_chat_id": -1,
        "timestamp": 10.5,
        "input_length": 33,
        "output_length": 4,
        "type": "text",
        "turn": 1,
        "hash_ids": [9, 10],
    },
    {
        "chat_id": 102,
        "parent_chat_id": 100,
        "timestamp": 13.0,
        "input_length": 70,
        "output_length": 6,
        "type": "text",
        "turn": 2,
        "hash_ids": [1, 2, 3, 4],
    },
    {
        "chat_id": 103,
        "parent_chat_id": 102,
        "timestamp": 20.0,
        "input_length": 96,
        "output_length": 6,
        "type": "text",
        "turn": 3,
        "hash_ids": [1, 2, 3, 4, 5, 6],
    },
]


@pytest.fixture
def bailian_jsonl(tmp_path: Path) -> Path:
    path = tmp_path / "qwen_traceA.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in BAILIAN_ROWS), encoding="utf-8")
    return path


@pytest.fixture
def bailian_csv(tmp_path: Path) -> Path:
    path = tmp_path / "qwen_traceA.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(BAILIAN_ROWS[0]))
        w.writeheader()
        for r in BAILIAN_ROWS:
            w.writerow({**r, "hash_ids": json.dumps(r["hash_ids"])})
    return path


@pytest.fixture
def azure_file(tmp_path: Path) -> Path:
    path = tmp_path / "AzureLLMInferenceTrace_conv.csv"
    path.write_text(
        "TIMESTAMP,ContextTokens,GeneratedTokens\n"
        "2023-11-16 18:15:46.6805900,374,44\n"
        "2023-11-16 18:15:50.9951690,396,109\n"
        "2023-11-16 18:15:51.2500000,879,17\n",
        encoding="utf-8",
    )
    return path
