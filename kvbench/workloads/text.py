"""Token sequences with optional text, built so token counts are exact.

Prompts are assembled from segments (document, question, user turn, answer), each tokenised on its
own and concatenated. Under the built-in tokenizer the joined text re-encodes to exactly the joined ids;
under a Hugging Face tokenizer the ids are authoritative (BPE merges across a segment boundary could
differ), which is why servers should be sent ``prompt_token_ids``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from kvbench.tokenizer import BuiltinTokenizer, HFTokenizer

SEPARATOR = "\n\n"


@dataclass
class Segment:
    ids: np.ndarray  # int32
    text: str | None = None  # None: synthetic ids, decoded lazily only when text is wanted

    def __len__(self) -> int:
        return len(self.ids)


class TextCodec:
    """The tokenizer plus what generators need from it: random ids that decode to stable text."""

    def __init__(self, tokenizer: BuiltinTokenizer | HFTokenizer):
        self.tokenizer = tokenizer
        self.space = tokenizer.token_space()
        self._identity_space = bool(len(self.space) and self.space[-1] == len(self.space) - 1)

    @property
    def name(self) -> str:
        return self.tokenizer.name

    def random_ids(self, rng: np.random.Generator, n: int) -> np.ndarray:
        idx = rng.integers(0, len(self.space), size=n, dtype=np.int32)
        return idx if self._identity_space else self.space[idx]

    def ids_from_keys(self, keys: np.ndarray) -> np.ndarray:
        """Map uint64 pseudo-random keys to token ids of the space (deterministic, no RNG state)."""
        idx = (np.asarray(keys, dtype=np.uint64) % np.uint64(len(self.space))).astype(np.int64)
        return idx.astype(np.int32) if self._identity_space else self.space[idx]

    def random(self, rng: np.random.Generator, n: int) -> Segment:
        return Segment(self.random_ids(rng, n))

    def encode(self, text: str) -> Segment:
        return Segment(np.asarray(self.tokenizer.encode(text), dtype=np.int32), text)

    def encode_at_most(self, text: str, n: int) -> Segment:
        cut, ids = self.tokenizer.truncate(text, n)
        return Segment(np.asarray(ids, dtype=np.int32), cut)

    def exactly(self, seg: Segment, n: int, rng: np.random.Generator) -> Segment:
        """``seg`` cut or padded with random filler words to exactly ``n`` tokens."""
        if len(seg) >= n:
            if len(seg) == n:
                return seg
            if seg.text is None:
                return Segment(seg.ids[:n])
            return (
                self.encode_at_most(seg.text, n)
                if isinstance(self.tokenizer, BuiltinTokenizer)
                else Segment(seg.ids[:n], self.tokenizer.decode(seg.ids[:n]))
            )
        filler = self.random(rng, n - len(seg))
        return join([seg, filler], self)

    def text_of(self, seg: Segment) -> str:
        if seg.text is None:
            seg.text = self.tokenizer.decode(seg.ids)
        return seg.text


def join(segments: Sequence[Segment], codec: TextCodec | None = None) -> Segment:
    """Concatenate ids; text only if every part has text (or a codec can decode the synthetic ones)."""
    ids = np.concatenate([s.ids for s in segments]) if segments else np.zeros(0, dtype=np.int32)
    if codec is None and any(s.text is None for s in segments):
        return Segment(ids)
    texts = [s.text if s.text is not None else codec.text_of(s) for s in segments]  # type: ignore[union-attr]
    return Segment(ids, SEPARATOR.join(t for t in texts if t))
