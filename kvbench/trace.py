"""The trace format: one Parquet row per request, the schema written down once.

Documented in docs/trace-format.md. Sessions are closed loop (a turn is released when the previous turn
of its session has finished plus ``think_s``); single-shot requests are open loop at ``arrival_s``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from kvbench.errors import fail
from kvbench.fsutil import atomic_path
from kvbench.hashing import coarsen, source_block_hashes

FORMAT_VERSION = "1"
META_KEY = b"kvbench.trace"

TRACE_SCHEMA = pa.schema(
    [
        pa.field("request_id", pa.string(), nullable=False),
        pa.field("arrival_s", pa.float64(), nullable=False),
        pa.field("session_id", pa.string()),  # null for single-shot requests
        pa.field("turn", pa.int32(), nullable=False),
        pa.field("think_s", pa.float64(), nullable=False),
        pa.field("group_id", pa.string()),  # document / conversation / prefix group
        pa.field("input_tokens", pa.int32(), nullable=False),
        pa.field("output_tokens", pa.int32(), nullable=False),
        pa.field("user_tokens", pa.int32(), nullable=False),  # new tokens of this turn at the prompt's end
        pa.field("prompt", pa.string()),
        pa.field("prompt_token_ids", pa.list_(pa.int32())),
        pa.field("hash_ids", pa.list_(pa.int64()), nullable=False),
    ]
)
# Hash-only imports (Mooncake, Bailian, Azure without --token-ids) add these and leave ``hash_ids`` empty: the
# source's block ids (``TraceMeta.source_block`` tokens each; the last may be partial) and the row's number in
# the import, which keys the tokens the source does not list. Hash ids at any block size are derived from them
# (kvbench.hashing.source_block_hashes) and prompts are synthesized when sent.
SOURCE_FIELDS = (
    pa.field("source_ids", pa.list_(pa.int64()), nullable=False),
    pa.field("source_row", pa.int64(), nullable=False),
)
REQUIRED_COLUMNS = ("request_id", "arrival_s", "input_tokens", "output_tokens", "hash_ids")
COLUMN_DEFAULTS: dict[str, Any] = {"session_id": None, "turn": 0, "think_s": 0.0, "group_id": None,
                                   "prompt": None, "prompt_token_ids": None}


@dataclass
class TraceMeta:
    """File-level metadata stored as JSON under the Parquet key ``kvbench.trace``."""

    generator: str
    block_size: int = 16
    seed: int | None = None
    tokenizer: str = "kvbench-builtin-v1"
    params: dict[str, Any] = field(default_factory=dict)
    synthetic: bool = False
    source: str = ""  # dataset / file the trace came from, or a description of the synthetic stand-in
    format_version: str = FORMAT_VERSION
    source_block: int = 0  # > 0: a hash-only trace, hash ids derived from SOURCE_FIELDS (blocks of this size)

    @property
    def hash_only(self) -> bool:
        return self.source_block > 0

    def to_json(self) -> str:
        data = asdict(self)
        if not self.source_block:
            del data["source_block"]  # traces with stored hash ids keep the metadata they always had
        return json.dumps(data, sort_keys=True, default=str)

    @classmethod
    def from_json(cls, text: str | bytes) -> "TraceMeta":
        data = json.loads(text)
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


@dataclass
class Trace:
    df: pd.DataFrame
    meta: TraceMeta
    path: Path | None = None
    # a hash-only trace's derived hash ids by block size: derived once per trace and block size
    derived: dict[int, list[np.ndarray]] = field(default_factory=dict, repr=False, compare=False)

    @property
    def block_size(self) -> int:
        return self.meta.block_size

    def __len__(self) -> int:
        return len(self.df)

    def hash_ids_at(self, block_size: int) -> list[np.ndarray]:
        """Hash ids per request at another block size (a multiple of the trace's)."""
        return hash_ids_at(self, block_size)


def trace_schema(meta: TraceMeta) -> pa.Schema:
    return pa.schema([*TRACE_SCHEMA, *SOURCE_FIELDS]) if meta.hash_only else TRACE_SCHEMA


def _frame_to_table(df: pd.DataFrame, meta: TraceMeta) -> pa.Table:
    df = df.copy()
    for col, default in COLUMN_DEFAULTS.items():
        if col not in df.columns:
            df[col] = default
    if "user_tokens" not in df.columns:
        df["user_tokens"] = df["input_tokens"]
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise fail(f"trace is missing column(s) {', '.join(missing)}")
    schema = trace_schema(meta)
    missing = [f.name for f in SOURCE_FIELDS if meta.hash_only and f.name not in df.columns]
    if missing:
        raise fail(f"hash-only trace is missing column(s) {', '.join(missing)}")
    return pa.Table.from_pandas(df[[f.name for f in schema]], schema=schema, preserve_index=False)


def write_trace(path: str | Path, df: pd.DataFrame | pa.Table, meta: TraceMeta) -> Path:
    """Validate then write atomically; same rows and metadata give byte-identical files."""
    table = df if isinstance(df, pa.Table) else _frame_to_table(df, meta)
    table = table.replace_schema_metadata({META_KEY: meta.to_json().encode()})
    validate_table(table, meta, str(path))
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd", row_group_size=4096)
    return Path(path)


def read_trace(path: str | Path, skip: tuple[str, ...] = ()) -> Trace:
    """``skip``: optional columns not to load (``prompt``, ``prompt_token_ids``), e.g. to summarize a trace whose
    materialized prompts would take most of the memory. The Arrow table is freed column by column as the frame
    is built, so a large trace is not held twice."""
    p = Path(path)
    if not p.exists():
        raise fail(f"{p}: no such trace file; create one with `kvbench generate ...`")
    try:
        pf = pq.ParquetFile(p)
        names = pf.schema_arrow.names
        table = pf.read(columns=[c for c in names if c not in skip] if skip else None)
    except Exception as exc:
        raise fail(f"{p}: not a readable Parquet trace ({type(exc).__name__}); regenerate it with `kvbench generate`") from None
    raw = (table.schema.metadata or {}).get(META_KEY)
    if raw is None:
        raise fail(f"{p}: no kvbench trace metadata; import foreign traces with `kvbench generate trace --format ...`")
    try:
        meta = TraceMeta.from_json(raw)
    except (ValueError, TypeError) as exc:
        raise fail(f"{p}: corrupt kvbench trace metadata ({exc})") from None
    if meta.format_version != FORMAT_VERSION:
        raise fail(f"{p}: trace format_version {meta.format_version!r} is not one this kvbench reads "
                   f"({FORMAT_VERSION!r}); regenerate the trace with this version's `kvbench generate`")
    validate_table(table, meta, str(p), partial=bool(skip))
    df = table.to_pandas(split_blocks=True, self_destruct=True)
    del table
    return Trace(df=df, meta=meta, path=p)


def validate_table(table: pa.Table, meta: TraceMeta, where: str, partial: bool = False) -> None:
    """Raise one actionable line for the first problem found. ``partial``: columns were left out on purpose
    (:func:`read_trace`'s ``skip``); the checks of those are skipped."""
    names = set(table.column_names)
    for col in REQUIRED_COLUMNS:
        if col not in names and not partial:
            raise fail(f"{where}: missing column '{col}'; see docs/trace-format.md")
    if meta.block_size <= 0:
        raise fail(f"{where}: block_size {meta.block_size} in metadata must be positive")
    if table.num_rows == 0:
        raise fail(f"{where}: the trace has no requests")
    for col in ("input_tokens", "output_tokens"):
        arr = table.column(col).to_numpy()
        if (arr < 0).any():
            row = int(np.argmax(arr < 0))
            raise fail(f"{where}: field '{col}' is negative in row {row}; lengths must be >= 0")
    rid = table.column("request_id")
    if rid.null_count:
        raise fail(f"{where}: field 'request_id' has nulls")
    if len(pa.compute.unique(rid)) != table.num_rows:
        raise fail(f"{where}: field 'request_id' has duplicates; ids must be unique")
    arrival = table.column("arrival_s").to_numpy()
    if not np.isfinite(arrival).all() or (arrival < 0).any():
        raise fail(f"{where}: field 'arrival_s' must be finite and >= 0")
    inp = table.column("input_tokens").to_numpy()
    n_hash = pa.compute.list_value_length(table.column("hash_ids")).to_numpy(zero_copy_only=False)
    if meta.hash_only:
        _validate_source(table, meta, where, n_hash)
        return
    bad = np.nonzero(n_hash != inp // meta.block_size)[0]
    if len(bad):
        r = int(bad[0])
        raise fail(f"{where}: row {r}: {n_hash[r]} hash_ids but input_tokens {inp[r]} // block_size "
                   f"{meta.block_size} = {inp[r] // meta.block_size}; hash_ids cover full blocks only")
    if "prompt_token_ids" in names:
        col = table.column("prompt_token_ids")
        lens = pa.compute.list_value_length(col).to_numpy(zero_copy_only=False)
        has = ~pa.compute.is_null(col).to_numpy(zero_copy_only=False)
        bad = np.nonzero(has & (lens != inp))[0]
        if len(bad):
            r = int(bad[0])
            raise fail(f"{where}: row {r}: {lens[r]} prompt_token_ids but input_tokens {inp[r]}")


def _validate_source(table: pa.Table, meta: TraceMeta, where: str, n_hash: np.ndarray) -> None:
    names = set(table.column_names)
    for f in SOURCE_FIELDS:
        if f.name not in names:
            raise fail(f"{where}: hash-only trace (source_block {meta.source_block}) without column '{f.name}'; "
                       f"re-import it with `kvbench generate trace`")
        if table.column(f.name).null_count:
            raise fail(f"{where}: field '{f.name}' has nulls; every row of a hash-only trace needs it")
    if (n_hash != 0).any():
        r = int(np.argmax(n_hash != 0))
        raise fail(f"{where}: row {r}: a hash-only trace derives its hash_ids from source_ids; hash_ids must be "
                   f"empty")


def hash_ids_at(trace: Trace, block_size: int) -> list[np.ndarray]:
    """Callers pass a resolved block size (kvbench.resolve checks the multiple, once, naming the flag)."""
    base = trace.block_size
    if block_size % base:
        raise ValueError(f"block size {block_size} is not a multiple of the trace's block size {base}")
    if trace.meta.hash_only:
        if block_size not in trace.derived:
            trace.derived[block_size] = source_hash_ids(trace.df, trace.meta, block_size)
        return trace.derived[block_size]
    k = block_size // base
    col = trace.df["hash_ids"]
    if k == 1:
        return [np.asarray(h, dtype=np.int64) for h in col]
    return [coarsen(np.asarray(h, dtype=np.int64), k) for h in col]


def source_arrays(df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A hash-only trace's source ids back to back, how many each row has, and where each row's start."""
    lists = df["source_ids"].tolist()
    count = np.fromiter((len(x) for x in lists), dtype=np.int64, count=len(lists))
    flat = np.concatenate(lists).astype(np.int64, copy=False) if count.sum() else np.zeros(0, dtype=np.int64)
    start = np.zeros(len(count) + 1, dtype=np.int64)
    np.cumsum(count, out=start[1:])
    return flat, count, start[:-1]


def source_hash_ids(df: pd.DataFrame, meta: TraceMeta, block_size: int,
                    chunk_blocks: int = 1 << 20) -> list[np.ndarray]:
    """A hash-only trace's hash ids per row (see :func:`kvbench.hashing.source_block_hashes`), derived in
    chunks of about ``chunk_blocks`` blocks so the temporaries stay small next to the result."""
    flat, count, start = source_arrays(df)
    inp = df["input_tokens"].to_numpy(dtype=np.int64)
    rows = df["source_row"].to_numpy(dtype=np.int64)
    ends = np.cumsum(inp // block_size)
    out: list[np.ndarray] = []
    lo = 0
    while lo < len(inp):
        hi = max(lo + 1, int(np.searchsorted(ends, (ends[lo - 1] if lo else 0) + chunk_blocks, side="right")))
        ids = flat[start[lo]:start[lo] + count[lo:hi].sum()]
        hashes, counts = source_block_hashes(ids, count[lo:hi], inp[lo:hi], meta.source_block, block_size,
                                             rows[lo:hi], meta.seed or 0)
        out.extend(np.split(hashes, np.cumsum(counts)[:-1]) if hi - lo > 1 else [hashes])
        lo = hi
    return out


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def replay_order(df: pd.DataFrame) -> np.ndarray:
    """Row order a single sequential server would see: by arrival, sessions by turn."""
    key = df["arrival_s"].to_numpy()
    return np.lexsort((df["turn"].to_numpy(), key))


def warmup_mask(df: pd.DataFrame, n: int) -> np.ndarray:
    """Which rows ``--warmup n`` sends before the measured part (a bool per row of ``df``).

    The warm-up is made of whole units taken in replay order: an open-loop request is one unit, a session
    (closed loop, every turn) is one unit placed where its first turn comes in replay order. Units are taken
    until they hold at least ``n`` requests, so a session never straddles the barrier (its later turns wait
    on its earlier ones) and a trace of open-loop requests warms up with exactly its first ``n``.
    """
    mask = np.zeros(len(df), dtype=bool)
    if n <= 0:
        return mask
    sessions = df["session_id"].to_numpy(dtype=object)
    members: dict[Any, list[int]] = {}
    units: list[Any] = []
    for i in replay_order(df).tolist():
        sid = sessions[i]
        key = ("row", i) if pd.isna(sid) else ("session", str(sid))
        if key not in members:
            members[key] = []
            units.append(key)
        members[key].append(i)
    taken = 0
    for key in units:
        if taken >= n:
            break
        mask[members[key]] = True
        taken += len(members[key])
    return mask


def ideal_hits(hash_lists: list[np.ndarray], input_tokens: np.ndarray, block_size: int,
               order: np.ndarray | None = None) -> np.ndarray:
    """Cached tokens per request with an infinite cache on one node, processed in ``order``.

    A hit stops at the first block no earlier request had, and (as in vLLM) the last prompt token is always
    recomputed, so at most ``(input_tokens - 1) // block_size`` blocks hit. Vectorised: a block was seen
    before a request when its first occurrence belongs to a request processed earlier (one sort of all block
    ids, instead of a Python set of millions of them).
    """
    n = len(hash_lists)
    idx = np.arange(n) if order is None else np.asarray(order, dtype=np.int64)
    counts = np.fromiter((len(hash_lists[i]) for i in idx), dtype=np.int64, count=len(idx))
    hits = np.zeros(n, dtype=np.int64)
    if counts.sum() == 0:
        return hits
    flat = np.concatenate([np.asarray(hash_lists[i], dtype=np.int64) for i in idx])
    first = first_occurrence(flat)
    del flat
    rank = np.repeat(np.arange(len(idx), dtype=np.int32), counts)
    unseen = rank[first] == rank  # first seen in this request (no earlier one had it)
    del first
    starts = np.zeros(len(idx), dtype=np.int64)
    np.cumsum(counts[:-1], out=starts[1:])
    run = counts.copy()  # leading seen blocks per request: up to its first unseen block
    where = np.nonzero(unseen)[0]
    ranked = rank[where]  # non-decreasing: the requests' blocks are back to back
    head = np.ones(len(where), dtype=bool)
    np.not_equal(ranked[1:], ranked[:-1], out=head[1:])
    ranks = ranked[head]
    run[ranks] = where[head] - starts[ranks]
    cap = np.maximum(0, (np.asarray(input_tokens, dtype=np.int64)[idx] - 1) // block_size)
    hits[idx] = np.minimum(run, cap) * block_size
    return hits


def first_occurrence(values: np.ndarray) -> np.ndarray:
    """For each element, the index of the first element equal to it (one sort; numpy's hashing
    ``unique`` was several times slower on millions of block ids). Indices are int32 when they fit, and each
    temporary is dropped as soon as it is used: a one-hour trace has 9M block ids."""
    idx = np.int32 if len(values) < 2**31 else np.int64
    order = np.argsort(values).astype(idx)  # not stable: each group's first index is its minimum instead
    ordered = values[order]
    starts = np.ones(len(values), dtype=bool)
    np.not_equal(ordered[1:], ordered[:-1], out=starts[1:])
    del ordered
    group = np.cumsum(starts, dtype=idx)
    group -= 1
    firsts = np.minimum.reduceat(order, np.flatnonzero(starts))
    del starts
    out = np.empty(len(values), dtype=idx)
    out[order] = firsts[group]
    return out


def ideal_hit_rate(trace: Trace, block_size: int | None = None, warmup: np.ndarray | None = None) -> float:
    """``warmup`` (a row mask, see :func:`warmup_mask`): those rows are seen first and left out of the rate,
    as a replay with ``--warmup`` measures only the requests after its barrier."""
    bs = block_size or trace.block_size
    inp = trace.df["input_tokens"].to_numpy()
    order = replay_order(trace.df)
    measured = np.ones(len(inp), dtype=bool)
    if warmup is not None and warmup.any():
        order = np.concatenate([order[warmup[order]], order[~warmup[order]]])
        measured = ~warmup
    total = int(inp[measured].sum())
    if total == 0:
        return 0.0
    hits = (source_ideal_hits(trace, bs, order) if trace.meta.hash_only
            else ideal_hits(hash_ids_at(trace, bs), inp, bs, order))
    return float(hits[measured].sum()) / total


def source_ideal_hits(trace: Trace, block_size: int, order: np.ndarray) -> np.ndarray:
    """:func:`ideal_hits` of a hash-only trace, walking source blocks instead of sorting every block id.

    A block of a hash-only trace is seen before exactly when an earlier request shares the source prefix up to
    the source block holding the block's last token and has that block in full
    (:func:`kvbench.hashing.source_block_hashes`). So it is enough to remember, per source prefix, the most
    full blocks any request through it had: 290k source blocks instead of 9M block ids on a one-hour trace.
    """
    from kvbench.hashing import source_prefixes

    sb, bs = trace.meta.source_block, block_size
    flat, count, start = source_arrays(trace.df)
    prefix = source_prefixes(flat, count, trace.meta.seed or 0).tolist()
    inp = trace.df["input_tokens"].to_numpy(dtype=np.int64)
    most: dict[int, int] = {}  # source prefix -> the most full blocks of a request through it so far
    hits = np.zeros(len(inp), dtype=np.int64)
    for i in np.asarray(order).tolist():
        n, c, at = int(inp[i]) // bs, int(count[i]), int(start[i])
        own = prefix[at:at + c]
        hit = min(n, (c * sb) // bs)  # blocks ending within the listed source blocks (later ones are its own)
        for s, v in enumerate(own):
            first = s * sb // bs  # the blocks whose last token lies in source block s: first..last
            last = min((s + 1) * sb // bs, n) - 1
            if first > last:
                continue
            seen = most.get(v, 0)
            if seen <= last:  # block ``max(first, seen)`` is the first no earlier request had
                hit = max(first, seen)
                break
        hits[i] = min(hit, max(0, (int(inp[i]) - 1) // bs)) * bs
        for v in own:
            if most.get(v, 0) < n:
                most[v] = n
    return hits
