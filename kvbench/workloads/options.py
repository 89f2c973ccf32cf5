"""Parsing of option values into one actionable error line each (exit status 2 via KvbenchError)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from kvbench.errors import fail


def choice(flag: str, value: str, options: Sequence[str]) -> str:
    v = value.strip().lower()
    if v not in options:
        raise fail(f"{flag} {value}: unknown value; choose one of {', '.join(options)}")
    return v


# Bounds checked before anything is allocated: one prompt or answer longer than any model's context is a
# typo, and a trace column's token ids are addressed with 32-bit offsets.
MAX_REQUEST_TOKENS = 1 << 24
MAX_TRACE_TOKENS = (1 << 31) - 1


def int_list(flag: str, text: str, minimum: int = 1, maximum: int = MAX_REQUEST_TOKENS) -> list[int]:
    pieces = text.replace(" ", "").split(",")
    if pieces and pieces[-1] == "":
        pieces.pop()  # a trailing comma is harmless
    try:
        values = [int(x) for x in pieces]
    except ValueError:
        raise fail(f"{flag} {text}: expected comma-separated integers like 512,1024") from None
    if not values:
        raise fail(f"{flag} {text}: give at least one value")
    bad = [v for v in values if v < minimum]
    if bad:
        raise fail(f"{flag} {text}: values must be >= {minimum} (got {bad[0]})")
    big = [v for v in values if v > maximum]
    if big:
        raise fail(f"{flag} {text}: values must be <= {maximum:,} (got {big[0]:,})")
    return values


def int_range(flag: str, text: str) -> tuple[int, int]:
    values = int_list(flag, text, minimum=1)
    if len(values) != 2 or values[0] > values[1]:
        raise fail(f"{flag} {text}: expected MIN,MAX with MIN <= MAX, e.g. 1000,8000")
    return values[0], values[1]


def at_least(flag: str, value: int | float | None, minimum: int | float,
             maximum: int | float | None = None) -> None:
    if value is not None and value < minimum:
        raise fail(f"{flag} {value}: must be >= {minimum}")
    if value is not None and maximum is not None and value > maximum:
        raise fail(f"{flag} {value}: must be <= {maximum:,}")


def total_tokens_fit(what: str, total: int, advice: str) -> None:
    if total > MAX_TRACE_TOKENS:
        raise fail(f"{what}: {total:,} prompt tokens in all, more than a trace holds ({MAX_TRACE_TOKENS:,}); {advice}")


def input_file(flag: str, path: Path) -> Path:
    if not path.exists():
        raise fail(f"{flag} {path}: no such file; check the path")
    if path.is_dir():
        raise fail(f"{flag} {path}: is a directory; give the data file itself")
    return path
