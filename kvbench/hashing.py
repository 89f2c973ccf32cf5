"""Chained block hashes, vectorised with numpy.

Block ``i`` of a sequence gets ``h_i = mix(P^i * sum_{j<=i} c_j * P^-j)`` (mod 2^64), a polynomial hash of
the per-block content hashes ``c_j``: equal ids mean equal prefixes up to that block, as in vLLM's chained
block hashes, and the whole trace hashes in a few numpy passes instead of a Python loop per block.
Because the hash of block ``i`` identifies the whole prefix, hash ids at block size ``k*b`` are simply every
``k``-th id at block size ``b`` (see :func:`coarsen`).
"""

from __future__ import annotations

import numpy as np

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_P = np.uint64(0x9E3779B97F4A7C15)  # odd, so invertible mod 2^64
_P_INV = np.uint64(pow(int(_P), -1, 1 << 64))
_TOKEN_MULT = np.uint64(0xD6E8FEB86659FD93)


def mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser (uint64 in, uint64 out)."""
    x = np.asarray(x, dtype=np.uint64)
    with np.errstate(over="ignore"):
        x = x ^ (x >> np.uint64(30))
        x = x * _M1
        x = x ^ (x >> np.uint64(27))
        x = x * _M2
        x = x ^ (x >> np.uint64(31))
    return x


def _powers(base: np.uint64, n: int) -> np.ndarray:
    out = np.empty(n, dtype=np.uint64)
    if n == 0:
        return out
    out[0] = 1
    with np.errstate(over="ignore"):
        # cumulative product mod 2^64 by doubling would be faster, but n is small (blocks per request)
        acc = np.uint64(1)
        for i in range(1, n):
            acc = acc * base
            out[i] = acc
    return out


_POW_CACHE: dict[tuple[int, int], np.ndarray] = {}


def _pow_table(base: np.uint64, n: int) -> np.ndarray:
    key = (int(base), 0)
    table = _POW_CACHE.get(key)
    if table is None or len(table) < n:
        size = max(n, 1024, 2 * (0 if table is None else len(table)))
        table = _powers(base, size)
        _POW_CACHE[key] = table
    return table[:n]


def block_content_hashes(token_ids: np.ndarray, block_size: int) -> np.ndarray:
    """One uint64 per *full* block of ``token_ids`` (a partial tail block is never cached)."""
    ids = np.asarray(token_ids, dtype=np.uint64)
    n_blocks = len(ids) // block_size
    blocks = ids[: n_blocks * block_size].reshape(n_blocks, block_size)
    with np.errstate(over="ignore"):
        weights = _pow_table(_TOKEN_MULT, block_size)
        c = (blocks * weights).sum(axis=1, dtype=np.uint64)
    return mix64(c + np.uint64(block_size))


def chain(content: np.ndarray, seed: int = 0) -> np.ndarray:
    """Chain per-block content hashes into prefix hashes (int64)."""
    c = mix64(np.asarray(content, dtype=np.uint64) ^ np.uint64(seed & 0xFFFFFFFFFFFFFFFF))
    n = len(c)
    if n == 0:
        return np.empty(0, dtype=np.int64)
    with np.errstate(over="ignore"):
        acc = np.cumsum(c * _pow_table(_P_INV, n), dtype=np.uint64)
        h = acc * _pow_table(_P, n)
    return mix64(h).view(np.int64)


def block_hashes(token_ids: np.ndarray, block_size: int) -> np.ndarray:
    """Chained hash ids of the full blocks of one token sequence."""
    return chain(block_content_hashes(token_ids, block_size))


class GrowingSequence:
    """Hash ids of a sequence that only grows (a conversation's history), each token hashed once.

    Block ``i``'s id depends on blocks ``0..i`` only, through the running sum of :func:`chain`, so appending
    tokens never changes earlier ids: :meth:`ids_with` prices a prompt of history + new tokens in time
    proportional to the new tokens, where hashing the whole prompt again would make a long conversation
    quadratic.
    """

    def __init__(self, block_size: int):
        self.block_size = block_size
        self.length = 0
        self._ids: list[np.ndarray] = []  # hash ids of the full blocks so far, in pieces
        self._n_blocks = 0
        self._acc = np.uint64(0)  # sum of c_j * P^-j over the full blocks so far
        self._tail = np.zeros(0, dtype=np.int64)  # tokens after the last full block

    def _continue(self, tokens: np.ndarray) -> tuple[np.ndarray, np.uint64, np.ndarray]:
        seq = np.concatenate([self._tail, np.asarray(tokens, dtype=np.int64)])
        n = len(seq) // self.block_size
        if n == 0:
            return np.empty(0, dtype=np.int64), self._acc, seq
        c = mix64(block_content_hashes(seq, self.block_size))
        j = np.arange(self._n_blocks, self._n_blocks + n)
        with np.errstate(over="ignore"):
            p_inv, p = _pow_table(_P_INV, int(j[-1]) + 1)[j], _pow_table(_P, int(j[-1]) + 1)[j]
            acc = self._acc + np.cumsum(c * p_inv, dtype=np.uint64)
            ids = mix64(acc * p).view(np.int64)
        return ids, acc[-1], seq[n * self.block_size:]

    def ids_with(self, tokens: np.ndarray) -> np.ndarray:
        """Hash ids of this sequence followed by ``tokens`` (the sequence itself is unchanged)."""
        new, _, _ = self._continue(tokens)
        return np.concatenate([*self._ids, new]) if self._ids else new

    def extend(self, tokens: np.ndarray) -> None:
        new, self._acc, self._tail = self._continue(tokens)
        if len(new):
            self._ids.append(new)
            self._n_blocks += len(new)
        self.length += len(tokens)


def coarsen(hash_ids: np.ndarray, factor: int) -> np.ndarray:
    """Hash ids at ``factor`` times the block size: the last fine id of each coarse block."""
    hash_ids = np.asarray(hash_ids)
    return hash_ids[factor - 1 :: factor]


def block_hashes_many(flat_tokens: np.ndarray, lengths: np.ndarray, block_size: int,
                      chunk_tokens: int = 1 << 18) -> tuple[np.ndarray, np.ndarray]:
    """:func:`block_hashes` of many sequences stored back to back.

    Returns ``(hashes, counts)``: the concatenated hash ids and the number of full blocks per sequence,
    equal to calling :func:`block_hashes` on each. Sequences are hashed in cache-sized chunks of
    ``chunk_tokens`` so that traces of many short requests avoid a Python call per request.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    flat = np.asarray(flat_tokens)
    counts = lengths // block_size
    ends = np.cumsum(lengths)
    out: list[np.ndarray] = []
    lo, start = 0, 0
    while lo < len(lengths):
        hi = int(np.searchsorted(ends, start + chunk_tokens, side="right"))
        hi = max(hi, lo + 1)
        stop = int(ends[hi - 1])
        out.append(_hash_chunk(flat[start:stop], lengths[lo:hi], counts[lo:hi], block_size))
        lo, start = hi, stop
    hashes = np.concatenate(out) if out else np.empty(0, dtype=np.int64)
    return hashes, counts


def _hash_chunk(flat: np.ndarray, lengths: np.ndarray, counts: np.ndarray, block_size: int) -> np.ndarray:
    total = int(counts.sum())
    if total == 0:
        return np.empty(0, dtype=np.int64)
    if len(lengths) == 1:
        return block_hashes(flat, block_size)
    if total * block_size == len(flat):
        full = flat  # every sequence is a whole number of blocks: no gather needed
    else:
        starts = np.zeros(len(lengths), dtype=np.int64)
        np.cumsum(lengths[:-1], out=starts[1:])
        pos = np.arange(len(flat), dtype=np.int64) - np.repeat(starts, lengths)
        full = flat[pos < np.repeat(counts * block_size, lengths)]
    return _chained(block_content_hashes(full, block_size), counts).view(np.int64)


def keyed_tokens(ids: np.ndarray, pos: np.ndarray, salt: int = 0) -> np.ndarray:
    """A uint64 key per token, a pure function of (id, position, salt): ``mix64(mix64(id ^ salt) + pos)``.

    Synthetic prompts take ``key % vocabulary`` as the token, so equal ids give identical tokens and
    different ids differ almost surely, in a few numpy passes instead of one random generator per block.
    """
    with np.errstate(over="ignore"):
        inner = mix64(np.asarray(ids).astype(np.uint64, copy=False) ^ np.uint64(salt & 0xFFFFFFFFFFFFFFFF))
        return mix64(inner + np.asarray(pos).astype(np.uint64, copy=False))


def block_token_keys(block_ids: np.ndarray, block_size: int, salt: int = 0) -> np.ndarray:
    """:func:`keyed_tokens` of whole blocks: ``block_size`` keys per block id, back to back."""
    ids = np.asarray(block_ids).astype(np.uint64, copy=False)
    pos = np.tile(np.arange(block_size, dtype=np.uint64), len(ids))
    return keyed_tokens(np.repeat(ids, block_size), pos, salt)


_SALT_SOURCE = np.uint64(0x243F6A8885A308D3)
_SALT_OWN = np.uint64(0x13198A2E03707344)
_END_MULT = np.uint64(0xA4093822299F31D1)


def source_block_hashes(src_ids: np.ndarray, src_count: np.ndarray, input_tokens: np.ndarray, source_block: int,
                        block_size: int, row_uid: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Chained hash ids of a hash-only trace's full blocks at any ``block_size``, from the source's block ids.

    An imported prompt's token at position ``p`` is a pure function of the id of the source block holding it
    (when the source lists one) and ``p % source_block``, and unique to the request beyond the listed ids
    (:func:`kvbench.workloads.imports.synthesize_tokens`). So two prompts agree up to token ``e`` exactly
    when their source ids agree up to the block holding token ``e - 1`` and that block is listed: the id of
    the block ending at ``e`` is the chained hash of those source ids mixed with ``e``, and a block ending
    past the listed ids is keyed by the request. These ids have the same equalities as the hashes of the
    synthesized tokens, without synthesizing 145M tokens for a one-hour trace. Returns ``(hashes, counts)``
    like :func:`block_hashes_many`.
    """
    src_count = np.asarray(src_count, dtype=np.int64)
    inp = np.asarray(input_tokens, dtype=np.int64)
    counts = inp // block_size
    total = int(counts.sum())
    if total == 0:
        return np.empty(0, dtype=np.int64), counts
    salt = np.uint64(seed & 0xFFFFFFFFFFFFFFFF)
    src_start = np.zeros(len(src_count), dtype=np.int64)
    np.cumsum(src_count[:-1], out=src_start[1:])
    prefix = source_prefixes(src_ids, src_count, seed)
    req = np.repeat(np.arange(len(counts)), counts)
    first = np.zeros(len(counts), dtype=np.int64)
    np.cumsum(counts[:-1], out=first[1:])
    end = (np.arange(total, dtype=np.int64) - first[req] + 1) * block_size  # tokens up to the block's end
    src_block = (end - 1) // source_block if source_block else np.full(total, -1)
    listed = (src_block >= 0) & (src_block < src_count[req])
    with np.errstate(over="ignore"):
        e = end.astype(np.uint64) * _END_MULT
        base = np.empty(total, dtype=np.uint64)
        base[listed] = prefix[src_start[req[listed]] + src_block[listed]]
        own = ~listed
        base[own] = mix64(np.asarray(row_uid, dtype=np.int64)[req[own]].astype(np.uint64) ^ (salt ^ _SALT_OWN))
        h = mix64(base + e)
    return h.view(np.int64), counts


def source_prefixes(src_ids: np.ndarray, src_count: np.ndarray, seed: int = 0) -> np.ndarray:
    """The chained hash of each request's source ids up to and including each source block (uint64, back to
    back like ``src_ids``): equal values mean equal source prefixes."""
    ids = np.asarray(src_ids).astype(np.uint64, copy=False)
    if not len(ids):
        return np.empty(0, dtype=np.uint64)
    salt = np.uint64(seed & 0xFFFFFFFFFFFFFFFF)
    return _chained(ids ^ (salt ^ _SALT_SOURCE), np.asarray(src_count, dtype=np.int64))


def _chained(values: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """:func:`chain` of many sequences of per-block values stored back to back, as uint64. Chaining is a
    prefix sum; restarted per sequence it is the global one minus its value at the sequence's first block
    (exact mod 2^64)."""
    total = int(counts.sum())
    seq = np.repeat(np.arange(len(counts)), counts)
    first = np.zeros(len(counts), dtype=np.int64)
    np.cumsum(counts[:-1], out=first[1:])
    local = np.arange(total, dtype=np.int64) - first[seq]
    n = int(counts.max())
    with np.errstate(over="ignore"):
        c = mix64(values)
        acc = np.cumsum(c * _pow_table(_P_INV, n)[local], dtype=np.uint64)
        before = np.zeros(len(counts), dtype=np.uint64)
        nz = (first > 0) & (counts > 0)
        before[nz] = acc[first[nz] - 1]
        h = (acc - before[seq]) * _pow_table(_P, n)[local]
    return mix64(h)
