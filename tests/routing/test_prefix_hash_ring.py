"""``prefix_hash``'s ring and keys against their definition, written out independently here.

The ring: for each worker ``w`` and virtual node ``v < virtual_nodes`` (64 by default) a point at
blake2b-64 (little-endian) of ``worker-{w}-vnode-{v}``; a key belongs to the first point at or after its
own hash, wrapping around. The key: the session id, else the first ``prefix_blocks`` (4 by default) block
ids, else (a prompt shorter than a block) the prompt's token ids, else its text, else the request id.
"""

import hashlib

import numpy as np

from kvbench.routing import RouterConfig, RouteRequest, make_router

NONE = np.empty(0, dtype=np.int64)


def h64(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


def reference_owner(key: bytes, workers: int = 4, vnodes: int = 64) -> int:
    points = sorted((h64(f"worker-{w}-vnode-{v}".encode()), w) for w in range(workers) for v in range(vnodes))
    k = h64(key)
    return next((w for p, w in points if p >= k), points[0][1])


def ph(workers=4, **params):
    return make_router("prefix_hash", RouterConfig(workers=workers, params=params))


def blocks(*ids):
    return np.asarray(ids, dtype=np.int64)


def test_defaults():
    d = ph().describe()
    assert (d["key"], d["prefix_blocks"], d["virtual_nodes"]) == ("auto", 4, 64)


def test_block_keys_follow_the_ring_definition():
    r = ph()
    for i in range(300):
        hs = blocks(i, i + 1, i + 2, i + 3, i + 4, i + 5)
        want = reference_owner(b"p:" + hs[:4].tobytes())
        assert r.choose(RouteRequest(f"q{i}", 96, 4, hs), 0.0) == want, i
    # every worker owns some of these 300 keys: the ring spreads them
    assert {r.choose(RouteRequest("q", 96, 4, blocks(i, i + 1, i + 2, i + 3)), 0.0) for i in range(300)} == {0, 1, 2, 3}


def test_only_the_first_prefix_blocks_count():
    r = ph()
    spread_4 = set()
    for i in range(40):
        head = [10 * i, 10 * i + 1, 10 * i + 2]
        # the same first 4 blocks, a different 5th: always the same worker
        a = r.choose(RouteRequest("a", 80, 4, blocks(*head, 7, 100)), 0.0)
        b = r.choose(RouteRequest("b", 80, 4, blocks(*head, 7, 200)), 0.0)
        assert a == b
        # a different 4th block: a different key, hence (over 40 prompts) sometimes a different worker
        c = r.choose(RouteRequest("c", 64, 4, blocks(*head, 8)), 0.0)
        spread_4.add(a != c)
    assert spread_4 == {True, False}
    assert ph(prefix_blocks=3).choose(RouteRequest("c", 64, 4, blocks(0, 1, 2, 8)), 0.0) == reference_owner(
        b"p:" + blocks(0, 1, 2).tobytes())


def test_a_prompt_shorter_than_a_block_keys_on_its_tokens():
    r = ph()
    toks = [5, 6, 7]
    want = reference_owner(b"t:" + np.asarray(toks, dtype=np.int64).tobytes())
    # the same 3-token prompt under 12 request ids: always the same worker, the owner of its tokens
    assert {r.choose(RouteRequest(f"q{i}", 3, 4, NONE, prompt_token_ids=toks), 0.0) for i in range(12)} == {want}
    # the token ids win over the text
    assert r.choose(RouteRequest("q", 3, 4, NONE, prompt_token_ids=toks, prompt="other"), 0.0) == want


def test_then_on_its_text_then_on_its_id():
    r = ph()
    text = "Grüße, Welt"  # keyed on its UTF-8 bytes
    want = reference_owner(b"x:" + text.encode())
    assert {r.choose(RouteRequest(f"q{i}", 2, 4, NONE, prompt=text), 0.0) for i in range(12)} == {want}
    # an empty token list is no key: the text decides
    assert r.choose(RouteRequest("q", 2, 4, NONE, prompt_token_ids=[], prompt=text), 0.0) == want
    # nothing to share: each request id is its own key, so 12 ids spread over the workers
    by_id = [r.choose(RouteRequest(f"q{i}", 2, 4, NONE), 0.0) for i in range(12)]
    assert by_id == [reference_owner(f"r:q{i}".encode()) for i in range(12)]
    assert len(set(by_id)) > 1
