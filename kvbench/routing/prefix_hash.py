"""``prefix_hash``: consistent hashing (a ring of virtual nodes) on the session id or the first blocks.

Session affinity keeps a conversation's growing history on one worker; hashing the first ``prefix_blocks``
block ids sends requests that share a document or system prompt to the same worker. When a worker goes
down only its arcs of the ring move, which is why gateways use a ring rather than ``hash % n``.

``load_factor > 0`` adds the bounded-load fallback of SGLang's prefix-hash policy
(sgl-project/sglang ``sgl-model-gateway/src/policies/prefix_hash.rs``, default there 1.25): with ``load`` =
the requests the router has in flight per live worker, the ring owner keeps the request when
``load[owner] <= (sum(load) + 1) / live_workers * load_factor`` (or when nothing is in flight); otherwise the
least loaded live worker that passes the same check gets it (ties to the lowest index), and if none passes,
the owner anyway. ``load_factor = 0`` (the default) is plain consistent hashing, as before.
"""

from __future__ import annotations

import bisect
import hashlib

import numpy as np

from kvbench.errors import fail
from kvbench.routing.base import Router, RouterConfig, RouteRequest


def stable_hash(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


class PrefixHashRouter(Router):
    name = "prefix_hash"
    # key: "auto" = session id when the request has one, else the first blocks; "session"; "prefix"
    defaults = {"key": "auto", "prefix_blocks": 4, "virtual_nodes": 64, "load_factor": 0.0}

    def __init__(self, config: RouterConfig):
        super().__init__(config)
        if self.params["key"] not in ("auto", "session", "prefix"):
            raise fail(f"--router-param key={self.params['key']}: prefix_hash keys on 'auto', 'session' or 'prefix'")
        if self.params["prefix_blocks"] < 1 or self.params["virtual_nodes"] < 1:
            raise fail("--router-param prefix_blocks/virtual_nodes must be >= 1 for prefix_hash")
        self.load_factor = float(self.params["load_factor"])
        if self.load_factor < 0:
            raise fail(f"--router-param load_factor={self.load_factor}: prefix_hash needs >= 0 (0 = off)")
        points = []
        for w in range(self.n):
            for v in range(int(self.params["virtual_nodes"])):
                points.append((stable_hash(f"worker-{w}-vnode-{v}".encode()), w))
        points.sort()
        self.ring = [p for p, _ in points]
        self.owner = [w for _, w in points]

    def key_of(self, req: RouteRequest) -> bytes:
        mode = self.params["key"]
        if mode in ("auto", "session") and req.session_id is not None:
            return b"s:" + req.session_id.encode()
        hs = np.asarray(req.hash_ids[: int(self.params["prefix_blocks"])], dtype=np.int64)
        if len(hs):
            return b"p:" + hs.tobytes()
        if req.prompt_token_ids is not None and len(req.prompt_token_ids):
            return b"t:" + np.asarray(req.prompt_token_ids, dtype=np.int64).tobytes()
        if req.prompt:
            return b"x:" + req.prompt.encode()
        return b"r:" + req.request_id.encode()  # a prompt shorter than one block shares nothing

    def choose(self, req: RouteRequest, now: float) -> int:
        live = self.live_workers()
        owner = self.ring_owner(req)
        if self.load_factor > 0:
            return self.bounded(owner, live)
        return owner

    def ring_owner(self, req: RouteRequest) -> int:
        i = bisect.bisect_left(self.ring, stable_hash(self.key_of(req)))
        for step in range(len(self.ring)):
            w = self.owner[(i + step) % len(self.ring)]
            if self.alive[w]:
                return w
        raise AssertionError("unreachable: live_workers() found a live worker")

    def bounded(self, owner: int, live: list[int]) -> int:
        load = self.outstanding
        total = sum(load[w] for w in live)
        if total == 0:
            return owner
        bound = (total + 1) / len(live) * self.load_factor
        if load[owner] <= bound:
            return owner
        ok = [w for w in live if load[w] <= bound]
        return min(ok, key=lambda w: (load[w], w)) if ok else owner
