"""Assemble generated requests into the trace table (kvbench.trace.trace_schema) and write it.

Generators hand over columns plus the token ids of every prompt; hash ids, lengths and the Arrow list
columns are computed here once, vectorised, for every workload family.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, TypeVar

import numpy as np
import pyarrow as pa

from kvbench.errors import fail
from kvbench.hashing import block_hashes_many
from kvbench.trace import TraceMeta, trace_schema, write_trace

T = TypeVar("T")


@dataclass
class Rows:
    """Column lists, one entry per request, in any order (rows are sorted by arrival on build)."""

    request_id: list[str] = field(default_factory=list)
    arrival_s: list[float] = field(default_factory=list)
    session_id: list[str | None] = field(default_factory=list)
    turn: list[int] = field(default_factory=list)
    think_s: list[float] = field(default_factory=list)
    group_id: list[str | None] = field(default_factory=list)
    output_tokens: list[int] = field(default_factory=list)
    user_tokens: list[int | None] = field(default_factory=list)  # None: the whole prompt is new
    prompt: list[str | None] = field(default_factory=list)
    tokens: list[np.ndarray | None] = field(default_factory=list)
    # Imports hash in chunks as they synthesize tokens and may drop the tokens afterwards:
    hash_ids: list[np.ndarray | None] = field(default_factory=list)
    input_tokens: list[int] = field(default_factory=list)
    # hash-only imports (kvbench.trace.SOURCE_FIELDS): the source's block ids and the row's import number
    source_ids: list[np.ndarray] = field(default_factory=list)
    source_row: list[int] = field(default_factory=list)

    def add(
        self,
        *,
        request_id: str,
        arrival_s: float,
        tokens: np.ndarray | None,
        output_tokens: int,
        session_id: str | None = None,
        turn: int = 0,
        think_s: float = 0.0,
        group_id: str | None = None,
        user_tokens: int | None = None,
        prompt: str | None = None,
        hash_ids: np.ndarray | None = None,
        input_tokens: int | None = None,
        source: tuple[np.ndarray, int] | None = None,
    ) -> None:
        if tokens is None and (hash_ids is None or input_tokens is None):
            raise ValueError("a request without tokens needs its hash_ids and input_tokens")
        self.hash_ids.append(hash_ids)
        self.input_tokens.append(len(tokens) if tokens is not None else int(input_tokens or 0))
        self.request_id.append(request_id)
        self.arrival_s.append(float(arrival_s))
        self.session_id.append(session_id)
        self.turn.append(int(turn))
        self.think_s.append(float(think_s))
        self.group_id.append(group_id)
        self.output_tokens.append(int(output_tokens))
        self.user_tokens.append(user_tokens)
        self.prompt.append(prompt)
        self.tokens.append(tokens)
        if source is not None:
            self.source_ids.append(source[0])
            self.source_row.append(source[1])

    def __len__(self) -> int:
        return len(self.request_id)


def _list_array(values: np.ndarray, lengths: np.ndarray, typ: pa.DataType) -> pa.Array:
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    if offsets[-1] > np.iinfo(np.int32).max:
        raise fail(
            "the trace holds more than 2^31 prompt tokens; lower --max-requests or pass --no-token-ids"
        )
    return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(values, type=typ))


def build_table(rows: Rows, meta: TraceMeta, keep_token_ids: bool = True) -> pa.Table:
    """The Arrow table in the trace's schema; hash ids cover full blocks only (none in a hash-only trace)."""
    block_size = meta.block_size
    n = len(rows)
    if n == 0:
        raise fail("no requests were generated; check the input data and the selection options")
    arrival = np.asarray(rows.arrival_s, dtype=np.float64)
    order = np.argsort(arrival, kind="stable")
    lengths = np.asarray(rows.input_tokens, dtype=np.int64)[order]
    have_tokens = all(t is not None for t in rows.tokens)
    flat = np.zeros(0, dtype=np.int32)
    if have_tokens and lengths.sum():
        flat = np.concatenate([np.asarray(rows.tokens[i], dtype=np.int32) for i in order])
    if meta.hash_only:
        if len(rows.source_ids) != n:
            raise ValueError("a hash-only trace needs the source ids of every request")
        counts, hashes = np.zeros(n, dtype=np.int64), np.zeros(0, dtype=np.int64)
    elif all(h is not None for h in rows.hash_ids):
        counts = np.fromiter((len(rows.hash_ids[i]) for i in order), dtype=np.int64, count=n)  # type: ignore[arg-type]
        hashes = np.concatenate([rows.hash_ids[i] for i in order]) if counts.sum() else np.zeros(0, np.int64)
    else:
        if not have_tokens:
            raise ValueError("requests without tokens must all carry hash_ids")
        hashes, counts = block_hashes_many(flat, lengths, block_size)
    keep_token_ids = keep_token_ids and have_tokens
    user = np.array(
        [lengths[k] if rows.user_tokens[i] is None else rows.user_tokens[i] for k, i in enumerate(order)],
        dtype=np.int64,
    )

    def col(values: list[Any]) -> list[Any]:
        return [values[i] for i in order]

    columns = {
        "request_id": pa.array(col(rows.request_id), pa.string()),
        "arrival_s": pa.array(arrival[order], pa.float64()),
        "session_id": pa.array(col(rows.session_id), pa.string()),
        "turn": pa.array(np.asarray(rows.turn, dtype=np.int32)[order], pa.int32()),
        "think_s": pa.array(np.asarray(rows.think_s, dtype=np.float64)[order], pa.float64()),
        "group_id": pa.array(col(rows.group_id), pa.string()),
        "input_tokens": pa.array(lengths.astype(np.int32), pa.int32()),
        "output_tokens": pa.array(np.asarray(rows.output_tokens, dtype=np.int32)[order], pa.int32()),
        "user_tokens": pa.array(user.astype(np.int32), pa.int32()),
        "prompt": pa.array(col(rows.prompt), pa.string()),
        "prompt_token_ids": _list_array(flat, lengths, pa.int32())
        if keep_token_ids
        else pa.nulls(n, pa.list_(pa.int32())),
        "hash_ids": _list_array(hashes, counts, pa.int64()),
    }
    schema = trace_schema(meta)
    if meta.hash_only:
        src_count = np.fromiter((len(rows.source_ids[i]) for i in order), dtype=np.int64, count=n)
        src_flat = (np.concatenate([rows.source_ids[i] for i in order]) if src_count.sum()
                    else np.zeros(0, dtype=np.int64))
        columns["source_ids"] = _list_array(src_flat, src_count, pa.int64())
        columns["source_row"] = pa.array(np.asarray(rows.source_row, dtype=np.int64)[order], pa.int64())
    return pa.Table.from_arrays([columns[f.name] for f in schema], schema=schema)


def write(output: Path, rows: Rows, meta: TraceMeta, keep_token_ids: bool = True) -> Path:
    table = build_table(rows, meta, keep_token_ids)
    path = write_trace(output, table, meta)
    warn(f"wrote {table.num_rows} requests to {path}")
    return path


def warn(message: str) -> None:
    print(f"kvbench: {message}", file=sys.stderr)


def tracked(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """Iterate with a rich progress bar on stderr (shown only on a terminal, cleared when done)."""
    if not sys.stderr.isatty():
        yield from items
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as progress:
        task = progress.add_task(description, total=total)
        for item in items:
            yield item
            progress.advance(task)
