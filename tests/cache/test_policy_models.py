"""Every deterministic eviction policy against a naive model of its documented rule.

The models below are written for clarity, not speed: each keeps plain dicts and scans every candidate on
every eviction, exactly as the policy's module docstring states the rule. An owner that follows the event
protocol of ``kvbench.cache.policy`` (pins, hits, inserts, unpins in sequence order, resets of single blocks)
drives the real policy and its model through the same random request streams, interleaved so blocks are
shared and pinned; the victims, the evictable counts and ARC's adaptive target must agree at every step.
RLT draws at random, so its model checks each victim is one the rule allows, and counts the phases.
"""

from __future__ import annotations

import random
from collections import OrderedDict

import pytest
from tests.cache.cache_drivers import KeyChains

from kvbench.cache import make_policy
from kvbench.cache.policy import EvictionPolicy


# ------------------------------------------------------------------------------------------------ owner
class Owner:
    """A block pool of ``capacity`` blocks following the protocol (inserting at admission)."""

    def __init__(self, policy: EvictionPolicy, capacity: int):
        self.policy = policy
        self.capacity = capacity
        self.ref: dict[int, int] = {}
        self.parent: dict[int, int | None] = {}
        self.kids: dict[int, int] = {}
        self.victims: list[int] = []

    def evictable(self) -> int:
        return sum(1 for r in self.ref.values() if r == 0)

    def leaves(self) -> list[int]:
        return sorted(k for k, r in self.ref.items() if r == 0 and self.kids[k] == 0)

    def admit(self, keys: list[int]) -> list[int] | None:
        hits = 0
        while hits < len(keys) and keys[hits] in self.ref:
            hits += 1
        fresh = len(keys) - hits
        revived = sum(1 for k in keys[:hits] if self.ref[k] == 0)
        if fresh > self.capacity - len(self.ref) + self.evictable() - revived:
            return None
        self.policy.on_request()
        for k in keys[:hits]:
            if self.ref[k] == 0:
                self.policy.on_pin(k)
            self.ref[k] += 1
            self.policy.on_access(k)
        while len(self.ref) + fresh > self.capacity:
            v = self.policy.victim()
            assert self.ref.get(v) == 0 and self.kids[v] == 0, f"victim {v} is not an evictable leaf"
            self._drop(v)
            self.victims.append(v)
        parent = keys[hits - 1] if hits else None
        for k in keys[hits:]:
            self.ref[k], self.parent[k], self.kids[k] = 1, parent, 0
            if parent is not None:
                self.kids[parent] += 1
            self.policy.on_insert(k, parent)
            parent = k
        return keys

    def release(self, keys: list[int]) -> None:
        zero = []
        for k in keys:
            self.ref[k] -= 1
            if self.ref[k] == 0:
                zero.append(k)
        if zero:
            self.policy.on_unpin(zero)

    def remove(self, key: int) -> None:
        """A reset drops one evictable leaf (as the vLLM adapter does on a cache reset)."""
        self.policy.on_remove(key)
        self._drop(key)

    def _drop(self, key: int) -> None:
        del self.ref[key]
        del self.kids[key]
        p = self.parent.pop(key)
        if p is not None:
            self.kids[p] -= 1


# ----------------------------------------------------------------------------------------------- models
class NaiveLeaves(EvictionPolicy):
    """Candidates are evictable blocks without cached children, found by scanning."""

    def __init__(self) -> None:
        self.parent: dict[int, int | None] = {}
        self.kids: dict[int, int] = {}
        self.free: set[int] = set()
        self.tick = 0

    def on_insert(self, key, parent):
        self.parent[key], self.kids[key] = parent, 0
        if parent is not None:
            self.kids[parent] += 1

    def on_access(self, key):
        pass

    def on_pin(self, key):
        self.free.discard(key)

    def on_unpin(self, keys):
        self.free.update(keys)

    def candidates(self) -> list[int]:
        return [k for k in self.free if self.kids[k] == 0]

    def victim(self):
        key = self.choose(self.candidates())
        self.drop(key)
        return key

    def on_remove(self, key):
        if key in self.kids:
            self.drop(key)

    def drop(self, key):
        p = self.parent.pop(key)
        del self.kids[key]
        self.free.discard(key)
        if p is not None:
            self.kids[p] -= 1
        self.forget(key)

    def forget(self, key):
        pass

    def evictable_count(self):
        return len(self.free)


class ModelLRU(EvictionPolicy):
    """vLLM's free queue: append on unpin (tail block first), take out on pin, evict the head."""

    def __init__(self):
        self.queue: list[int] = []

    def on_insert(self, key, parent):
        pass

    def on_access(self, key):
        pass

    def on_pin(self, key):
        self.queue.remove(key)

    def on_unpin(self, keys):
        self.queue.extend(reversed(keys))

    def victim(self):
        return self.queue.pop(0)

    def on_remove(self, key):
        if key in self.queue:
            self.queue.remove(key)

    def evictable_count(self):
        return len(self.queue)


class ModelFIFO(NaiveLeaves):
    """The leaf cached longest ago."""

    def __init__(self):
        super().__init__()
        self.born: dict[int, int] = {}

    def on_insert(self, key, parent):
        super().on_insert(key, parent)
        self.tick += 1
        self.born[key] = self.tick

    def choose(self, cand):
        return min(cand, key=lambda k: self.born[k])

    def forget(self, key):
        del self.born[key]


class ModelLFU(NaiveLeaves):
    """Fewest uses while cached (1 at insert, +1 per hit); ties: least recently freed (tail first)."""

    def __init__(self):
        super().__init__()
        self.count: dict[int, int] = {}
        self.stamp: dict[int, int] = {}

    def on_insert(self, key, parent):
        super().on_insert(key, parent)
        self.count[key] = 1
        self.tick += 1
        self.stamp[key] = self.tick

    def on_access(self, key):
        self.count[key] += 1

    def on_unpin(self, keys):
        for key in reversed(keys):
            self.tick += 1
            self.stamp[key] = self.tick
        super().on_unpin(keys)

    def choose(self, cand):
        return min(cand, key=lambda k: (self.count[k], self.stamp[k]))

    def forget(self, key):
        del self.count[key], self.stamp[key]


class ModelARC(NaiveLeaves):
    """T1 (seen once) / T2 (reused) by last-freed time; ghosts B1/B2 adapt the target p of T1 (``arc``), or
    the target is fixed at c / 2 without ghosts (``dbl``). c: the capacity, else the most blocks cached."""

    def __init__(self, adaptive: bool, capacity: int | None = None):
        super().__init__()
        self.adaptive = adaptive
        self.fixed = capacity
        self.c = capacity or 0
        self.p = 0.0
        self.list: dict[int, int] = {}
        self.stamp: dict[int, int] = {}
        self.b1: list[int] = []  # oldest first
        self.b2: list[int] = []

    def n(self, which: int) -> int:
        return sum(1 for v in self.list.values() if v == which)

    def on_insert(self, key, parent):
        super().on_insert(key, parent)
        if self.fixed is None:
            self.c = max(self.c, len(self.kids))
        if key in self.b1:
            self.p = min(float(self.c), self.p + max(1.0, len(self.b2) / len(self.b1)))
            self.b1.remove(key)
            self.list[key] = 2
        elif key in self.b2:
            self.p = max(0.0, self.p - max(1.0, len(self.b1) / len(self.b2)))
            self.b2.remove(key)
            self.list[key] = 2
        else:
            self.list[key] = 1
        self.tick += 1
        self.stamp[key] = self.tick

    def on_access(self, key):
        self.list[key] = 2

    def on_unpin(self, keys):
        for key in reversed(keys):
            self.tick += 1
            self.stamp[key] = self.tick
        super().on_unpin(keys)

    def victim(self):
        cand = self.candidates()
        t1 = [k for k in cand if self.list[k] == 1]
        t2 = [k for k in cand if self.list[k] == 2]
        target = self.p if self.adaptive else self.c / 2
        if t1 and (self.n(1) > target or not t2):
            key, ghosts = min(t1, key=self.stamp.get), self.b1
        else:
            key, ghosts = min(t2, key=self.stamp.get), self.b2
        if self.adaptive:
            ghosts.append(key)
        self.drop(key)
        return key

    def forget(self, key):
        del self.list[key], self.stamp[key]
        if self.adaptive:
            while self.b1 and self.n(1) + len(self.b1) > self.c:
                self.b1.pop(0)
            while self.b2 and len(self.list) + len(self.b1) + len(self.b2) > 2 * self.c:
                self.b2.pop(0)


class ModelS3FIFO(NaiveLeaves):
    """Small FIFO S, main FIFO M, ghost FIFO G (bounded by the most blocks cached); see s3fifo.py."""

    def __init__(self, small_fraction: float = 0.1, promote_threshold: int = 1):
        super().__init__()
        self.small_fraction, self.promote = small_fraction, promote_threshold
        self.queue: dict[int, str] = {}
        self.pos: dict[int, int] = {}
        self.freq: dict[int, int] = {}
        self.ghost: OrderedDict[int, None] = OrderedDict()
        self.high = 0

    def on_insert(self, key, parent):
        super().on_insert(key, parent)
        self.high = max(self.high, len(self.kids))
        self.queue[key] = "M" if self.ghost.pop(key, "absent") is None else "S"
        self.freq[key] = 0
        self.tick += 1
        self.pos[key] = self.tick

    def on_access(self, key):
        self.freq[key] = min(3, self.freq[key] + 1)

    def victim(self):
        cand = self.candidates()
        while True:
            small = [k for k in cand if self.queue[k] == "S"]
            main = [k for k in cand if self.queue[k] == "M"]
            n_small = sum(1 for q in self.queue.values() if q == "S")
            if small and (n_small >= self.small_fraction * len(self.kids) or not main):
                key = min(small, key=self.pos.get)
                if self.freq[key] >= self.promote:
                    self.queue[key], self.freq[key] = "M", 0
                    self.tick += 1
                    self.pos[key] = self.tick
                    continue
                self.ghost[key] = None
                while len(self.ghost) > self.high:
                    self.ghost.popitem(last=False)
                break
            key = min(main, key=self.pos.get)
            if self.freq[key] > 0:
                self.freq[key] -= 1
                self.tick += 1
                self.pos[key] = self.tick
                continue
            break
        self.drop(key)
        return key

    def forget(self, key):
        del self.queue[key], self.pos[key], self.freq[key]


# ---------------------------------------------------------------------------------------------- driver
def request_stream(seed: int, n: int) -> list[list[int]]:
    rng = random.Random(seed)
    chains = KeyChains()
    out = []
    for _ in range(n):
        shared, suffix = rng.randint(0, 4), rng.randint(0, 3)
        out.append(chains.request(rng.randrange(4), shared if shared + suffix else 1, rng.randrange(3), suffix))
    return out


def drive(a: Owner, b: Owner, seed: int, steps: int = 260, on_step=None) -> None:
    """The same random admits, releases and single-block resets on both owners."""
    rng = random.Random(seed + 1000)
    stream = iter(request_stream(seed, steps))
    running: list[list[int]] = []
    for step in range(steps):
        r = rng.random()
        if r < 0.08 and a.leaves():
            key = rng.choice(a.leaves())
            a.remove(key)
            b.remove(key)
        elif r < 0.55 and len(running) < 3:
            keys = next(stream)
            got_a, got_b = a.admit(keys), b.admit(keys)
            assert (got_a is None) == (got_b is None)
            if got_a is not None:
                running.append(keys)
        elif running:
            keys = running.pop(rng.randrange(len(running)))
            a.release(keys)
            b.release(keys)
        assert a.victims == b.victims, f"step {step}: victims differ"
        assert a.policy.evictable_count() == b.policy.evictable_count() == a.evictable()
        if on_step is not None:
            on_step(a.policy, b.policy)
    assert len(a.victims) > 30, "the stream must evict often to say anything"


CASES = {
    "lru": ({}, ModelLRU),
    "fifo": ({}, ModelFIFO),
    "lfu": ({}, ModelLFU),
    "dbl": ({}, lambda: ModelARC(adaptive=False)),
    "arc": ({}, lambda: ModelARC(adaptive=True)),
    "arc-capacity": ({"capacity": 12}, lambda: ModelARC(adaptive=True, capacity=12)),
    "dbl-capacity": ({"capacity": 10}, lambda: ModelARC(adaptive=False, capacity=10)),
    "s3fifo": ({}, ModelS3FIFO),
    "s3fifo-half-twice": ({"small_fraction": 0.5, "promote_threshold": 2}, lambda: ModelS3FIFO(0.5, 2)),
}


def _same_arc_state(real, model):
    assert real.p == pytest.approx(model.p, abs=1e-12) and real._c == model.c


# per-block state each policy keeps (white-box): it must cover exactly the cached blocks, or a block that
# left the cache would leak memory and could carry stale state if it came back
PER_BLOCK = {"fifo": ("_born",), "lfu": ("_count", "_stamp"), "arc": ("_list", "_stamp"),
             "dbl": ("_list", "_stamp"), "s3fifo": ("_queue", "_pos", "_freq"), "rlt": (), "rlt_reuse": (),
             "random": ()}


def check_per_block_state(policy, owner: Owner) -> None:
    cached = set(owner.ref)
    if policy.name == "lru":
        assert set(policy.order()) == {k for k, r in owner.ref.items() if r == 0}
        return
    assert set(policy._kids) == set(policy._parent) == cached
    assert policy._free == {k for k, r in owner.ref.items() if r == 0}
    for attr in PER_BLOCK[policy.name]:
        assert set(getattr(policy, attr)) == cached, attr
    if policy.name.startswith("rlt"):
        assert policy._marked <= cached


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("seed", range(6))
def test_policy_follows_its_model(case, seed):
    params, model = CASES[case]
    name = case.split("-")[0]
    real = make_policy(name, **params)
    check = _same_arc_state if name == "arc" else None
    owner = Owner(real, 12)
    drive(owner, Owner(model(), 12), seed, on_step=check)
    check_per_block_state(real, owner)


def test_arc_target_moves_both_ways():
    """The streams above do exercise ARC's adaptation: p grows on B1 ghost hits and shrinks on B2 ones."""
    seen = set()

    def record(real, model):
        seen.add(real.p)

    for seed in range(6):
        drive(Owner(make_policy("arc"), 12), Owner(ModelARC(adaptive=True), 12), seed, on_step=record)
    assert 0.0 in seen and max(seen) >= 3 and len(seen) >= 5


# ------------------------------------------------------------------------------------------------- RLT
class RLTChecker(NaiveLeaves):
    """Shadows an RLT policy: marks as the rule says; each real victim must be an unmarked evictable leaf,
    or, when there is none, a phase starts keeping only the newest request's path marked."""

    def __init__(self, real, mark_inserts: bool):
        super().__init__()
        self.real = real
        self.mark_inserts = mark_inserts
        self.marked: set[int] = set()
        self.path: list[int] = []
        self.phases = 0

    def on_request(self):
        self.path = []
        self.real.on_request()

    def mark(self, key):
        self.path.append(key)
        self.marked.add(key)

    def on_insert(self, key, parent):
        super().on_insert(key, parent)
        if self.mark_inserts:
            self.mark(key)
        self.real.on_insert(key, parent)

    def on_access(self, key):
        self.mark(key)
        self.real.on_access(key)

    def on_pin(self, key):
        super().on_pin(key)
        self.real.on_pin(key)

    def on_unpin(self, keys):
        super().on_unpin(keys)
        self.real.on_unpin(keys)

    def on_remove(self, key):
        super().on_remove(key)
        self.real.on_remove(key)

    def victim(self):
        allowed = [k for k in self.candidates() if k not in self.marked]
        if not allowed:
            self.phases += 1
            self.marked = {k for k in self.path if k in self.kids}
            allowed = [k for k in self.candidates() if k not in self.marked]
            if not allowed:
                self.marked = set()
                allowed = self.candidates()
        key = self.real.victim()
        assert key in allowed, f"victim {key} is marked or not an evictable leaf"
        assert self.real.phases == self.phases
        self.drop(key)
        return key

    def forget(self, key):
        self.marked.discard(key)

    def evictable_count(self):
        assert self.real.evictable_count() == len(self.free)
        return len(self.free)


@pytest.mark.parametrize("name, mark_inserts", [("rlt", True), ("rlt_reuse", False)])
@pytest.mark.parametrize("seed", range(6))
def test_rlt_victims_follow_the_marking_rule(name, mark_inserts, seed):
    checked = Owner(RLTChecker(make_policy(name, seed=seed), mark_inserts), 12)
    plain = Owner(make_policy(name, seed=seed), 12)
    drive(checked, plain, seed)
    assert checked.policy.phases > 3
    check_per_block_state(plain.policy, plain)


@pytest.mark.parametrize("seed", range(4))
def test_random_victims_are_evictable_leaves_and_seeded(seed):
    a, b = Owner(make_policy("random", seed=seed), 12), Owner(make_policy("random", seed=seed), 12)
    drive(a, b, seed)  # the owner checks each victim is an evictable leaf; same seed, same victims
    check_per_block_state(a.policy, a)


@pytest.mark.parametrize("name", ["lru", "fifo", "lfu", "arc", "dbl", "s3fifo", "rlt", "rlt_reuse", "random"])
def test_removing_a_block_the_policy_never_heard_of_changes_nothing(name):
    a, b = Owner(make_policy(name), 12), Owner(make_policy(name), 12)
    drive(a, b, seed=1)
    count = a.policy.evictable_count()
    a.policy.on_remove(-12345)  # e.g. a reset naming a block that was never cached
    assert a.policy.evictable_count() == count
    check_per_block_state(a.policy, a)
    assert a.policy.victim() == b.policy.victim()  # and it chooses as its twin that heard nothing
