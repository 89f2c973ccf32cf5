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
from kvbench.hashing import coarsen

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

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, default=str)

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

    @property
    def block_size(self) -> int:
        return self.meta.block_size

    def __len__(self) -> int:
        return len(self.df)

    def hash_ids_at(self, block_size: int) -> list[np.ndarray]:
        """Hash ids per request at another block size (a multiple of the trace's)."""
        return hash_ids_at(self, block_size)


def _frame_to_table(df: pd.DataFrame) -> pa.Table:
    df = df.copy()
    for col, default in COLUMN_DEFAULTS.items():
        if col not in df.columns:
            df[col] = default
    if "user_tokens" not in df.columns:
        df["user_tokens"] = df["input_tokens"]
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise fail(f"trace is missing column(s) {', '.join(missing)}")
    return pa.Table.from_pandas(df[[f.name for f in TRACE_SCHEMA]], schema=TRACE_SCHEMA, preserve_index=False)


def write_trace(path: str | Path, df: pd.DataFrame | pa.Table, meta: TraceMeta) -> Path:
    """Validate then write atomically; same rows and metadata give byte-identical files."""
    table = df if isinstance(df, pa.Table) else _frame_to_table(df)
    table = table.replace_schema_metadata({META_KEY: meta.to_json().encode()})
    validate_table(table, meta, str(path))
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd", row_group_size=4096)
    return Path(path)


def read_trace(path: str | Path) -> Trace:
    p = Path(path)
    if not p.exists():
        raise fail(f"{p}: no such trace file; create one with `kvbench generate ...`")
    try:
        pf = pq.ParquetFile(p)
        table = pf.read()
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
    validate_table(table, meta, str(p))
    df = table.to_pandas()
    return Trace(df=df, meta=meta, path=p)


def validate_table(table: pa.Table, meta: TraceMeta, where: str) -> None:
    """Raise one actionable line for the first problem found."""
    names = set(table.column_names)
    for col in REQUIRED_COLUMNS:
        if col not in names:
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


def hash_ids_at(trace: Trace, block_size: int) -> list[np.ndarray]:
    """Callers pass a resolved block size (kvbench.resolve checks the multiple, once, naming the flag)."""
    base = trace.block_size
    if block_size % base:
        raise ValueError(f"block size {block_size} is not a multiple of the trace's block size {base}")
    k = block_size // base
    col = trace.df["hash_ids"]
    if k == 1:
        return [np.asarray(h, dtype=np.int64) for h in col]
    return [coarsen(np.asarray(h, dtype=np.int64), k) for h in col]


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

    A hit stops at the first unseen block, and (as in vLLM) the last prompt token is always
    recomputed, so at most ``(input_tokens - 1) // block_size`` blocks hit.
    """
    seen: set[int] = set()
    hits = np.zeros(len(hash_lists), dtype=np.int64)
    idx = range(len(hash_lists)) if order is None else order
    for i in idx:
        hs = hash_lists[i]
        cap = max(0, (int(input_tokens[i]) - 1) // block_size)
        n = 0
        for h in hs[:cap].tolist():
            if h in seen:
                n += 1
            else:
                break
        hits[i] = n * block_size
        seen.update(hs.tolist())
    return hits


def ideal_hit_rate(trace: Trace, block_size: int | None = None, warmup: np.ndarray | None = None) -> float:
    """``warmup`` (a row mask, see :func:`warmup_mask`): those rows are seen first and left out of the rate,
    as a replay with ``--warmup`` measures only the requests after its barrier."""
    bs = block_size or trace.block_size
    hashes = hash_ids_at(trace, bs)
    inp = trace.df["input_tokens"].to_numpy()
    order = replay_order(trace.df)
    measured = np.ones(len(inp), dtype=bool)
    if warmup is not None and warmup.any():
        order = np.concatenate([order[warmup[order]], order[~warmup[order]]])
        measured = ~warmup
    total = int(inp[measured].sum())
    if total == 0:
        return 0.0
    return float(ideal_hits(hashes, inp, bs, order)[measured].sum()) / total
