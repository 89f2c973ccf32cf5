"""Hash-only imports: the source's block ids instead of materialized prompts, with nothing changed for the user.

Each test compares a hash-only import with the same import under ``--token-ids`` (today's materialized
prompts): the tokens sent, the hash equalities at several block sizes, the simulated results and `inspect`.
"""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from kvbench.errors import KvbenchError
from kvbench.http.prompts import PromptSource
from kvbench.plan import make_plan
from kvbench.resolve import resolve
from kvbench.sim.run import run_sim
from kvbench.spec import ReplaySpec
from kvbench.trace import Trace, read_trace, write_trace
from kvbench.workloads.summary import summarize_file

STAND_INS = {
    "mooncake": ("--flavour", "conversation", "--requests", "60", "--duration", "40"),
    "bailian": ("--requests", "60", "--duration", "40"),
    "azure": ("--requests", "30", "--duration", "40"),
}


@pytest.fixture(scope="module", params=sorted(STAND_INS))
def pair(request, tmp_path_factory):
    """(materialized, hash-only) imports of one stand-in."""
    from tests.workloads.conftest import run_cli

    fmt = request.param
    d = tmp_path_factory.mktemp(fmt)
    out = {}
    for name, extra in (("ids", ("--token-ids",)), ("hash", ())):
        path = d / f"{name}.parquet"
        r = run_cli("generate", "trace", "--format", fmt, "--synthetic", *STAND_INS[fmt], "--seed", "3",
                    "-o", path, *extra)
        assert r.code == 0, r.message
        out[name] = path
    return fmt, out["ids"], out["hash"]


def test_a_hash_only_import_keeps_source_ids_not_prompts(pair):
    fmt, ids_path, hash_path = pair
    trace = read_trace(hash_path)
    assert trace.meta.hash_only and "source_ids" in trace.df and trace.df["prompt_token_ids"].isna().all()
    assert (trace.df["hash_ids"].map(len) == 0).all()
    assert hash_path.stat().st_size * 5 < ids_path.stat().st_size
    if fmt == "mooncake":
        assert trace.meta.source_block == 512


def test_prompts_sent_are_the_tokens_a_materialized_import_stores(pair):
    _, ids_path, hash_path = pair
    full, lean = read_trace(ids_path), read_trace(hash_path)
    assert full.df["request_id"].tolist() == lean.df["request_id"].tolist()
    source = PromptSource(lean.df, lean.block_size, lean.meta.tokenizer, lean.meta)
    for i, stored in enumerate(full.df["prompt_token_ids"]):
        assert source.recorded(i).token_ids == np.asarray(stored).tolist(), f"row {i}"


@pytest.mark.parametrize("block_size", [16, 48, 512, 1024])
def test_derived_hash_ids_have_the_equalities_of_token_hashes(pair, block_size):
    """A bijection between the token-hash ids and the derived ids: equal blocks stay equal, different stay
    different, at block sizes inside, across and above the 512-token source blocks."""
    _bijection(pair, block_size)


def _bijection(pair, block_size: int) -> int:
    """Checks the bijection; returns how many blocks repeat one seen before (shared prefixes)."""
    _, ids_path, hash_path = pair
    token_ids, derived = read_trace(ids_path).hash_ids_at(block_size), read_trace(hash_path).hash_ids_at(block_size)
    forward: dict[int, int] = {}
    backward: dict[int, int] = {}
    shared = 0
    for a, b in zip(token_ids, derived):
        assert len(a) == len(b)
        for x, y in zip(a.tolist(), b.tolist()):
            shared += x in forward
            assert forward.setdefault(x, y) == y and backward.setdefault(y, x) == x
    assert len(forward) == len(backward)
    return shared


def test_the_stand_ins_share_prefixes_so_the_equality_test_means_something(pair):
    fmt, ids_path, _ = pair
    shared = _bijection(pair, 16)
    assert (shared > 100) == (fmt != "azure")  # Azure lists no ids: every block is the request's own


def _routed_on_hashes(trace: Trace) -> Trace:
    """The materialized import with its token ids dropped, so routers match hash ids as on the hash-only one."""
    df = trace.df.copy()
    df["prompt_token_ids"] = None
    return Trace(df=df, meta=trace.meta, path=trace.path)


@pytest.mark.parametrize("eviction,router", [("lru", "cache_aware"), ("rlt", "round_robin"), ("arc", "lbgr"),
                                             ("s3fifo", "llmd")])
def test_simulated_results_do_not_change(pair, tmp_path, eviction, router):
    _, ids_path, hash_path = pair
    rows = []
    for trace in (_routed_on_hashes(read_trace(ids_path)), read_trace(hash_path)):
        spec = ReplaySpec(trace=trace.path, output=tmp_path / "x", workers=3, cache_tokens=30000, eviction=eviction,
                          router=router, progress=False, max_requests=50)
        resolved = resolve(spec, trace)
        rows.append(run_sim(resolved, trace, plan=make_plan(resolved, trace)).rows)
    a, b = rows
    assert a.drop(columns=["itl_s"]).equals(b.drop(columns=["itl_s"]))
    def itl(df):
        return [None if x is None else list(x) for x in df["itl_s"]]

    assert itl(a) == itl(b)
    assert a["cached_tokens"].sum() > 0 or read_trace(hash_path).meta.generator == "trace:azure"


def test_inspect_says_the_same_of_both(pair):
    _, ids_path, hash_path = pair
    a, b = summarize_file(ids_path), summarize_file(hash_path)
    assert b["with_token_ids"] == 0 and a["with_token_ids"] == a["requests"]
    for key in ("file", "with_token_ids"):
        a.pop(key), b.pop(key)
    assert a == b


def test_a_hash_only_trace_with_stored_hash_ids_or_no_source_ids_is_refused(pair, tmp_path):
    _, _, hash_path = pair
    trace = read_trace(hash_path)
    df = trace.df.copy()
    df.loc[0, "hash_ids"] = np.array([1, 2], dtype=np.int64)
    with pytest.raises(KvbenchError, match="row 0: a hash-only trace derives its hash_ids from source_ids"):
        write_trace(tmp_path / "bad.parquet", df, trace.meta)
    table = pq.read_table(hash_path)
    pq.write_table(table.drop(["source_ids"]), tmp_path / "cut.parquet")
    with pytest.raises(KvbenchError, match="without column 'source_ids'; re-import it"):
        read_trace(tmp_path / "cut.parquet")


def test_deriving_in_chunks_gives_the_same_ids(pair):
    from kvbench.trace import source_hash_ids

    trace = read_trace(pair[2])
    whole = source_hash_ids(trace.df, trace.meta, 16, chunk_blocks=1 << 40)
    for chunk in (1, 7, 100):
        got = source_hash_ids(trace.df, trace.meta, 16, chunk_blocks=chunk)
        assert len(got) == len(whole) and all(np.array_equal(a, b) for a, b in zip(got, whole))


@pytest.mark.parametrize("block_size", [16, 48, 512, 1024])
def test_the_ideal_hit_rate_walks_source_blocks_to_the_same_hits(pair, block_size):
    """source_ideal_hits (one entry per source block) against the generic sort of every derived block id."""
    from kvbench.trace import ideal_hits, replay_order, source_ideal_hits

    trace = read_trace(pair[2])
    inp = trace.df["input_tokens"].to_numpy()
    rng = np.random.default_rng(block_size)
    for order in (replay_order(trace.df), rng.permutation(len(trace.df)), rng.permutation(len(trace.df))):
        want = ideal_hits(trace.hash_ids_at(block_size), inp, block_size, order)
        assert np.array_equal(source_ideal_hits(trace, block_size, order), want)
    assert want.sum() > 0 or pair[0] == "azure"


def test_a_prompt_prepared_before_its_send_time_is_the_one_sent(pair):
    """The replay builds each unit's first prompt while it waits for the send time; the prompt is the same and
    is built for that send only."""
    lean = read_trace(pair[2])
    source = PromptSource(lean.df, lean.block_size, lean.meta.tokenizer, lean.meta)
    fresh = PromptSource(lean.df, lean.block_size, lean.meta.tokenizer, lean.meta)
    for i in (0, len(lean.df) - 1):
        source.prepare(i)
        assert source.recorded(i).token_ids == fresh.recorded(i).token_ids
    assert not source._ready
