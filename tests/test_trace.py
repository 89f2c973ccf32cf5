"""The shared trace contract: schema, metadata, validation, chained hashes, built-in tokenizer."""

import numpy as np
import pandas as pd
import pytest

from kvbench.errors import KvbenchError
from kvbench.hashing import block_hashes, block_hashes_many, coarsen
from kvbench.tokenizer import WORD_COUNT, BuiltinTokenizer
from kvbench.trace import TraceMeta, hash_ids_at, ideal_hit_rate, read_trace, write_trace


def _frame(prompts, block_size=4):
    return pd.DataFrame(
        {
            "request_id": [f"r{i}" for i in range(len(prompts))],
            "arrival_s": np.arange(len(prompts), dtype=float),
            "input_tokens": [len(p) for p in prompts],
            "output_tokens": [1] * len(prompts),
            "prompt_token_ids": [np.asarray(p, dtype=np.int32) for p in prompts],
            "hash_ids": [block_hashes(np.asarray(p), block_size) for p in prompts],
        }
    )


def test_round_trip_and_metadata(tmp_path):
    df = _frame([[1, 2, 3, 4, 5, 6, 7, 8, 9], [1, 2, 3, 4, 9, 9, 9, 9]])
    meta = TraceMeta(generator="test", block_size=4, seed=3, params={"x": 1}, synthetic=True, source="unit")
    path = write_trace(tmp_path / "t.parquet", df, meta)
    trace = read_trace(path)
    assert trace.meta == meta and len(trace) == 2
    assert trace.df["user_tokens"].tolist() == [9, 8] and trace.df["turn"].tolist() == [0, 0]
    # second prompt shares its first block only; the last token is always recomputed
    assert ideal_hit_rate(trace) == pytest.approx(4 / 17)


def test_validation_errors(tmp_path):
    meta = TraceMeta(generator="test", block_size=4)
    bad = _frame([[1, 2, 3, 4, 5]])
    bad.loc[0, "output_tokens"] = -1
    with pytest.raises(KvbenchError, match="'output_tokens' is negative"):
        write_trace(tmp_path / "a.parquet", bad, meta)
    bad = _frame([[1, 2, 3, 4, 5]])
    bad.at[0, "hash_ids"] = np.array([], dtype=np.int64)
    with pytest.raises(KvbenchError, match="full blocks only"):
        write_trace(tmp_path / "b.parquet", bad, meta)
    assert not list(tmp_path.iterdir())


def test_block_hashes_are_chained_prefix_ids():
    a = np.arange(64)
    b = a.copy()
    b[20] = 999
    ha, hb = block_hashes(a, 16), block_hashes(b, 16)
    assert ha[0] == hb[0] and (ha[1:] != hb[1:]).all()  # a change poisons every later block
    assert len(block_hashes(np.arange(47), 16)) == 2
    assert coarsen(ha, 2).tolist() == [ha[1], ha[3]]  # a 32-token block is named by its last 16-token id


def test_block_hashes_many_equals_per_sequence():
    rng = np.random.default_rng(0)
    lengths = rng.integers(0, 300, 40)
    lengths[[0, 5]] = 0
    flat = rng.integers(0, 30000, int(lengths.sum()))
    for chunk in (1, 100, 1 << 18):
        hashes, counts = block_hashes_many(flat, lengths, 16, chunk_tokens=chunk)
        expected, start = [], 0
        for n in lengths:
            expected.append(block_hashes(flat[start : start + n], 16))
            start += n
        assert (hashes == np.concatenate(expected)).all() and (counts == lengths // 16).all()


def test_hash_ids_at_coarser_block(tmp_path):
    df = _frame([list(range(16))])
    path = write_trace(tmp_path / "t.parquet", df, TraceMeta(generator="t", block_size=4))
    trace = read_trace(path)
    assert len(hash_ids_at(trace, 8)[0]) == 2
    with pytest.raises(ValueError, match="multiple"):
        hash_ids_at(trace, 6)


def test_builtin_tokenizer_round_trips_random_ids():
    tok = BuiltinTokenizer()
    ids = np.random.default_rng(0).integers(0, WORD_COUNT, 5000)
    assert tok.encode(tok.decode(ids)) == ids.tolist()
    assert (tok.token_space() == np.arange(WORD_COUNT)).all()
    text, cut = tok.truncate("Hello, big world! And more.", 4)
    assert text == "Hello, big world" and cut == tok.encode(text) and len(cut) == 4


def test_unknown_format_version_is_refused(tmp_path):
    meta = TraceMeta(generator="test", block_size=4, format_version="99")
    path = write_trace(tmp_path / "t.parquet", _frame([[1, 2, 3, 4, 5]]), meta)
    with pytest.raises(KvbenchError, match=r"format_version '99' is not one this kvbench reads .*regenerate"):
        read_trace(path)


def test_a_growing_sequence_hashes_like_the_whole_prompt():
    from kvbench.hashing import GrowingSequence

    rng = np.random.default_rng(0)
    grown, whole = GrowingSequence(16), np.zeros(0, dtype=np.int64)
    for k in range(60):
        user, answer = rng.integers(0, 1000, rng.integers(0, 40)), rng.integers(0, 1000, rng.integers(0, 40))
        assert np.array_equal(grown.ids_with(user), block_hashes(np.concatenate([whole, user]), 16)), k
        grown.extend(user)
        grown.extend(answer)
        whole = np.concatenate([whole, user, answer])
        assert grown.length == len(whole)


def test_vectorised_ideal_hits_agree_with_a_set_of_seen_blocks():
    """ideal_hits sorts all block ids once; check it against the plain definition (a set of blocks seen by
    earlier requests, a hit stopping at the first unseen block), with repeats inside and across requests."""
    from kvbench.trace import ideal_hits

    def reference(lists, inp, bs, order):
        seen, hits = set(), np.zeros(len(lists), dtype=np.int64)
        for i in order:
            n = 0
            for h in lists[i][: max(0, (int(inp[i]) - 1) // bs)].tolist():
                if h not in seen:
                    break
                n += 1
            hits[i] = n * bs
            seen.update(lists[i].tolist())
        return hits

    rng = np.random.default_rng(7)
    for trial in range(30):
        lists = [rng.integers(0, 1 + trial * 3, rng.integers(0, 12)) for _ in range(rng.integers(1, 60))]
        inp = np.array([len(x) * 16 + int(rng.integers(-3, 17)) for x in lists]).clip(0)
        order = rng.permutation(len(lists))
        assert np.array_equal(ideal_hits(lists, inp, 16, order), reference(lists, inp, 16, order)), trial
        assert np.array_equal(ideal_hits(lists, inp, 16), reference(lists, inp, 16, range(len(lists)))), trial
