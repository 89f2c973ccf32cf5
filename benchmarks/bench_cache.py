"""Eviction-policy throughput: block operations per second, next to a plain OrderedDict LRU.

One synthetic request trace (Zipf-popular documents with per-request suffixes, four requests in flight)
runs through ``PrefixCache`` once per policy while the policy's calls are recorded. The recorded call
stream is then replayed against a fresh policy and timed alone, so the figure is the policy's own cost.
The baseline is a bare ``collections.OrderedDict`` doing vLLM's LRU operations on the ``lru`` stream
(delete on pin, append tail-first on unpin, pop the head on eviction) inside the same dispatch loop.
Streams of different policies differ (their victims differ), so rates are per block operation: a block
insert, access, pin, unpin or eviction. The end-to-end column times the whole ``PrefixCache`` run.

    python benchmarks/bench_cache.py [--requests 20000] [--capacity 4000] [--repeat 3] [--quick] [--json PATH]
"""

from __future__ import annotations

import argparse
import time
from collections import OrderedDict, deque
from pathlib import Path

import numpy as np
from figures import FigureSet

from kvbench.cache import POLICIES, PrefixCache, make_policy
from kvbench.cache.policy import EvictionPolicy

REQUEST, INSERT, ACCESS, PIN, UNPIN, VICTIM = range(6)
TARGET_LRU_X, TARGET_ALL_X = 3.0, 10.0  # slowdown vs the OrderedDict LRU


class Recorder(EvictionPolicy):
    """Forwards every call to the real policy and logs it. The interface's batch calls (``victims``,
    ``on_insert_chain``, ``on_hits``) fall back to the single calls below, so each block is logged."""

    def __init__(self, policy, log: list) -> None:
        self.policy, self.log, self.name = policy, log, policy.name

    def on_request(self):
        self.log.append((REQUEST, None))
        self.policy.on_request()

    def on_insert(self, key, parent):
        self.log.append((INSERT, (key, parent)))
        self.policy.on_insert(key, parent)

    def on_access(self, key):
        self.log.append((ACCESS, key))
        self.policy.on_access(key)

    def on_pin(self, key):
        self.log.append((PIN, key))
        self.policy.on_pin(key)

    def on_unpin(self, keys):
        keys = list(keys)
        self.log.append((UNPIN, keys))
        self.policy.on_unpin(keys)

    def victim(self):
        key = self.policy.victim()
        self.log.append((VICTIM, key))
        return key

    def on_remove(self, key):
        self.policy.on_remove(key)

    def evictable_count(self):
        return self.policy.evictable_count()


def make_trace(n: int, seed: int) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    docs = 300
    doc_len = rng.integers(8, 64, size=docs)
    popularity = 1.0 / np.arange(1, docs + 1)
    popularity /= popularity.sum()
    picks = rng.choice(docs, size=n, p=popularity)
    next_id = 1 << 40
    trace = []
    for d in picks:
        prefix = [int(d) * 1000 + j for j in range(int(doc_len[d]))]
        tail = int(rng.integers(1, 8))
        trace.append(prefix + list(range(next_id, next_id + tail)))
        next_id += tail
    return trace


def run_cache(cache: PrefixCache, trace: list[list[int]], in_flight: int = 4) -> int:
    """Drive the cache with a few requests in flight; returns cache-level block operations."""
    running: deque = deque()
    ops = 0
    for keys in trace:
        total = len(keys) + 1  # one decode block
        adm = cache.admit(keys, total)
        while adm is None:
            old = running.popleft()
            cache.commit(old)
            cache.release(old)
            ops += len(old.pinned)
            adm = cache.admit(keys, total)
        ops += len(keys)
        running.append(adm)
        if len(running) >= in_flight:
            old = running.popleft()
            cache.commit(old)
            cache.release(old)
            ops += len(old.pinned)
    for old in running:
        cache.commit(old)
        cache.release(old)
    return ops


def count_ops(log: list) -> int:
    return sum(len(a) if op == UNPIN else (op != REQUEST) for op, a in log)


def replay_policy(policy, log: list) -> float:
    request, insert, access = policy.on_request, policy.on_insert, policy.on_access
    pin, unpin, victim = policy.on_pin, policy.on_unpin, policy.victim
    t0 = time.perf_counter()
    for op, a in log:
        if op == ACCESS:
            access(a)
        elif op == INSERT:
            insert(*a)
        elif op == UNPIN:
            unpin(a)
        elif op == PIN:
            pin(a)
        elif op == VICTIM:
            victim()
        else:
            request()
    return time.perf_counter() - t0


def replay_ordereddict(log: list) -> float:
    od: OrderedDict[int, None] = OrderedDict()
    t0 = time.perf_counter()
    for op, a in log:
        if op == ACCESS or op == INSERT:
            pass
        elif op == UNPIN:
            for k in reversed(a):
                od[k] = None
        elif op == PIN:
            del od[a]
        elif op == VICTIM:
            od.popitem(last=False)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=20000)
    ap.add_argument("--capacity", type=int, default=4000, help="cache size in blocks")
    ap.add_argument("--repeat", type=int, default=3, help="best of N timed replays")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--quick", action="store_true", help="2,000 requests, 800 blocks, one repeat (smoke test)"
    )
    ap.add_argument("--json", type=Path, help="also write the figures here as JSON (for run_all.py)")
    args = ap.parse_args()
    if args.quick:
        args.requests, args.capacity, args.repeat = 2000, 800, 1
    figs = FigureSet(
        "bench_cache",
        "Eviction policy throughput",
        args.quick,
        {"requests": args.requests, "capacity_blocks": args.capacity, "repeat": args.repeat},
    )

    trace = make_trace(args.requests, args.seed)
    logs: dict[str, list] = {}
    e2e: dict[str, tuple[float, int, float]] = {}
    for name in POLICIES:
        policy = make_policy(name, seed=args.seed, future=trace)
        log: list = []
        run_cache(PrefixCache(args.capacity, Recorder(policy, log), 16), trace)
        logs[name] = log
        cache = PrefixCache(args.capacity, make_policy(name, seed=args.seed, future=trace), 16)
        t0 = time.perf_counter()
        ops = run_cache(cache, trace)
        e2e[name] = (time.perf_counter() - t0, ops, cache.stats.hit_rate)

    base_ops = count_ops(logs["lru"])
    base_t = min(replay_ordereddict(logs["lru"]) for _ in range(args.repeat))
    base_rate = base_ops / base_t
    print(f"{args.requests} requests, capacity {args.capacity} blocks, best of {args.repeat}")
    print(f"OrderedDict LRU baseline: {base_rate / 1e6:.2f} M block ops/s ({base_ops} ops on the lru stream)")
    figs.add("`collections.OrderedDict` LRU baseline", base_rate / 1e6, "M block ops/s")
    print(f"{'policy':8} {'ops':>9} {'M ops/s':>8} {'slowdown':>9} {'e2e M ops/s':>12} {'hit rate':>9}")
    for name, log in logs.items():
        ops = count_ops(log)
        t = min(
            replay_policy(make_policy(name, seed=args.seed, future=trace), log) for _ in range(args.repeat)
        )
        rate = ops / t
        t_e2e, ops_e2e, hit = e2e[name]
        print(
            f"{name:8} {ops:9d} {rate / 1e6:8.2f} {base_rate / rate:8.2f}x "
            f"{ops_e2e / t_e2e / 1e6:12.2f} {hit:9.3f}"
        )
        figs.add(
            f"`{name}` slowdown vs OrderedDict LRU",
            base_rate / rate,
            "x",
            TARGET_LRU_X if name == "lru" else TARGET_ALL_X,
            f"{rate / 1e6:.2f} M block ops/s; hit rate {hit:.3f}",
        )
    figs.write(args.json)


if __name__ == "__main__":
    main()
