"""``kv_cost``: NVIDIA Dynamo's KV-router cost, lowest wins.

``preset=dynamo`` (default) is the cost of Dynamo's ``DefaultWorkerSelector`` (ai-dynamo/dynamo,
``lib/llm/src/kv_router/scheduler.rs``) over the per-worker active-sequence accounting of its
``ActiveSequences`` (``kv_router/sequence.rs``), with Dynamo's defaults (``overlap_score_weight`` 1.0,
``router_temperature`` 0, active blocks tracked, KV reuse assumed, output blocks not tracked)::

    cost(w) = overlap_weight * prefill_tokens(w) / block_size + decode_blocks(w)
    prefill_tokens(w) = sum of the pending prefill tokens of the requests active on w
                        + (input_tokens - overlap(w) * block_size)       # this request's new tokens
    decode_blocks(w)  = |unique full-block hashes of the requests active on w|
                        + |this request's full blocks not among them|     # shared blocks counted once

``overlap(w)`` is the number of leading blocks of the prompt the router believes ``w`` holds (its own
:class:`~kvbench.routing.block_view.BlockView`, filled from the prompts it routed: Dynamo's approximate
mode; with KV events Dynamo would know the exact cache). A request's pending prefill tokens are
``input_tokens - overlap * block_size`` at the time it was routed, with the overlap of the worker it went to.
Dynamo drops them when the first token arrives; a kvbench router sees no first token, only the completion,
so here they stay counted until the request completes (for the 4-token answers of the RLT workloads the
difference is a few decode steps). Output tokens are not counted (Dynamo's ``router_track_output_blocks``
is off by default). With ``temperature == 0`` the lowest cost wins; ties go to the worker whose block index
is smallest (Dynamo's tree-size tie-break, where a worker that matched no block of the prompt counts as
size 0), remaining ties to a seeded random choice. With
``temperature > 0`` the worker is sampled with probability proportional to
``exp(-(cost / (max_cost - min_cost)) / temperature)`` (uniform when all costs are equal), as Dynamo's
``softmax_sample``.

``preset=kvbench-0.1`` is kvbench's earlier, simpler formula, kept under its own name: ``cost(w) =
overlap_weight * (ceil(input / block_size) - overlap(w)) + ceil((outstanding_tokens(w) + input + output) /
block_size)``: every outstanding request's prompt and output counted up front, no deduplication of shared
blocks, no pending-prefill term; ties to the lowest index; temperature sampling over costs normalised to
[0, 1].
"""

from __future__ import annotations

import math

import numpy as np

from kvbench.errors import fail
from kvbench.routing.base import Completion, Router, RouterConfig, RouteRequest
from kvbench.routing.block_view import BlockView

PRESETS = ("dynamo", "kvbench-0.1")


def blocks_of(tokens: int, block_size: int) -> int:
    return -(-tokens // block_size)


class ActiveSequences:
    """One worker's active requests as Dynamo's router tracks them: each request's full-block hashes (a
    block shared by several active requests is counted once) and its prefill tokens not yet done."""

    def __init__(self) -> None:
        self.refs: dict[int, int] = {}  # block hash -> number of active requests holding it
        self.requests: dict[str, list[tuple[list[int], int]]] = {}  # request id -> (hashes, prefill tokens)
        self.prefill_tokens = 0

    def active_blocks(self) -> int:
        return len(self.refs)

    def new_blocks(self, hashes: list[int]) -> int:
        refs = self.refs
        return sum(1 for h in hashes if h not in refs)

    def add(self, request_id: str, hashes: list[int], prefill_tokens: int) -> None:
        for h in hashes:
            self.refs[h] = self.refs.get(h, 0) + 1
        self.requests.setdefault(request_id, []).append((hashes, prefill_tokens))
        self.prefill_tokens += prefill_tokens

    def free(self, request_id: str) -> None:
        entries = self.requests.get(request_id)
        if not entries:
            return
        hashes, prefill = entries.pop(0)
        if not entries:
            del self.requests[request_id]
        self.prefill_tokens -= prefill
        for h in hashes:
            n = self.refs[h] - 1
            if n:
                self.refs[h] = n
            else:
                del self.refs[h]


def softmax_pick(costs: list[float], temperature: float, rng: np.random.Generator) -> int:
    """Dynamo's ``softmax_sample`` for ``temperature > 0``: lower cost, higher probability."""
    lo, hi = min(costs), max(costs)
    if hi == lo:
        probs = [1.0 / len(costs)] * len(costs)
    else:
        span = hi - lo
        scaled = [-(c / span) / temperature for c in costs]
        top = max(scaled)
        z = [math.exp(s - top) for s in scaled]
        total = sum(z)
        probs = [x / total for x in z]
    u = float(rng.random())
    acc = 0.0
    for i, p in enumerate(probs):
        acc += p
        if u <= acc:
            return i
    return len(costs) - 1


class KvCostRouter(Router):
    name = "kv_cost"
    defaults = {"preset": "dynamo", "overlap_weight": 1.0, "temperature": 0.0}

    def __init__(self, config: RouterConfig):
        super().__init__(config)
        self.preset = self.params["preset"]
        if self.preset not in PRESETS:
            raise fail(f"--router-param preset={self.preset}: kv_cost presets are "
                       f"{', '.join(repr(p) for p in PRESETS)}")
        self.view = BlockView(self.n, config.cache_blocks)
        self.rng = np.random.default_rng(config.seed)
        self.weight = float(self.params["overlap_weight"])
        self.temperature = float(self.params["temperature"])
        if self.weight < 0 or self.temperature < 0:
            raise fail("--router-param overlap_weight/temperature must be >= 0 for kv_cost")
        self.active = [ActiveSequences() for _ in range(self.n)]
        self._overlap: dict[int, int] = {}  # overlaps of the request being routed, for on_routed

    # -- costs -------------------------------------------------------------------------------------------

    def costs(self, req: RouteRequest, live: list[int]) -> list[float]:
        hs = req.hash_ids.tolist()
        bs = self.config.block_size
        if self.preset == "kvbench-0.1":
            need = blocks_of(req.input_tokens, bs)
            return [self.weight * (need - self.view.match(w, hs))
                    + blocks_of(self.outstanding_tokens[w] + req.input_tokens + req.output_tokens, bs)
                    for w in live]
        out = []
        self._overlap = {}
        for w in live:
            overlap = self.view.match(w, hs)
            self._overlap[w] = overlap
            seqs = self.active[w]
            prefill = seqs.prefill_tokens + max(0, req.input_tokens - overlap * bs)
            decode = seqs.active_blocks() + seqs.new_blocks(hs)
            out.append(self.weight * prefill / bs + decode)
        return out

    def choose(self, req: RouteRequest, now: float) -> int:
        live = self.live_workers()
        costs = self.costs(req, live)
        if self.temperature > 0:
            if self.preset == "kvbench-0.1":
                return live[self._old_softmax(costs)]
            return live[softmax_pick(costs, self.temperature, self.rng)]
        best = min(costs)
        tied = [w for w, c in zip(live, costs) if c == best]
        if len(tied) == 1 or self.preset == "kvbench-0.1":
            return tied[0]
        size = {w: self.tree_size(w) for w in tied}
        smallest = min(size.values())
        tied = [w for w in tied if size[w] == smallest]
        return tied[0] if len(tied) == 1 else tied[int(self.rng.integers(len(tied)))]

    def tree_size(self, worker: int) -> int:
        """Dynamo's tie-break key: the blocks its index holds for a worker that matched at least one block
        of the prompt (workers that matched nothing are absent from its overlap scores, i.e. 0)."""
        return self.view.size(worker) if self._overlap.get(worker, 0) > 0 else 0

    def _old_softmax(self, costs: list[float]) -> int:
        lo, hi = min(costs), max(costs)
        span = (hi - lo) or 1.0
        z = [math.exp(-(c - lo) / span / self.temperature) for c in costs]
        p = np.asarray(z) / sum(z)
        return int(self.rng.choice(len(costs), p=p))

    # -- bookkeeping -------------------------------------------------------------------------------------

    def on_routed(self, req: RouteRequest, worker: int, now: float) -> None:
        if self.preset == "dynamo":
            hs = req.hash_ids.tolist()
            overlap = self._overlap.get(worker)
            if overlap is None:  # routed without choose() (tests, or a caller pinning the worker)
                overlap = self.view.match(worker, hs)
            prefill = max(0, req.input_tokens - overlap * self.config.block_size)
            self.active[worker].add(req.request_id, hs, prefill)
            self._overlap = {}
        self.view.insert(worker, req.hash_ids)

    def on_complete(self, req: RouteRequest, worker: int, now: float, result: Completion) -> None:
        if self.preset == "dynamo":
            self.active[worker].free(req.request_id)
