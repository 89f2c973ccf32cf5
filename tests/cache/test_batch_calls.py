"""The batched paths give what the single calls gave.

``PrefixCache`` keeps its tree in slots and tells the policy about runs of blocks through the batch calls
of ``kvbench.cache.policy`` (``victims``, ``on_insert_chain``, ``on_hits``), which ``lru`` answers without a
call per block. Here a reference cache, the per-block algorithm restated with one policy call per block
event (and, for ``lru``, vLLM's free queue as a plain ordered dict), is driven with every registered policy
through the same random admits, grows, commits, releases, flushes and lookups as the real cache; after
every operation both must agree on what it returned, on the tree (every block's reference count, parent
and cached children), on the counters and on what the policy holds evictable. Key streams are chained
(equal key, equal prefix, as traces are) or arbitrary (repeated keys, keys under two parents), where the
order of events inside a batch matters most.
"""

from __future__ import annotations

import random
from collections import OrderedDict
from functools import partial

import pytest

from kvbench.cache import POLICIES, PrefixCache, make_policy
from kvbench.cache.lru import LRUPolicy
from kvbench.cache.policy import EvictionPolicy
from kvbench.cache.prefix import Admission
from tests.cache.cache_drivers import KeyChains


# ------------------------------------------------------------------------------------------- references
class ReferenceLRU(EvictionPolicy):
    """vLLM's free queue as an ordered dict: append on unpin (tail block first), out on pin, evict the head."""

    name = "lru"

    def __init__(self) -> None:
        self.queue: OrderedDict[int, None] = OrderedDict()

    def on_insert(self, key, parent):
        pass

    def on_access(self, key):
        pass

    def on_pin(self, key):
        del self.queue[key]

    def on_unpin(self, keys):
        for key in reversed(keys):
            self.queue[key] = None

    def victim(self):
        return self.queue.popitem(last=False)[0]

    def on_remove(self, key):
        self.queue.pop(key, None)

    def evictable_count(self):
        return len(self.queue)

    def order(self):
        return list(self.queue)


class ReferenceCache:
    """Block by block, one policy call per event: what ``PrefixCache`` computes, written for clarity."""

    def __init__(self, capacity: int | None, policy: EvictionPolicy, block_size: int) -> None:
        self.capacity, self.policy, self.block_size = capacity, policy, block_size
        self.nodes: dict[int, list] = {}  # key -> [reference count, parent key, cached children]
        self.evictable = self.uncached = 0
        self.stats = [0, 0, 0, 0]  # queries_tokens, hit_tokens, inserted_blocks, evicted_blocks

    def match(self, keys):
        n = 0
        while n < len(keys) and keys[n] in self.nodes:
            n += 1
        return n

    def admit(self, keys, total, max_hit=None, query_tokens=None, *, allocate=None, new_request=True):
        hits = self.match(keys)
        if max_hit is not None and hits > max_hit:
            hits = max(max_hit, 0)
        hits = min(hits, total)
        if self.capacity is not None:
            revivable = sum(1 for key in keys[:hits] if self.nodes[key][0] == 0)
            free = self.capacity - len(self.nodes) - self.uncached
            if total - hits > free + self.evictable - revivable:
                return None
        if new_request:
            self.policy.on_request()
        pinned = list(keys[:hits])
        for key in pinned:
            node = self.nodes[key]
            if node[0] == 0:
                self.evictable -= 1
                self.policy.on_pin(key)
            node[0] += 1
            self.policy.on_access(key)
        if new_request:
            self.stats[0] += len(keys) * self.block_size if query_tokens is None else query_tokens
            self.stats[1] += hits * self.block_size
        adm = Admission(keys, total, hits, hits * self.block_size, pinned, 0)
        self.grow(adm, total if allocate is None else min(allocate, total))
        return adm

    def grow(self, adm, blocks):
        need = blocks - len(adm.pinned) - adm.fresh_blocks
        if need <= 0:
            return True
        if self.capacity is not None:
            free = self.capacity - len(self.nodes) - self.uncached
            if need > free + self.evictable:
                return False
            for _ in range(need - free):
                self.evict_one()
        self.uncached += need
        adm.fresh_blocks += need
        return True

    def commit(self, adm, blocks=None):
        adm.committed = True
        end = min(len(adm.hash_ids), len(adm.pinned) + adm.fresh_blocks)
        if blocks is not None and blocks < end:
            end = blocks
        start = len(adm.pinned)
        if end <= start:
            return
        parent = adm.pinned[-1] if adm.pinned else None
        for key in adm.hash_ids[start:end]:
            node = self.nodes.get(key)
            if node is None:
                self.nodes[key] = [1, parent, 0]
                if parent is not None:
                    self.nodes[parent][2] += 1
                self.policy.on_insert(key, parent)
                self.stats[2] += 1
            else:
                if node[0] == 0:
                    self.evictable -= 1
                    self.policy.on_pin(key)
                node[0] += 1
                self.policy.on_access(key)
            adm.pinned.append(key)
            parent = key
        adm.fresh_blocks -= end - start
        self.uncached -= end - start

    def release(self, adm):
        zero = []
        for key in adm.pinned:
            node = self.nodes[key]
            node[0] -= 1
            if node[0] == 0:
                zero.append(key)
        if zero:
            self.evictable += len(zero)
            self.policy.on_unpin(zero)
        self.uncached -= adm.fresh_blocks
        adm.fresh_blocks = 0

    def flush(self):
        n = 0
        while self.evictable:
            self.evict_one(count=False)
            n += 1
        return n

    def evict_one(self, count=True):
        key = self.policy.victim()
        node = self.nodes.pop(key, None)
        if node is None or node[0] or node[2]:
            raise RuntimeError(f"eviction policy {self.policy.name!r} chose block {key}, which is not an evictable leaf")
        if node[1] is not None:
            self.nodes[node[1]][2] -= 1
        self.evictable -= 1
        if count:
            self.stats[3] += 1


# ------------------------------------------------------------------------------------------------ driver
def _requests(rng: random.Random, chained: bool, n: int) -> list[list[int]]:
    chains = KeyChains()
    out = []
    for _ in range(n):
        shared, suffix = rng.randint(0, 6), rng.randint(0, 4)
        keys = chains.request(rng.randrange(4), shared if shared + suffix else 1, rng.randrange(40), suffix)
        if not chained and rng.random() < 0.4:
            # a key repeated in place, or one taken from another request (so it sits under two parents)
            i = rng.randrange(len(keys))
            keys.insert(i, keys[i] if rng.random() < 0.5 or not out else rng.choice(rng.choice(out)))
        out.append(keys)
    return out


def _policy(name: str, requests: list[list[int]], seed: int, reference: bool) -> EvictionPolicy:
    if reference and name == "lru":
        return ReferenceLRU()
    return make_policy(name, seed=seed, future=requests if name == "belady" else None)


def _same_state(cache: PrefixCache, ref: ReferenceCache, where: str) -> None:
    assert cache._nodes == {k: tuple(v) for k, v in ref.nodes.items()}, where
    s = cache.stats
    assert [s.queries_tokens, s.hit_tokens, s.inserted_blocks, s.evicted_blocks] == ref.stats, where
    assert (cache.evictable_blocks, cache.used_blocks) == (ref.evictable, len(ref.nodes) + ref.uncached), where
    assert cache.policy.evictable_count() == ref.policy.evictable_count() == ref.evictable, where
    if ref.policy.name == "lru":
        assert cache.policy.order() == ref.policy.order(), where


def _same_admission(a: Admission | None, b: Admission | None, where: str) -> None:
    assert (a is None) == (b is None), where
    if a is not None:
        assert (a.hit_blocks, a.pinned, a.fresh_blocks) == (b.hit_blocks, b.pinned, b.fresh_blocks), where


RAISED: list[tuple[str, str]] = []


def _both(where: str, *calls):
    """The same call on the real cache and on the reference: the same result or the same exception."""
    out = []
    for call in calls:
        try:
            out.append(("ok", call()))
        except Exception as exc:  # noqa: BLE001 - whatever one raises, the other must raise too
            out.append(("raised", type(exc).__name__, str(exc)))
    if out[0][0] == "raised" or out[1][0] == "raised":
        assert out[0] == out[1], where
        RAISED.append(out[0][1:])
        return None
    return out[0][1], out[1][1]


def drive(name: str, seed: int, chained: bool, steps: int = 300) -> int:
    """Random operations on both caches; returns how many blocks were evicted (the streams must evict)."""
    rng = random.Random(seed)
    requests = _requests(rng, chained, steps)
    capacity = None if rng.random() < 0.1 else rng.randint(10, 24)
    caches = (PrefixCache(capacity, _policy(name, requests, seed, False), 4),
              ReferenceCache(capacity, _policy(name, requests, seed, True), 4))
    running: list[tuple[Admission, Admission]] = []
    released: list[list[int]] = []
    nxt = 0
    for step in range(steps):
        where = f"{name} seed {seed} step {step}"
        op = rng.random()
        if 0.3 <= op < 0.97 and not running or op < 0.3 and (len(running) == 3 or nxt == len(requests)):
            continue
        if op < 0.3:
            keys = requests[nxt]
            readmit = bool(released) and rng.random() < 0.2
            if readmit:
                keys = released.pop(rng.randrange(len(released)))
            total = len(keys) + rng.randint(0, 2)
            if capacity is not None and total > capacity:
                nxt += not readmit
                continue
            max_hit = rng.choice([None, len(keys) - 1, rng.randint(0, len(keys))])
            allocate = rng.choice([None, 0, rng.randint(0, total)])
            got = _both(where, *(partial(c.admit, keys, total, max_hit, allocate=allocate, new_request=not readmit)
                                 for c in caches))
            if got is None:
                return -1
            _same_admission(*got, where)
            if got[0] is not None:
                nxt += not readmit
                running.append(got)
        elif op < 0.45:
            pair = running[rng.randrange(len(running))]
            blocks = rng.randint(pair[0].held_blocks, pair[0].total_blocks)
            got = _both(where, *(partial(c.grow, adm, blocks) for c, adm in zip(caches, pair)))
            if got is None:
                return -1
            assert got[0] == got[1], where
        elif op < 0.72:
            pair = running[rng.randrange(len(running))]
            blocks = rng.choice([None, rng.randint(0, pair[0].held_blocks + 1)])
            if _both(where, *(partial(c.commit, adm, blocks) for c, adm in zip(caches, pair))) is None:
                return -1
            assert pair[0].pinned == pair[1].pinned and pair[0].fresh_blocks == pair[1].fresh_blocks, where
        elif op < 0.97:
            pair = running.pop(rng.randrange(len(running)))
            released.append(list(pair[1].hash_ids))
            if _both(where, *(partial(c.release, adm) for c, adm in zip(caches, pair))) is None:
                return -1
        elif op < 0.985:
            got = _both(where, *(c.flush for c in caches))
            if got is None:
                return -1
            assert got[0] == got[1], where
        else:
            keys = requests[rng.randrange(len(requests))]
            assert caches[0].match(keys) == caches[1].match(keys), where
        _same_state(caches[0], caches[1], where)
    return caches[1].stats[3]


@pytest.mark.parametrize("name", list(POLICIES))
def test_the_cache_decides_as_block_by_block_on_chained_keys(name):
    evicted = sum(max(drive(name, seed, chained=True), 0) for seed in range(25))
    assert evicted > 400


@pytest.mark.parametrize("name", list(POLICIES))
def test_the_cache_decides_as_block_by_block_on_arbitrary_keys(name):
    # repeated keys and keys under two parents: runs of inserts and shared blocks interleave inside one
    # commit, hits repeat a key; a policy may reject such a stream (both caches then raise the same)
    finished = sum(drive(name, seed, chained=False) >= 0 for seed in range(25))
    assert finished >= 5


def test_a_released_admission_keeps_no_key():
    """The simulator drops a finished request's key list; the admission it keeps must not hold it alive."""
    cache = PrefixCache(8, make_policy("lru"), block_size=4)
    keys = [1, 2, 3]
    adm = cache.admit(keys, 4)
    cache.commit(adm)
    assert adm.pinned == keys and len(adm.slots) == 3
    cache.release(adm)
    assert (adm.hash_ids, adm.pinned, adm.slots, adm.fresh_blocks) == ((), [], [], 0)
    assert cache.match(keys) == 3 and cache.evictable_blocks == 3


# ----------------------------------------------------------------------------------- the default loops
class Log(EvictionPolicy):
    """Records the single calls; no batch overrides, so every batch call comes through them."""

    name = "log"

    def __init__(self) -> None:
        self.events: list[tuple] = []
        self.free: list[int] = []

    def on_insert(self, key, parent):
        self.events.append(("insert", key, parent))

    def on_access(self, key):
        self.events.append(("access", key))

    def on_pin(self, key):
        self.events.append(("pin", key))
        self.free.remove(key)

    def on_unpin(self, keys):
        self.free.extend(keys)

    def victim(self):
        self.events.append(("victim",))
        return self.free.pop()

    def on_remove(self, key):
        pass

    def evictable_count(self):
        return len(self.free)


def test_default_batch_calls_are_the_single_calls_in_order():
    log = Log()
    log.free = [5, 7, 9]
    log.on_insert_chain([1, 2, 3], None)
    log.on_insert_chain([4], 3)
    log.on_hits([6, 7, 7, 8, 9], [7, 9])  # a key's first occurrence only can be revived
    log.on_hits([10], [])
    assert log.events == [("insert", 1, None), ("insert", 2, 1), ("insert", 3, 2), ("insert", 4, 3),
                          ("access", 6), ("pin", 7), ("access", 7), ("access", 7), ("access", 8),
                          ("pin", 9), ("access", 9), ("access", 10)]
    log.events.clear()
    victims = log.victims(1)
    assert log.events == []  # lazy: each victim() when the owner asks for it
    assert list(victims) == [5] and log.events == [("victim",)]


LRU_BATCHES = {"victims": ("victim",), "on_insert_chain": ("on_insert",), "on_hits": ("on_pin", "on_access")}


@pytest.mark.parametrize("single", [s for singles in LRU_BATCHES.values() for s in singles])
@pytest.mark.parametrize("how", ["subclass", "instance"])
def test_lru_batch_calls_fall_back_to_a_replaced_single_call(single, how):
    """A policy that wraps one of lru's single calls (a subclass, or the instance patched as the tests and
    the plugin comparison do) hears every event through it, in the order the single calls would come."""
    heard: list[tuple] = []

    def method(self, *args):
        heard.append(args)
        return getattr(LRUPolicy, single)(self, *args)

    if how == "subclass":
        policy = type("Wrapped", (LRUPolicy,), {single: method})()
    else:
        policy = LRUPolicy()
        setattr(policy, single, method.__get__(policy))
    cache = PrefixCache(6, policy, block_size=4)
    for keys in ([1, 2, 3], [1, 2, 4], [5, 6], [1, 7, 8]):
        adm = cache.admit(keys, len(keys))
        cache.commit(adm)
        cache.release(adm)
    expect = {
        "on_insert": [(k, p) for k, p in [(1, None), (2, 1), (3, 2), (4, 2), (5, None), (6, 5), (7, 1), (8, 7)]],
        "on_pin": [(1,), (2,), (1,)],
        "on_access": [(1,), (2,), (1,)],
        "victim": [(), ()],  # the last request's two blocks: the queue's head, 3 then 4
    }[single]
    assert heard == expect


# ---------------------------------------------------------------------------------------- lru's queue
@pytest.mark.parametrize("seed", range(4))
def test_lru_queue_follows_the_ordered_dict_through_rebuilds_removals_and_resets(seed):
    """Long protocol-abiding streams straight to the policy: hits on queued blocks leave stale entries (a
    first phase evicts nothing, so they pile up until the queue is rebuilt); removals of queued and of
    pinned blocks, resets; single and batched victims."""
    rng = random.Random(seed)
    real, model = LRUPolicy(), ReferenceLRU()
    rebuilds = []
    compact = real._compact
    real._compact = lambda: (rebuilds.append(real._entries > 2 * real._live + 1024), compact())
    pinned: set[int] = set()
    evictable: set[int] = set()
    fresh = iter(range(10**6))
    for step in range(9000):
        op = rng.random()
        if step < 5000 and (0.85 <= op < 0.93 or op >= 0.99):
            continue  # no victims nor resets yet: stale entries pile up
        if op < 0.2 or not (pinned or evictable):
            key = next(fresh)
            for p in (real, model):
                p.on_insert(key, None)
            pinned.add(key)
        elif op < 0.6 and evictable:
            keys = rng.sample(sorted(evictable), min(len(evictable), rng.randint(1, 4)))
            revived = [k for k in keys if rng.random() < 0.8]
            real.on_hits(keys, revived) if rng.random() < 0.5 else [real.on_pin(k) for k in revived]
            for k in revived:
                model.on_pin(k)
            evictable -= set(revived)
            pinned |= set(revived)
        elif op < 0.85 and pinned:
            keys = rng.sample(sorted(pinned), min(len(pinned), rng.randint(1, 6)))
            for p in (real, model):
                p.on_unpin(keys)
            pinned -= set(keys)
            evictable |= set(keys)
        elif op < 0.93 and evictable:
            n = rng.randint(1, len(evictable))
            got = real.victims(n) if rng.random() < 0.5 else [real.victim() for _ in range(n)]
            assert list(got) == [model.victim() for _ in range(n)]
            evictable -= set(got)
        elif op < 0.99:
            key = rng.choice(sorted(pinned | evictable | {next(fresh)}))
            for p in (real, model):
                p.on_remove(key)
            pinned.discard(key)
            evictable.discard(key)
        else:
            gone = rng.sample(sorted(pinned | evictable), min(3, len(pinned | evictable)))
            for p in (real, model):
                p.clear(gone)
            pinned -= set(gone)
            evictable -= set(gone)
        assert real.order() == model.order()
        assert real.evictable_count() == model.evictable_count() == len(evictable)
        assert sum(real._stale.values()) == real._entries - real._live
    assert sum(rebuilds) >= 1  # the queue was rebuilt from its live entries
