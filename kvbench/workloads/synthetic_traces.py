"""Offline stand-ins for the public Mooncake, Bailian and Azure traces, written in their own formats.

The public files cannot be downloaded offline, so `generate trace --synthetic` draws records with the
same fields (and the same meaning of ``hash_ids``) and hands them to the importer exactly as if they had
been read from a file. The structure is modelled, not measured: sessions grow turn by turn (turn k's
prompt = turn k-1's prompt + its answer + a new message, so the full blocks of the previous prompt are
reused), every session starts with one of a small pool of shared prefixes (system prompts, tool
definitions, popular documents) picked with Zipf popularity, and everything else is unique.

Hash ids follow the public convention: one id per block of the source block size (the last one may be
partial), equal ids only for equal prefixes, and a new id is the next unused integer in file order.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from kvbench.fsutil import atomic_path
from kvbench.trace import ideal_hits

AZURE_EPOCH = datetime(2023, 11, 16, 18, 0, 0)  # an arbitrary start; the importer keeps only the gaps


@dataclass(frozen=True)
class Lognormal:
    """Token counts: lognormal around ``median`` (spread ``sigma``), clipped to [low, high]."""

    median: float
    sigma: float
    low: int = 1
    high: int = 131072

    def draw(self, rng: np.random.Generator) -> int:
        value = self.median * math.exp(self.sigma * rng.standard_normal())
        return int(min(max(round(value), self.low), self.high))


@dataclass(frozen=True)
class Kind:
    """One kind of session: its shared-prefix pool, its message lengths and how many turns it lasts."""

    name: str  # Bailian `type`; a label elsewhere
    weight: float  # share of sessions
    prefixes: int  # size of the shared prefix pool (0: no shared prefix)
    prefix_zipf: float  # popularity exponent over the pool
    prefix_tokens: Lognormal
    first_tokens: Lognormal  # the unique content of turn 0 after the shared prefix
    next_tokens: Lognormal  # the new message of every later turn
    output_tokens: Lognormal
    mean_turns: float  # geometric number of turns, at least 1
    think_s: float  # mean gap between turns (exponential), before arrivals are re-timed


@dataclass(frozen=True)
class StandIn:
    fmt: str
    flavour: str
    requests: int  # default request count
    duration_s: float  # default span of the timestamps
    block: int  # source block size of hash_ids (0: none)
    max_input: int  # a session ends before a turn would exceed this many tokens
    kinds: tuple[Kind, ...]
    imitates: str
    hit_rate: float | None  # ideal hit rate the knobs were tuned to (see docs/trace-format.md)
    hit_rate_is_published: bool


def _ln(median: float, sigma: float, low: int = 1, high: int = 131072) -> Lognormal:
    return Lognormal(median, sigma, low, high)


# Published: request counts, the ~1 hour span, Mooncake conversation averages (input ~12k, output ~340)
# and the ideal hit rates 0.374 / 0.651. Everything else below is a modelling choice, tuned so the
# ideal hit rate at 512-token blocks lands on its target at the default sizes.
STAND_INS: dict[tuple[str, str], StandIn] = {
    ("mooncake", "conversation"): StandIn(
        "mooncake",
        "conversation",
        12031,
        3600.0,
        512,
        131072,
        (
            Kind(
                "chat",
                1.0,
                prefixes=16,
                prefix_zipf=1.1,
                prefix_tokens=_ln(1500, 0.4, 200),
                first_tokens=_ln(6200, 1.0, 16),
                next_tokens=_ln(400, 1.2, 4),
                output_tokens=_ln(250, 0.8, 1, 4096),
                mean_turns=1.43,
                think_s=120.0,
            ),
        ),
        "Mooncake (FAST'25) conversation trace",
        0.374,
        True,
    ),
    ("mooncake", "toolagent"): StandIn(
        "mooncake",
        "toolagent",
        23608,
        3600.0,
        512,
        131072,
        (
            Kind(
                "agent",
                1.0,
                prefixes=12,
                prefix_zipf=1.2,
                prefix_tokens=_ln(3000, 0.5, 500),
                first_tokens=_ln(2800, 1.0, 16),
                next_tokens=_ln(500, 1.2, 4),
                output_tokens=_ln(120, 0.9, 1, 4096),
                mean_turns=1.65,
                think_s=20.0,
            ),
        ),
        "Mooncake (FAST'25) tool & agent trace",
        0.59,
        False,
    ),
    ("mooncake", "synthetic"): StandIn(
        "mooncake",
        "synthetic",
        3993,
        3600.0,
        512,
        131072,
        (
            Kind(
                "docqa",
                1.0,
                prefixes=60,
                prefix_zipf=1.0,
                prefix_tokens=_ln(8000, 0.6, 1000),
                first_tokens=_ln(3400, 1.0, 16),
                next_tokens=_ln(300, 1.0, 4),
                output_tokens=_ln(100, 0.8, 1, 2048),
                mean_turns=1.2,
                think_s=60.0,
            ),
        ),
        "Mooncake (FAST'25) synthetic trace",
        0.651,
        True,
    ),
    ("bailian", "chat"): StandIn(
        "bailian",
        "chat",
        10000,
        3600.0,
        16,
        32768,
        (
            Kind(
                "text",
                0.6,
                40,
                1.1,
                _ln(400, 0.5, 16),
                _ln(250, 1.1),
                _ln(120, 1.1),
                _ln(300, 0.9),
                2.5,
                60.0,
            ),
            Kind(
                "search",
                0.2,
                6,
                1.0,
                _ln(900, 0.3, 64),
                _ln(2500, 0.6),
                _ln(2000, 0.6),
                _ln(400, 0.7),
                1.5,
                45.0,
            ),
            Kind(
                "image",
                0.1,
                6,
                1.0,
                _ln(250, 0.3, 16),
                _ln(1300, 0.4),
                _ln(100, 1.0),
                _ln(200, 0.8),
                1.6,
                40.0,
            ),
            Kind(
                "file",
                0.1,
                6,
                1.0,
                _ln(350, 0.3, 16),
                _ln(6000, 0.9),
                _ln(150, 1.0),
                _ln(350, 0.8),
                2.2,
                60.0,
            ),
        ),
        "Alibaba Bailian (Qwen) usage trace",
        0.58,
        False,
    ),
    ("azure", "conversation"): StandIn(
        "azure",
        "conversation",
        19366,
        3600.0,
        0,
        32768,
        (Kind("conv", 1.0, 0, 1.0, _ln(1, 0), _ln(1000, 0.9), _ln(1, 0), _ln(130, 1.0, 1, 4096), 1.0, 0.0),),
        "Azure LLM inference trace (conversation)",
        None,
        False,
    ),
    ("azure", "code"): StandIn(
        "azure",
        "code",
        8819,
        3600.0,
        0,
        32768,
        (Kind("code", 1.0, 0, 1.0, _ln(1, 0), _ln(1500, 1.0), _ln(1, 0), _ln(15, 1.2, 1, 2048), 1.0, 0.0),),
        "Azure LLM inference trace (code)",
        None,
        False,
    ),
}
DEFAULT_FLAVOUR = {"mooncake": "conversation", "bailian": "chat", "azure": "conversation"}


def flavours(fmt: str) -> tuple[str, ...]:
    return tuple(f for (m, f) in STAND_INS if m == fmt)


@dataclass
class _Request:
    order_key: float  # desired time; re-timed later, only the order is kept
    kind: str
    input_len: int
    output_len: int
    ids: list[int]
    parent: int | None  # index into the request list
    turn: int


class _Ids:
    """Fresh block ids; renumbered in file order at the end."""

    def __init__(self) -> None:
        self.next = 0

    def fresh(self, n: int) -> list[int]:
        out = list(range(self.next, self.next + n))
        self.next += n
        return out


def _sessions(spec: StandIn, n: int, duration_s: float, rng: np.random.Generator) -> list[_Request]:
    kinds = spec.kinds
    weights = np.array([k.weight for k in kinds], dtype=np.float64)
    weights /= weights.sum()
    pools = []
    for k in kinds:
        lengths = [k.prefix_tokens.draw(rng) if k.prefixes else 0 for _ in range(k.prefixes)]
        popularity = 1.0 / np.arange(1, k.prefixes + 1, dtype=np.float64) ** k.prefix_zipf
        pools.append((lengths, popularity / popularity.sum() if k.prefixes else popularity))
    prefix_ids: dict[tuple[int, int], list[int]] = {}
    ids = _Ids()
    bs = spec.block
    out: list[_Request] = []
    while len(out) < n:
        ki = int(rng.choice(len(kinds), p=weights))
        kind = kinds[ki]
        lengths, popularity = pools[ki]
        base_len, base_ids = 0, []
        if kind.prefixes:
            p = int(rng.choice(kind.prefixes, p=popularity))
            base_len = lengths[p]
            if bs and (ki, p) not in prefix_ids:
                prefix_ids[(ki, p)] = ids.fresh(base_len // bs)
            base_ids = prefix_ids.get((ki, p), [])
        turns = int(rng.geometric(1.0 / kind.mean_turns)) if kind.mean_turns > 1 else 1
        t = float(rng.uniform(0.0, duration_s))
        length = base_len + kind.first_tokens.draw(rng)
        parent: int | None = None
        for turn in range(turns):
            if turn:
                prev = out[-1]
                length = prev.input_len + prev.output_len + kind.next_tokens.draw(rng)
                t += float(rng.exponential(kind.think_s))
            if length > spec.max_input or len(out) >= n:
                break
            block_ids: list[int] = []
            if bs:
                keep = base_len // bs
                block_ids = base_ids[:keep] + ids.fresh(-(-length // bs) - keep)
            out.append(_Request(t, kind.name, length, kind.output_tokens.draw(rng), block_ids, parent, turn))
            parent, base_len, base_ids = len(out) - 1, length, block_ids
    return out


def _retime(
    reqs: list[_Request], duration_s: float, rng: np.random.Generator
) -> tuple[list[int], np.ndarray]:
    """File order (by desired time; turns keep their order) and Poisson timestamps spanning ~duration_s."""
    order = sorted(range(len(reqs)), key=lambda i: (reqs[i].order_key, i))
    n = len(reqs)
    gaps = rng.exponential(duration_s / max(n, 1), size=max(n - 1, 0))
    times = np.concatenate([[0.0], np.cumsum(gaps)])
    return order, times


def synthesize_records(
    fmt: str, flavour: str, requests: int, duration_s: float, seed: int
) -> list[dict[str, Any]]:
    """Records in the public format of ``fmt``, in file (time) order."""
    spec = STAND_INS[(fmt, flavour)]
    rng = np.random.default_rng(seed)
    reqs = _sessions(spec, requests, duration_s, rng)
    order, times = _retime(reqs, duration_s, rng)
    renumber: dict[int, int] = {}
    position = {i: k for k, i in enumerate(order)}
    records: list[dict[str, Any]] = []
    for k, i in enumerate(order):
        r = reqs[i]
        hash_ids = [renumber.setdefault(h, len(renumber)) for h in r.ids]
        if fmt == "mooncake":
            records.append(
                {
                    "timestamp": round(float(times[k]) * 1000.0),
                    "input_length": r.input_len,
                    "output_length": r.output_len,
                    "hash_ids": hash_ids,
                }
            )
        elif fmt == "bailian":
            records.append(
                {
                    "chat_id": k,
                    "parent_chat_id": -1 if r.parent is None else position[r.parent],
                    "timestamp": round(float(times[k]), 3),
                    "input_length": r.input_len,
                    "output_length": r.output_len,
                    "type": r.kind,
                    "turn": r.turn + 1,
                    "hash_ids": hash_ids,
                }
            )
        else:
            stamp = AZURE_EPOCH + timedelta(microseconds=round(float(times[k]) * 1e6))
            records.append(
                {
                    "TIMESTAMP": stamp.strftime("%Y-%m-%d %H:%M:%S.%f"),
                    "ContextTokens": r.input_len,
                    "GeneratedTokens": r.output_len,
                }
            )
    return records


def describe(fmt: str, flavour: str, requests: int, duration_s: float) -> str:
    spec = STAND_INS[(fmt, flavour)]
    kinds = ", ".join(f"{k.name} {k.weight:.0%}" for k in spec.kinds) if len(spec.kinds) > 1 else ""
    shape = (
        f"sessions growing turn by turn over Zipf-popular shared prefixes{' (' + kinds + ')' if kinds else ''}, "
        f"{spec.block}-token hash_ids"
        if spec.block
        else "independent requests with lognormal lengths, no prefix information"
    )
    tuned = (
        f"; tuned to an ideal hit rate of about {spec.hit_rate} ({'published' if spec.hit_rate_is_published else 'modelling choice'})"
        if spec.hit_rate is not None
        else ""
    )
    return (
        f"synthetic stand-in for the {spec.imitates} in its public format: {requests} requests over "
        f"{duration_s:g} s, {shape}{tuned}"
    )


def write_source(fmt: str, records: list[dict[str, Any]], path: Path) -> Path:
    """The stand-in as a file a real import would read: JSONL (Mooncake, Bailian) or CSV (Azure)."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as f:
        if fmt == "azure":
            writer = csv.DictWriter(f, fieldnames=["TIMESTAMP", "ContextTokens", "GeneratedTokens"])
            writer.writeheader()
            writer.writerows(records)
        else:
            f.writelines(json.dumps(rec, separators=(", ", ": ")) + "\n" for rec in records)
    return path


def source_hit_rate(records: list[dict[str, Any]], source_block: int, block_size: int | None = None) -> float:
    """Ideal (infinite cache, one node) hit rate of the source hash_ids in file order at ``block_size``
    (a multiple of ``source_block``); the importer preserves it, so it equals the imported trace's."""
    bs = block_size or source_block
    k = bs // source_block
    lengths = np.array([r["input_length"] for r in records], dtype=np.int64)
    full = [
        np.asarray(r["hash_ids"][: (r["input_length"] // source_block)], dtype=np.int64)[k - 1 :: k][
            : r["input_length"] // bs
        ]
        for r in records
    ]
    total = int(lengths.sum())
    return float(ideal_hits(full, lengths, bs).sum()) / total if total else 0.0
