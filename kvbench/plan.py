"""The replay plan: which requests are replayed, in what order, with which hash ids, released when.

Both backends replay from one :class:`ReplayPlan`, so ``--max-requests``, ``--warmup``, session chaining and
think times mean the same thing on the simulator and on real servers.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import pandas as pd

from kvbench.errors import fail
from kvbench.resolve import Resolved
from kvbench.trace import Trace, hash_ids_at, replay_order, warmup_mask


@dataclass(frozen=True)
class Unit:
    """What is released on its own: an open-loop request, or a session whose turns follow one another."""

    start_s: float  # release of the first request (trace time x --time-scale)
    positions: list[int]  # plan positions, turn by turn


@dataclass
class ReplayPlan:
    trace: Trace  # the replayed rows, in trace order (--max-requests applied)
    block_size: int  # what the hash ids are blocked by (the resolved one)
    time_scale: float = 1.0
    warm: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))  # per trace row: warm-up
    order: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # trace row of each position

    @property
    def n_warmup(self) -> int:
        """Warm-up requests come first in ``order``: positions below this are warm-up."""
        return int(self.warm.sum())

    def __len__(self) -> int:
        return len(self.order)

    @cached_property
    def hashes(self) -> list[np.ndarray]:
        """Hash ids per trace row at the plan's block size (a multiple of the trace's, checked by resolve)."""
        return hash_ids_at(self.trace, self.block_size)

    @cached_property
    def think_s(self) -> np.ndarray:
        return self.trace.df["think_s"].to_numpy(dtype=float) * self.time_scale

    @cached_property
    def units(self) -> list[Unit]:
        """Release units sorted by time, ties by position; a session's turns by turn number."""
        df = self.trace.df
        arrival = df["arrival_s"].to_numpy(dtype=float) * self.time_scale
        session = df["session_id"].to_numpy(dtype=object)
        turn = df["turn"].to_numpy()
        units: list[Unit] = []
        sessions: dict[str, list[int]] = {}
        for k, i in enumerate(self.order.tolist()):
            sid = session[i]
            if sid is None or pd.isna(sid):
                units.append(Unit(float(arrival[i]), [k]))
            else:
                sessions.setdefault(str(sid), []).append(k)
        for turns in sessions.values():
            turns.sort(key=lambda k: (int(turn[self.order[k]]), k))
            units.append(Unit(float(arrival[self.order[turns[0]]]), turns))
        units.sort(key=lambda u: (u.start_s, u.positions[0]))
        return units


def replayed_trace(trace: Trace, max_requests: int | None) -> Trace:
    """The trace restricted to the requests replayed (``--max-requests`` keeps the first in replay order)."""
    if max_requests is None or max_requests >= len(trace):
        return trace
    keep = np.sort(replay_order(trace.df)[:max_requests])
    return Trace(df=trace.df.iloc[keep].reset_index(drop=True), meta=trace.meta, path=trace.path)


def make_plan(resolved: Resolved, trace: Trace) -> ReplayPlan:
    """Refuses a warm-up that leaves nothing to measure. Positions: the warm-up's requests first, then
    the rest, each in replay order (the order belady's future and the simulator number requests by)."""
    spec = resolved.spec
    replayed = replayed_trace(trace, spec.max_requests)
    warm = warmup_mask(replayed.df, spec.warmup)
    if spec.warmup and warm.all():
        n = len(replayed)
        what = f"the trace has {n} requests" if spec.max_requests is None else f"--max-requests replays {n}"
        if spec.warmup < n:
            what += f", and the sessions of its first {spec.warmup} (warm-up takes whole sessions) hold all"
        raise fail(f"--warmup {spec.warmup}: {what}; use a smaller --warmup so some requests are measured")
    order = replay_order(replayed.df)
    if warm.any():
        order = np.concatenate([order[warm[order]], order[~warm[order]]])
    return ReplayPlan(trace=replayed, block_size=resolved.block_size, time_scale=spec.time_scale, warm=warm,
                      order=order)


def check_cache_fits(resolved: Resolved, plan: ReplayPlan) -> None:
    """Refuse a simulated cache that cannot hold the largest request: every such request would fail."""
    spec, bs = resolved.spec, resolved.block_size
    if not spec.is_sim or spec.cache_tokens is None:
        return
    df = plan.trace.df
    # KV slots as vLLM allocates them: the prompt and every generated token but the last
    slots = df["input_tokens"].to_numpy() + np.maximum(df["output_tokens"].to_numpy(), 1) - 1
    need = -(-slots // bs) * bs
    # vLLM (and the simulator) set one block aside as the null block
    capacity = (spec.cache_tokens // bs - 1) * bs
    too_big = int((need > capacity).sum())
    if not too_big:
        return
    fits_all = int(need.max()) + bs
    hint = (f"the largest needs {int(need.max())} tokens of KV cache plus vLLM's null block "
            f"(use --cache-tokens {fits_all} or more to fit all)")
    if too_big == len(df):
        raise fail(f"--cache-tokens {spec.cache_tokens}: no request fits a worker's KV cache; {hint}")
    # A few oversized requests are what a server with max_model_len = its KV capacity would refuse: they are
    # replayed as failures, said here, in the run's last line and in the report.
    print(f"kvbench: warning: --cache-tokens {spec.cache_tokens}: {too_big} of {len(df)} requests need more KV "
          f"cache than a worker holds and will fail; {hint}", file=sys.stderr)
