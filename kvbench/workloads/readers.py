"""Reading local data files and the Hugging Face hub, with errors that name the file, line and field.

Ctrl-C while reading a large file keeps the rows read so far (with a warning), so a partial import is
still usable.
"""

from __future__ import annotations

import csv
import json
import os
import socket
import sys
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import urlparse

from kvbench.errors import fail
from kvbench.workloads.options import MAX_REQUEST_TOKENS

csv.field_size_limit(min(sys.maxsize, 2**31 - 1))

Row = tuple[int, dict[str, Any]]  # (line or row number, record)


def _first_char(path: Path, expected: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            while True:
                chunk = f.read(4096)
                if not chunk:
                    raise fail(f"{path}: the file is empty; expected {expected}")
                stripped = chunk.lstrip()
                if stripped:
                    return stripped[0]
    except UnicodeDecodeError:
        raise fail(f"{path}: not UTF-8 text; expected {expected}") from None


def records(path: Path, expected: str) -> Iterator[Row]:
    """JSON (a list of objects, or one object wrapping such a list) or JSON Lines."""
    for where, rec in _records(path, expected):
        _no_lone_surrogates(path, where, rec)
        yield where, rec


def _no_lone_surrogates(path: Path, where: int, value: Any) -> None:
    """JSON may escape half of a UTF-16 pair ("\\ud800"); such text cannot be encoded, tokenized or written."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            bad = value[exc.start]
            raise fail(f"{path}:{where}: text holds an unpaired surrogate ({bad!r}), which is not valid Unicode; "
                       f"fix or delete that record") from None
    elif isinstance(value, dict):
        for v in value.values():
            _no_lone_surrogates(path, where, v)
    elif isinstance(value, list):
        for v in value:
            _no_lone_surrogates(path, where, v)


def _records(path: Path, expected: str) -> Iterator[Row]:
    first = _first_char(path, expected)
    if first == "[":
        yield from _read_json_array(path, expected)
        return
    if first != "{":
        raise fail(
            f"{path}: does not look like JSON or JSON Lines (starts with {first!r}); expected {expected}"
        )
    wrapped = _wrapped_list(path)
    if wrapped is not None:
        for i, rec in enumerate(wrapped):
            yield i, rec
        return
    yield from read_jsonl(path, expected)


def _wrapped_list(path: Path) -> list[dict[str, Any]] | None:
    """A pretty-printed ``{"data": [{...}, ...]}`` file (its first line alone is not valid JSON)."""
    with open(path, encoding="utf-8") as f:
        first_line = f.readline()
    try:
        json.loads(first_line)
        return None  # JSON Lines
    except json.JSONDecodeError:
        pass
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError:
        return None  # let the line reader name the bad line
    if isinstance(data, dict):
        lists = [v for v in data.values() if isinstance(v, list) and all(isinstance(x, dict) for x in v)]
        if len(lists) == 1:
            return lists[0]
    return None


def _read_json_array(path: Path, expected: str) -> Iterator[Row]:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as exc:
        raise fail(f"{path}:{exc.lineno}: malformed JSON ({exc.msg}); expected {expected}") from None
    for i, rec in enumerate(data):
        if not isinstance(rec, dict):
            raise fail(f"{path}: item {i} is a {type(rec).__name__}, not an object; expected {expected}")
        yield i, rec


def read_jsonl(path: Path, expected: str) -> Iterator[Row]:
    try:
        with open(path, encoding="utf-8") as f:
            for line_no, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise fail(
                        f"{path}:{line_no}: malformed JSON line ({exc.msg}); fix or delete that line"
                    ) from None
                if not isinstance(rec, dict):
                    raise fail(
                        f"{path}:{line_no}: expected a JSON object per line, got {type(rec).__name__}; "
                        f"expected {expected}"
                    )
                yield line_no, rec
    except UnicodeDecodeError:
        raise fail(f"{path}: not UTF-8 text; expected {expected}") from None


def read_table(path: Path, expected: str, delimiter: str, required: tuple[str, ...]) -> Iterator[Row]:
    """CSV/TSV rows as dicts (row numbers are file line numbers); checks the header first."""
    _first_char(path, expected)
    try:
        with open(path, encoding="utf-8", newline="") as f:
            quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
            reader = csv.DictReader(f, delimiter=delimiter, quoting=quoting)
            header = [h.strip() for h in (reader.fieldnames or [])]
            missing = [c for c in required if c not in header]
            if missing:
                raise fail(f"{path}: missing column '{missing[0]}' in the header; expected {expected}")
            reader.fieldnames = header
            try:
                for rec in reader:
                    if None in rec:
                        raise fail(
                            f"{path}:{reader.line_num}: more fields than the header has; expected {expected}"
                        )
                    yield reader.line_num, rec
            except csv.Error as exc:
                raise fail(
                    f"{path}:{reader.line_num}: malformed row ({exc}); fix or delete that line"
                ) from None
    except UnicodeDecodeError:
        raise fail(f"{path}: not UTF-8 text; expected {expected}") from None


def hub_rows(
    flag: str,
    repo: str,
    split: str,
    expected_input: str,
    config: str | None = None,
    data_files: str | None = None,
) -> Iterator[Row]:
    """Rows of a hub dataset via ``datasets``; offline it fails fast with what to do instead."""
    hint = f"pass --input FILE ({expected_input}) or --synthetic"
    offline = any(
        os.environ.get(k, "").lower() in ("1", "true", "yes")
        for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    )
    if not offline:
        endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
        try:
            socket.create_connection(
                (endpoint.hostname or "huggingface.co", endpoint.port or 443), timeout=3
            ).close()
        except OSError:
            raise fail(f"{flag}: cannot reach the Hugging Face hub to download {repo}; {hint}") from None
    try:
        import datasets

        kwargs: dict[str, Any] = {"split": split}
        if data_files:
            kwargs["data_files"] = data_files
        ds = (
            datasets.load_dataset(repo, config, **kwargs) if config else datasets.load_dataset(repo, **kwargs)
        )
    except Exception as exc:  # datasets raises many types (connection, missing cache, not found)
        first = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        raise fail(f"{flag}: could not load {repo} from the Hugging Face hub ({first}); {hint}") from None
    for i, rec in enumerate(ds):
        yield i, dict(rec)


def as_text(value: Any) -> str:
    """Real datasets hold numbers, nulls, lists and dicts where text is expected: keep the text in them."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, list):
        return "\n".join(t for t in (as_text(v) for v in value) if t)
    if isinstance(value, dict):
        for key in ("text", "content", "value"):
            if key in value:
                return as_text(value[key])
        return json.dumps(value, sort_keys=True, ensure_ascii=False)
    return str(value)


def lengths_field(path: Path | str, where: int, rec: dict[str, Any], name: str) -> int:
    """A non-negative integer field, or one line naming the file, line and field."""
    if name not in rec or rec[name] is None or rec[name] == "":
        raise fail(f"{path}:{where}: missing field '{name}'")
    try:
        value = float(rec[name])
    except (TypeError, ValueError):
        raise fail(f"{path}:{where}: field '{name}' is {rec[name]!r}, not a number") from None
    if value != value or value < 0:
        raise fail(f"{path}:{where}: field '{name}' is negative ({rec[name]}); lengths must be >= 0")
    if value > MAX_REQUEST_TOKENS:
        raise fail(f"{path}:{where}: field '{name}' is {rec[name]}, more than {MAX_REQUEST_TOKENS:,} tokens; "
                   f"fix or delete that line")
    return int(value)
