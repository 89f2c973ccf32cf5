"""Importing public request traces: Mooncake (FAST'25), Alibaba Bailian (Qwen), Azure LLM inference.

The sources carry lengths and (except Azure) block hash ids, not text. Prompt tokens are synthesized
from the source ids: every token is a pure function of (source block id, position in that block, seed),
so equal source ids give identical token blocks and different ids give different blocks; positions not
covered by a source id (Azure; short hash lists) get tokens unique to the request. The trace's own
``hash_ids`` are then the usual chained hashes at ``--block-size``.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Literal, get_args

import numpy as np

from kvbench.errors import fail, interrupted
from kvbench.hashing import block_hashes_many, keyed_tokens
from kvbench.workloads.arrivals import ArrivalSpec, arrival_times
from kvbench.workloads.build import Rows, tracked
from kvbench.workloads.readers import Row, lengths_field, read_table, records
from kvbench.workloads.text import TextCodec

Format = Literal["mooncake", "bailian", "azure"]
FORMATS: tuple[str, ...] = get_args(Format)
SOURCE_BLOCK = {"mooncake": 512, "bailian": 16, "azure": 0}
NO_SOURCE_BLOCK = 1 << 30  # a hash-only Azure trace's source_block: no ids listed, every token the request's own
EXPECTED = {
    "mooncake": "Mooncake JSONL (timestamp in ms, input_length, output_length, hash_ids)",
    "bailian": "Bailian JSONL or CSV (chat_id, parent_chat_id, timestamp in s, input_length, output_length, "
    "turn, hash_ids)",
    "azure": "Azure LLM inference CSV (TIMESTAMP, ContextTokens, GeneratedTokens)",
}
_SALT_BLOCK = np.uint64(0x5851F42D4C957F2D)
_SALT_UNIQUE = np.uint64(0x14057B7EF767814F)
CHUNK_TOKENS = 1 << 21


@dataclass
class SourceRequests:
    """The columns read from a source file, in file order."""

    times_s: np.ndarray  # float64, source seconds (not yet shifted to start at 0)
    input_len: np.ndarray  # int64
    output_len: np.ndarray  # int64
    src_ids: np.ndarray  # int64, every request's source block ids back to back
    src_count: np.ndarray  # int64, source ids per request
    chat_id: list[str] | None = None
    parent_id: list[str | None] | None = None

    def sorted_by_time(self) -> tuple["SourceRequests", int]:
        """The rows in time order (stable: equal times keep file order), and how many rows moved.

        Replaying out-of-order rows at a running maximum would squash their gaps; sorting keeps every
        recorded time.
        """
        order = np.argsort(self.times_s, kind="stable")
        moved = int(np.count_nonzero(order != np.arange(len(order))))
        if not moved:
            return self, 0
        starts = np.zeros(len(self.src_count), dtype=np.int64)
        np.cumsum(self.src_count[:-1], out=starts[1:])
        counts = self.src_count[order]
        ids = (np.concatenate([self.src_ids[starts[i]:starts[i] + self.src_count[i]] for i in order])
               if len(self.src_ids) else self.src_ids)
        pick = order.tolist()
        return SourceRequests(
            self.times_s[order], self.input_len[order], self.output_len[order], ids, counts,
            None if self.chat_id is None else [self.chat_id[i] for i in pick],
            None if self.parent_id is None else [self.parent_id[i] for i in pick],
        ), moved


def _as_id(value: Any) -> int:
    if isinstance(value, bool):
        raise TypeError
    if isinstance(value, (int, np.integer)):
        return int(value) & 0xFFFFFFFFFFFFFFFF
    if isinstance(value, float) and value.is_integer():
        return int(value) & 0xFFFFFFFFFFFFFFFF
    if isinstance(value, str):
        return int.from_bytes(hashlib.blake2b(value.encode(), digest_size=8).digest(), "little")
    raise TypeError


def _hash_list(where: str, line: int, rec: dict[str, Any]) -> list[int]:
    value = rec.get("hash_ids")
    if value is None:
        raise fail(f"{where}:{line}: missing field 'hash_ids'")
    if isinstance(value, str):  # CSV cells hold the list as text
        try:
            value = json.loads(value) if value.strip() else []
        except json.JSONDecodeError:
            raise fail(f"{where}:{line}: field 'hash_ids' is not a JSON list ({value[:40]!r})") from None
    if not isinstance(value, list):
        raise fail(f"{where}:{line}: field 'hash_ids' must be a list of ids")
    try:
        return [_as_id(v) for v in value]
    except TypeError:
        raise fail(
            f"{where}:{line}: field 'hash_ids' holds a value that is not an id (int or string)"
        ) from None


def _number(where: str, line: int, rec: dict[str, Any], name: str) -> float:
    if name not in rec or rec[name] in (None, ""):
        raise fail(f"{where}:{line}: missing field '{name}'")
    try:
        value = float(rec[name])
    except (TypeError, ValueError):
        raise fail(f"{where}:{line}: field '{name}' is {rec[name]!r}, not a number") from None
    if not math.isfinite(value):
        raise fail(f"{where}:{line}: field '{name}' is not finite")
    return value


def read_source(fmt: str, path: Path, max_requests: int | None) -> SourceRequests:
    expected = EXPECTED[fmt]
    if fmt == "azure":
        rows: Iterable[Row] = read_table(
            path, expected, ",", ("TIMESTAMP", "ContextTokens", "GeneratedTokens")
        )
    elif fmt == "bailian" and _looks_like_csv(path):
        rows = read_table(path, expected, ",", ("timestamp", "input_length", "output_length", "hash_ids"))
    else:
        rows = records(path, expected)
    return parse_source(fmt, str(path), rows, max_requests, f"reading {path.name}")


def parse_source(
    fmt: str, where: str, rows: Iterable[Row], max_requests: int | None, description: str
) -> SourceRequests:
    """Records in the public format -> columns; files and synthetic stand-ins both come through here."""
    expected = EXPECTED[fmt]
    times: list[float] = []
    raw_times: list[str] = []
    inp: list[int] = []
    out: list[int] = []
    ids: list[int] = []
    counts: list[int] = []
    chat: list[str] = []
    parent: list[str | None] = []
    for line, rec in tracked(rows, description):
        if max_requests is not None and len(inp) >= max_requests:
            break
        if fmt == "azure":
            raw_times.append(str(rec["TIMESTAMP"]))
            inp.append(lengths_field(where, line, rec, "ContextTokens"))
            out.append(lengths_field(where, line, rec, "GeneratedTokens"))
            counts.append(0)
            continue
        t = _number(where, line, rec, "timestamp")
        times.append(t / 1000.0 if fmt == "mooncake" else t)
        inp.append(lengths_field(where, line, rec, "input_length"))
        out.append(lengths_field(where, line, rec, "output_length"))
        h = _hash_list(where, line, rec)
        ids.extend(h)
        counts.append(len(h))
        if fmt == "bailian":
            cid = rec.get("chat_id")
            chat.append(str(cid) if cid not in (None, "") else f"row{line}")
            p = rec.get("parent_chat_id")
            parent.append(None if p in (None, "", -1, "-1") else str(p))
    if not inp:
        raise fail(f"{where}: no requests found; expected {expected}")
    if fmt == "azure":
        times = _azure_seconds(where, raw_times)
    return SourceRequests(
        np.asarray(times, dtype=np.float64),
        np.asarray(inp, dtype=np.int64),
        np.asarray(out, dtype=np.int64),
        np.asarray(ids, dtype=np.uint64).view(np.int64),
        np.asarray(counts, dtype=np.int64),
        chat or None,
        parent or None,
    )


def _looks_like_csv(path: Path) -> bool:
    try:
        with open(path, encoding="utf-8") as f:
            head = f.read(256).lstrip()
    except UnicodeDecodeError:
        raise fail(f"{path}: not UTF-8 text; expected {EXPECTED['bailian']}") from None
    return bool(head) and head[0] not in "[{"


def _azure_seconds(where: str, raw: list[str]) -> list[float]:
    import pandas as pd

    parsed = pd.to_datetime(pd.Series(raw), errors="coerce", format="ISO8601")
    bad = np.nonzero(parsed.isna().to_numpy())[0]
    if len(bad):
        raise fail(
            f"{where}:{int(bad[0]) + 2}: field 'TIMESTAMP' {raw[bad[0]]!r} is not a date-time "
            f"like 2023-11-16 18:15:46.68"
        )
    return (parsed - parsed.min()).dt.total_seconds().tolist()  # unit-agnostic (pandas may use us or ns)


def synthesize_tokens(
    codec: TextCodec,
    lengths: np.ndarray,
    src_ids: np.ndarray,
    src_start: np.ndarray,
    src_count: np.ndarray,
    src_block: int,
    row_uid: np.ndarray,
    seed: int,
) -> np.ndarray:
    """Tokens for a run of requests, back to back (see the module docstring)."""
    total = int(lengths.sum())
    req = np.repeat(np.arange(len(lengths)), lengths)
    starts = np.zeros(len(lengths), dtype=np.int64)
    np.cumsum(lengths[:-1], out=starts[1:])
    pos = np.arange(total, dtype=np.int64) - starts[req]
    salt = seed & 0xFFFFFFFFFFFFFFFF
    keys = np.empty(total, dtype=np.uint64)
    if src_block:
        blk = pos // src_block
        has = blk < src_count[req]
    else:
        has = np.zeros(total, dtype=bool)
    if has.any():
        sid = src_ids[src_start[req[has]] + blk[has]]
        keys[has] = keyed_tokens(sid, pos[has] % src_block, int(_SALT_BLOCK) ^ salt)
    rest = ~has
    if rest.any():
        keys[rest] = keyed_tokens(row_uid[req[rest]], pos[rest], int(_SALT_UNIQUE) ^ salt)
    return codec.ids_from_keys(keys)


@dataclass
class ImportSettings:
    fmt: str
    time_scale: float
    arrival: ArrivalSpec
    think_s: float | None  # None: the gap between a turn and its parent in the source
    sessions: bool


def sessions_of(src: SourceRequests) -> tuple[list[int | None], list[int], list[str | None]]:
    """(parent row, turn, session id) per row from Bailian chat_id / parent_chat_id links in the file."""
    n = len(src.input_len)
    if src.chat_id is None or src.parent_id is None:
        return [None] * n, [0] * n, [None] * n
    row_of: dict[str, int] = {}
    for i, cid in enumerate(src.chat_id):
        row_of.setdefault(cid, i)
    # a parent that comes later in time order than its child is not a parent (no cycles, turns stay causal)
    parent_row: list[int | None] = []
    for i, pid in enumerate(src.parent_id):
        p = row_of.get(pid) if pid is not None else None
        parent_row.append(p if p is not None and p < i else None)
    has_child = [False] * n
    for p in parent_row:
        if p is not None:
            has_child[p] = True
    turn = [0] * n
    root = list(range(n))
    for i, p in enumerate(parent_row):
        if p is not None:
            turn[i] = turn[p] + 1
            root[i] = root[p]
    session = [
        f"chat-{src.chat_id[root[i]]}" if (parent_row[i] is not None or has_child[i]) else None
        for i in range(n)
    ]
    return parent_row, turn, session


def generate_import(
    cfg: ImportSettings,
    src: SourceRequests,
    codec: TextCodec,
    seed: int,
    block_size: int,
    keep_token_ids: bool,
    with_text: bool,
    hash_only: bool = False,
) -> Rows:
    """``hash_only``: rows keep the source's ids (kvbench.trace.SOURCE_FIELDS) instead of synthesized tokens and
    their hashes; replays derive the same hash equalities and synthesize the same tokens when sending."""
    n = len(src.input_len)
    rng = np.random.default_rng(seed)
    parent, turn, session = sessions_of(src) if cfg.sessions else ([None] * n, [0] * n, [None] * n)
    base = arrival_times(
        n,
        cfg.arrival,
        rng,
        src.times_s if cfg.arrival.kind == "trace" else None,
        cfg.time_scale if cfg.arrival.kind == "trace" else 1.0,
    )
    arrival = base.copy()
    think = np.zeros(n)
    for i, p in enumerate(parent):
        if p is not None:
            gap = max(0.0, (src.times_s[i] - src.times_s[p]) * cfg.time_scale)
            think[i] = gap if cfg.think_s is None else cfg.think_s
            arrival[i] = (
                max(arrival[p] + think[i], arrival[p])
                if cfg.arrival.kind != "trace"
                else max(base[i], arrival[p])
            )
    src_start = np.zeros(n, dtype=np.int64)
    np.cumsum(src.src_count[:-1], out=src_start[1:])
    rows = Rows()
    chunks = [] if hash_only else _chunks(src.input_len, CHUNK_TOKENS)
    try:
        if hash_only:
            _add_source_rows(rows, cfg, src, src_start, arrival, think, parent, turn, session)
        for lo, hi in tracked(chunks, "synthesizing prompts", total=len(chunks)):
            lengths = src.input_len[lo:hi]
            tokens = synthesize_tokens(
                codec,
                lengths,
                src.src_ids,
                src_start[lo:hi],
                src.src_count[lo:hi],
                SOURCE_BLOCK[cfg.fmt],
                np.arange(lo, hi),
                seed,
            )
            hashes, counts = block_hashes_many(tokens, lengths, block_size)
            tok_split = np.split(tokens, np.cumsum(lengths)[:-1]) if hi - lo > 1 else [tokens]
            hash_split = np.split(hashes, np.cumsum(counts)[:-1]) if hi - lo > 1 else [hashes]
            for k, i in enumerate(range(lo, hi)):
                user = _user_tokens(src, parent, i)
                group = _group(src, src_start, session, i)
                toks = tok_split[k]
                rows.add(
                    request_id=f"{cfg.fmt}-{i:07d}",
                    arrival_s=arrival[i],
                    tokens=toks if keep_token_ids else None,
                    input_tokens=len(toks),
                    hash_ids=hash_split[k],
                    output_tokens=int(src.output_len[i]),
                    session_id=session[i],
                    turn=turn[i],
                    think_s=float(think[i]),
                    group_id=group,
                    user_tokens=user,
                    prompt=codec.tokenizer.decode(toks) if with_text else None,
                )
    except KeyboardInterrupt:
        # a cut trace whose metadata claims the whole source would be replayed as if it were complete
        raise interrupted(f"import of {n} requests stopped after {len(rows)}; no trace written") from None
    return rows


def _group(src: SourceRequests, src_start: np.ndarray, session: list[str | None], i: int) -> str | None:
    """A session, else the first source block: requests that share it share a prefix."""
    return session[i] or (f"b{int(src.src_ids[src_start[i]]) & 0xFFFFFFFFFFFF:x}" if src.src_count[i] else None)


def _user_tokens(src: SourceRequests, parent: list[int | None], i: int) -> int | None:
    """A turn's new tokens: its prompt beyond the previous turn's prompt and answer."""
    p = parent[i]
    if p is None:
        return None
    grown = int(src.input_len[i] - src.input_len[p] - src.output_len[p])
    return min(max(grown, 0), int(src.input_len[i]))


def _add_source_rows(rows: Rows, cfg: ImportSettings, src: SourceRequests, src_start: np.ndarray,
                     arrival: np.ndarray, think: np.ndarray, parent: list[int | None], turn: list[int],
                     session: list[str | None]) -> None:
    empty = np.zeros(0, dtype=np.int64)
    inp, out, count = src.input_len.tolist(), src.output_len.tolist(), src.src_count.tolist()
    starts = src_start.tolist()
    for i in range(len(inp)):
        rows.add(request_id=f"{cfg.fmt}-{i:07d}", arrival_s=arrival[i], tokens=None, input_tokens=inp[i],
                 hash_ids=empty, output_tokens=out[i], session_id=session[i], turn=turn[i],
                 think_s=float(think[i]), group_id=_group(src, src_start, session, i),
                 user_tokens=_user_tokens(src, parent, i),
                 source=(src.src_ids[starts[i]:starts[i] + count[i]], i))


def _chunks(lengths: np.ndarray, budget: int) -> list[tuple[int, int]]:
    out, lo, acc = [], 0, 0
    for i, n in enumerate(lengths.tolist()):
        acc += n
        if acc >= budget:
            out.append((lo, i + 1))
            lo, acc = i + 1, 0
    if lo < len(lengths):
        out.append((lo, len(lengths)))
    return out
