"""Fast-forwarding runs of pure-decode steps (kvbench.sim.engine.ClusterSimulator) changes no result: each
configuration is simulated with it on and off, and every request's times, token times, counters and
worker, every worker's counters and every cache's counters must be equal, floats bit for bit."""

from __future__ import annotations

import random

import numpy as np
import pandas as pd
import pytest

from kvbench.cache import POLICIES
from kvbench.hashing import block_hashes
from kvbench.sim import engine
from kvbench.sim.latency import load_profile
from kvbench.sim.run import run_sim
from kvbench.spec import ReplaySpec
from kvbench.trace import TraceMeta, read_trace, write_trace
from tests.sim.sim_traces import HAND, make_trace, request_trace, write_profile

REQUEST_FIELDS = ("release_s", "first_s", "done_s", "token_s", "cached", "worker", "status", "error",
                  "preemptions", "computed", "generated")
# non-round coefficients, with the KV-read term on, so step times vary along a run
REAL = {"step_base_s": 0.0123, "prefill_token_s": 1.7e-5, "prefill_attn_s": 3.1e-9, "decode_seq_s": 2.3e-4,
        "decode_ctx_s": 1.1e-6}


def lockstep_trace(path, sessions=4, turns=3, output=20, think_s=0.0):
    """Sessions with identical prompts released together, plus identical open-loop requests: with one
    session per worker the workers step in lockstep, so many events share a time and only the heap's push
    order decides between them."""
    rng = np.random.default_rng(7)
    rows = []
    hist = np.zeros(0, dtype=np.int32)
    turn_ids = []
    for _ in range(turns):
        hist = np.concatenate([hist, rng.integers(0, 30000, 40)]).astype(np.int32)
        turn_ids.append(hist.copy())
        hist = np.concatenate([hist, rng.integers(0, 30000, output)]).astype(np.int32)
    for s in range(sessions):
        for turn, ids in enumerate(turn_ids):
            rows.append(dict(request_id=f"s{s}-t{turn}", arrival_s=0.0, session_id=f"s{s}", turn=turn,
                             think_s=think_s if turn else 0.0, group_id=None, input_tokens=len(ids),
                             output_tokens=output, user_tokens=40, prompt=None, prompt_token_ids=ids,
                             hash_ids=block_hashes(ids, 1)))
    for k in range(sessions):
        ids = turn_ids[0]
        rows.append(dict(request_id=f"o{k}", arrival_s=0.5, session_id=None, turn=0, think_s=0.0, group_id=None,
                         input_tokens=len(ids), output_tokens=output // 2, user_tokens=len(ids), prompt=None,
                         prompt_token_ids=ids, hash_ids=block_hashes(ids, 1)))
    meta = TraceMeta(generator="test", block_size=1, seed=0, synthetic=True, source="unit test")
    return write_trace(path, pd.DataFrame(rows), meta)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("ff")
    traces = {
        "mixed": make_trace(d / "mixed.parquet", n_groups=4, per_group=5, rate=20.0, output=24, sessions=3,
                            think_s=0.3, block_size=1),
        "long": make_trace(d / "long.parquet", n_groups=3, per_group=4, prefix=200, suffix=40, rate=6.0,
                           output=70, sessions=2, turns=3, think_s=0.0, block_size=1, seed=3),
        "lockstep": lockstep_trace(d / "lockstep.parquet"),
        "lockstep6": lockstep_trace(d / "lockstep6.parquet", sessions=6, output=33),
    }
    hand = load_profile(str(write_profile(d / "probe.toml")))
    profiles = {
        "real": write_profile(d / "real.toml", **REAL),
        "real_fe": write_profile(d / "real_fe.toml", **REAL, request_s=0.03, request_sigma=0.5),
        "hand": write_profile(d / "hand.toml"),
        # a front-end delay equal to a one- or two-sequence decode step: requests released when a lockstep
        # worker's step ends join a queue exactly when the next step ends
        "hand_tie1": write_profile(d / "hand_tie1.toml", request_s=hand.step_time(0, 0.0, 1, 0)),
        "hand_tie2": write_profile(d / "hand_tie2.toml", request_s=hand.step_time(0, 0.0, 2, 0)),
    }
    assert HAND["decode_ctx_s"] == 0.0  # hand step times repeat exactly along a run
    return d, {k: read_trace(v) for k, v in traces.items()}, profiles


def simulate(monkeypatch, d, trace, profile, fast_forward, **kw):
    sims = []
    real_run = engine.ClusterSimulator.run

    def run(self, first):
        sims.append(self)
        real_run(self, first)

    with monkeypatch.context() as m:
        m.setattr(engine, "FAST_FORWARD", fast_forward)
        m.setattr(engine.ClusterSimulator, "run", run)
        res = run_sim(ReplaySpec(trace=trace.path, output=d / "out", profile=str(profile), progress=False, **kw),
                      trace)
    return res, sims[-1]


def assert_same(a, b):
    (ra, sa), (rb, sb) = a, b
    assert len(sa.requests) == len(sb.requests)
    for x, y in zip(sa.requests, sb.requests):
        for f in REQUEST_FIELDS:
            assert getattr(x, f) == getattr(y, f), (x.route.request_id, f)
        assert [type(t) for t in x.token_s] == [float] * len(x.token_s)
    pd.testing.assert_frame_equal(ra.rows, rb.rows, check_exact=True)
    assert ra.config == rb.config  # steps, busy_s, preemptions per worker, simulated_s, cache and router state
    assert ra.hit_rates == rb.hit_rates
    assert sa.now == sb.now
    assert [(w.steps, w.busy_s, w.preemptions) for w in sa.workers] == \
        [(w.steps, w.busy_s, w.preemptions) for w in sb.workers]


def check(monkeypatch, setup, trace, profile, **kw):
    d, traces, profiles = setup
    on = simulate(monkeypatch, d, traces[trace], profiles[profile], True, **kw)
    off = simulate(monkeypatch, d, traces[trace], profiles[profile], False, **kw)
    assert off[1].virtual_steps == 0
    assert_same(on, off)
    return on[1].virtual_steps


ROUTERS = ("round_robin", "cache_aware", "llmd", "least_load", "prefix_hash", "kv_cost")


def configs(n, seed):
    """``n`` configurations drawn from every dimension the fast path depends on; each eviction policy and
    router comes round in turn, half the caches are small enough to preempt and evict."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        bs = rng.choice((1, 16, 16, 64))
        small = i % 2 == 0
        out.append(dict(
            trace=rng.choice(("mixed", "long")), profile=rng.choice(("real", "real_fe", "hand", "hand_tie1")),
            eviction=list(POLICIES)[i % len(POLICIES)], router=ROUTERS[i % len(ROUTERS)],
            workers=rng.randint(1, 4), block_size=bs,
            cache_tokens=rng.choice((400, 520, 700)) if small else rng.choice((None, 3000)),
            chunked_prefill=rng.random() < 0.6, history=rng.choice(("recorded", "generated")),
            seed=rng.randint(0, 5), time_scale=rng.choice((0.3, 1.0, 2.0)),
            max_num_seqs=rng.choice((256, 3)), max_batched_tokens=rng.choice((8192, 8192, 300)),
            warmup=rng.choice((0, 0, 4))))
    return out


@pytest.mark.parametrize("part", range(4))
def test_fast_forward_changes_nothing(monkeypatch, setup, part):
    virtual = 0
    for kw in configs(50, part):
        try:
            virtual += check(monkeypatch, setup, **kw)
        except AssertionError as e:
            raise AssertionError(f"{kw}: {e}") from e
    assert virtual > 1000  # the fast path did run


@pytest.mark.parametrize("profile", ["hand", "hand_tie1", "hand_tie2", "real_fe"])
@pytest.mark.parametrize("router", ["round_robin", "least_load", "cache_aware"])
def test_fast_forward_keeps_the_order_of_simultaneous_events(monkeypatch, setup, router, profile):
    """Workers in lockstep: step ends, releases (think time 0) and queue arrivals share times, and who is
    routed where depends on which of them the heap handles first."""
    virtual = 0
    for workers, cache, history, bs in ((4, None, "generated", 16), (4, 400, "recorded", 1), (2, 300, "generated", 16),
                                        (3, None, "recorded", 64)):
        virtual += check(monkeypatch, setup, "lockstep", profile, router=router, workers=workers, cache_tokens=cache,
                         history=history, block_size=bs, eviction="lru")
    assert virtual > 0


@pytest.mark.parametrize("trace,cache,block_size,seqs", [
    ("lockstep", 80, 16, 3), ("lockstep", 100, 16, 256), ("lockstep", 120, 1, 256), ("lockstep", 150, 16, 3),
    ("lockstep", 200, 16, 256), ("lockstep6", 120, 4, 256), ("lockstep6", 80, 4, 3), ("lockstep6", 100, 16, 256)])
def test_fast_forward_stops_before_commits_that_could_admit_the_waiting_head(monkeypatch, setup, trace, cache,
                                                                              block_size, seqs):
    """One worker, identical sessions with --history generated: running turns commit the same output keys
    (the next turns' prompt blocks), sharing blocks instead of filling new ones, while a request waits for
    room."""
    assert check(monkeypatch, setup, trace, "hand", workers=1, cache_tokens=cache, block_size=block_size,
                 history="generated", max_num_seqs=seqs) > 0


def ids(n, start):
    return np.arange(start, start + n)


@pytest.mark.parametrize("request_s", ["zero", "one_step"])
def test_a_request_joining_exactly_when_a_step_ends(monkeypatch, tmp_path, request_s):
    """Two requests decode on one worker; a third is released exactly when one of their steps ends (every
    step in turn), and joins the queue then (request_s 0: the plan at that step end sees it) or exactly one
    decode step later (its front-end delay pushed by its release, which the heap handles before that step end
    pushes the next one: the next plan sees it)."""
    hand = load_profile(str(write_profile(tmp_path / "probe.toml")))
    delay = 0.0 if request_s == "zero" else hand.step_time(0, 0.0, 2, 0)
    profile = write_profile(tmp_path / "p.toml", request_s=delay)
    base = [("a", 0.0, ids(40, 1000), 30), ("b", 0.0, ids(40, 2000), 45)]
    trace = read_trace(request_trace(tmp_path / "probe.parquet", base))
    _, probe = simulate(monkeypatch, tmp_path, trace, profile, False, workers=1)
    ends = probe.requests[1].token_s  # every step end while b runs
    virtual = 0
    for j, t in enumerate(ends[:-1]):
        trace = read_trace(request_trace(tmp_path / f"t{j}.parquet", base + [("c", t, ids(40, 3000), 3)]))
        on = simulate(monkeypatch, tmp_path, trace, profile, True, workers=1)
        off = simulate(monkeypatch, tmp_path, trace, profile, False, workers=1)
        assert on[1].requests[2].release_s == t
        assert_same(on, off)
        virtual += on[1].virtual_steps
    assert virtual > 0


@pytest.mark.parametrize("workers", [2, 3])
@pytest.mark.parametrize("blocked_at", [0.1, 0.2])
def test_a_run_starting_when_another_runs_step_ends(monkeypatch, tmp_path, workers, blocked_at):
    """Workers decode identical session turns in lockstep. A request that cannot fit joins the first
    worker's queue mid-run, so that worker's run is cut and a new one starts at a step end the other worker
    fast-forwards through; both then finish together, and which completion the heap handles first decides
    which worker the next turns (think time 0, round robin) go to."""
    rows = []
    rng = np.random.default_rng(1)
    t0 = rng.integers(0, 30000, 40)
    t1 = np.concatenate([t0, rng.integers(0, 30000, 60)])
    for s in range(workers):
        for turn, tokens in enumerate((t0, t1)):
            rows.append(dict(request_id=f"s{s}-t{turn}", arrival_s=0.0, session_id=f"s{s}", turn=turn, think_s=0.0,
                             group_id=None, input_tokens=len(tokens), output_tokens=60, user_tokens=40, prompt=None,
                             prompt_token_ids=tokens.astype(np.int32), hash_ids=block_hashes(tokens, 16)))
    big = rng.integers(0, 30000, 130).astype(np.int32)
    rows.append(dict(request_id="big", arrival_s=blocked_at, session_id=None, turn=0, think_s=0.0, group_id=None,
                     input_tokens=130, output_tokens=2, user_tokens=130, prompt=None, prompt_token_ids=big,
                     hash_ids=block_hashes(big, 16)))
    meta = TraceMeta(generator="test", block_size=16, seed=0, synthetic=True, source="unit test")
    trace = read_trace(write_trace(tmp_path / "t.parquet", pd.DataFrame(rows), meta))
    profile = write_profile(tmp_path / "hand.toml")
    kw = dict(workers=workers, router="round_robin", cache_tokens=176)
    on = simulate(monkeypatch, tmp_path, trace, profile, True, **kw)
    off = simulate(monkeypatch, tmp_path, trace, profile, False, **kw)
    assert_same(on, off)
    first = {r.route.request_id: r for r in off[1].requests}
    assert first["s0-t0"].done_s == first["s1-t0"].done_s and first["big"].worker == 0
    assert on[1].virtual_steps > 0


@pytest.mark.parametrize("k", [2, 7, 13])
def test_ctrl_c_leaves_the_same_partial_results(monkeypatch, setup, k):
    """Interrupted when the k-th request finishes, the runs under way are left as the ordinary path leaves
    them at that event: steps ended before it done, the one under way planned."""
    real_finish = engine.ClusterSimulator._finish
    results = []
    for fast_forward in (True, False):
        def finish(self, r, now, seen=[0]):  # noqa: B006 (a counter per simulation)
            seen[0] += 1
            if seen[0] == k:
                raise KeyboardInterrupt
            real_finish(self, r, now)

        monkeypatch.setattr(engine.ClusterSimulator, "_finish", finish)
        d, traces, profiles = setup
        results.append(simulate(monkeypatch, d, traces["long"], profiles["real"], fast_forward, workers=3,
                                cache_tokens=700, eviction="lru"))
    assert results[0][0].interrupted and results[1][0].interrupted
    assert_same(*results)
    assert results[0][1].virtual_steps > 0


def test_fast_forward_is_off_for_belady_and_samplers(monkeypatch, setup):
    d, traces, profiles = setup
    _, sim = simulate(monkeypatch, d, traces["mixed"], profiles["real"], True, eviction="belady", workers=2,
                      cache_tokens=520)
    assert sim.virtual_steps == 0
    _, sim = simulate(monkeypatch, d, traces["mixed"], profiles["real"], True, workers=2, scrape_interval_s=0.05)
    assert sim.virtual_steps == 0
    _, sim = simulate(monkeypatch, d, traces["mixed"], profiles["real"], True, workers=2)
    assert sim.virtual_steps > 0
