"""Synthetic prompts for hash-only traces: one vectorised token function shared with the trace importers."""

from __future__ import annotations

import numpy as np

from kvbench.hashing import block_token_keys, keyed_tokens
from kvbench.http.prompts import synthesize_ids
from kvbench.tokenizer import WORD_COUNT


def test_equal_block_ids_give_identical_blocks_and_different_ids_differ():
    a = synthesize_ids(np.array([11, 22, 33]), 50, 16, "req-a")
    b = synthesize_ids(np.array([11, 22, 44]), 50, 16, "req-b")
    assert len(a) == len(b) == 50 and all(type(t) is int and 0 <= t < WORD_COUNT for t in a)
    assert a[:32] == b[:32]  # shared prefix blocks
    assert a[32:48] != b[32:48]  # the third block's id differs
    assert a[48:] != b[48:]  # the partial tail is the request's own
    assert synthesize_ids(np.array([11, 22, 33]), 50, 16, "req-a") == a  # deterministic across calls


def test_negative_ids_and_short_hash_lists():
    ids = np.array([-5, np.iinfo(np.int64).min, np.iinfo(np.int64).max])
    out = synthesize_ids(ids, 40, 8, "r")  # 40 tokens, 3 blocks of 8: 16 tail tokens from the request id
    assert len(out) == 40 and out[:24] == synthesize_ids(ids, 24, 8, "other")
    assert synthesize_ids(np.array([], dtype=np.int64), 5, 16, "r") == synthesize_ids(np.array([1]), 5, 16, "r")


def test_block_token_keys_are_keyed_tokens_per_block_position():
    ids = np.array([3, -7, 3], dtype=np.int64)
    keys = block_token_keys(ids, 4, salt=9)
    expect = keyed_tokens(np.repeat(ids, 4), np.tile(np.arange(4), 3), salt=9)
    assert keys.dtype == np.uint64 and (keys == expect).all()
    assert (keys[:4] == keys[8:]).all() and (keys[:4] != keys[4:8]).all()
    assert len(set(keys[:4].tolist())) == 4  # positions within a block differ
    assert (block_token_keys(ids, 4, salt=10) != keys).all()
