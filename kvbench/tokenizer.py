"""Tokenizers that give exact, stable token counts.

The built-in tokenizer needs no files: a piece is a run of word characters or one punctuation mark.
Its first ``WORD_COUNT`` ids are synthetic syllable words, so random token ids decode to text that
re-encodes to the *same* ids (decoding arbitrary ids of a BPE vocabulary and re-encoding them changes
lengths, a known pitfall). Every other piece hashes (crc32, stable across runs and machines) into the
remaining ids. ``--tokenizer DIR`` swaps in a local Hugging Face tokenizer instead.
"""

from __future__ import annotations

import itertools
import re
import zlib
from functools import lru_cache
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np

from kvbench.errors import fail

VOCAB_SIZE = 32000
WORD_COUNT = 16384
_CONSONANTS = "bdfghjklmnprstvz"
_VOWELS = "aeiou"
_PIECE = re.compile(r"\w+|[^\w\s]", re.UNICODE)


@lru_cache(maxsize=1)
def builtin_words() -> np.ndarray:
    """The synthetic words of ids 0..WORD_COUNT-1 (two then three syllables, lexicographic)."""
    syllables = [c + v for c in _CONSONANTS for v in _VOWELS]
    words: list[str] = []
    for n in (2, 3):
        for combo in itertools.product(syllables, repeat=n):
            words.append("".join(combo))
            if len(words) == WORD_COUNT:
                return np.array(words, dtype=object)
    raise AssertionError("not enough syllable words")


@lru_cache(maxsize=1)
def _word_index() -> dict[str, int]:
    return {w: i for i, w in enumerate(builtin_words())}


class Tokenizer(Protocol):
    name: str
    vocab_size: int

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...

    def token_space(self) -> np.ndarray: ...

    def truncate(self, text: str, n: int) -> tuple[str, list[int]]: ...


class BuiltinTokenizer:
    """Whitespace/punctuation pieces; exact counts without any model files."""

    name = "kvbench-builtin-v1"
    vocab_size = VOCAB_SIZE

    def encode(self, text: str) -> list[int]:
        index = _word_index()
        out = []
        for piece in _PIECE.findall(text):
            i = index.get(piece)
            if i is None:
                i = WORD_COUNT + zlib.crc32(piece.encode("utf-8")) % (VOCAB_SIZE - WORD_COUNT)
            out.append(i)
        return out

    def count(self, text: str) -> int:
        return len(_PIECE.findall(text))

    def decode(self, ids: Sequence[int]) -> str:
        """Exact inverse for word ids; hashed ids (>= WORD_COUNT) decode to a stand-in word."""
        words = builtin_words()
        arr = np.asarray(ids, dtype=np.int64) % WORD_COUNT
        return " ".join(words[arr].tolist())

    def token_space(self) -> np.ndarray:
        """Ids that synthetic prompts may use: exactly the words that round-trip through decode/encode."""
        return np.arange(WORD_COUNT, dtype=np.int32)

    def truncate(self, text: str, n: int) -> tuple[str, list[int]]:
        """The longest prefix of ``text`` with at most ``n`` tokens, and its ids."""
        ids = self.encode(text)
        if len(ids) <= n:
            return text, ids
        if n <= 0:
            return "", []
        end = 0
        for k, m in enumerate(_PIECE.finditer(text)):
            if k == n - 1:
                end = m.end()
                break
        return text[:end], ids[:n]


class HFTokenizer:
    """A local Hugging Face tokenizer directory (tokenizer.json), loaded without network access."""

    def __init__(self, path: str | Path):
        from tokenizers import Tokenizer as _Tok

        self.path = Path(path)
        file = self.path / "tokenizer.json" if self.path.is_dir() else self.path
        if not file.exists():
            raise fail(f"{self.path}: no tokenizer.json found; pass a local Hugging Face tokenizer directory")
        try:
            self._tok = _Tok.from_file(str(file))
        except Exception as exc:  # tokenizers raises plain Exception subclasses
            raise fail(f"{file}: cannot load tokenizer ({exc}); is it a Hugging Face tokenizer.json?") \
                from None
        self.name = f"hf:{self.path.name}"
        self.vocab_size = self._tok.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def count(self, text: str) -> int:
        return len(self.encode(text))

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode([int(i) for i in ids])

    def token_space(self) -> np.ndarray:
        """Every id except added/special tokens, so synthetic prompts never contain control tokens."""
        special: set[int] = set()
        getter = getattr(self._tok, "get_added_tokens_decoder", None)
        if getter is not None:
            special = set(getter().keys())
        ids = np.array([i for i in range(self.vocab_size) if i not in special], dtype=np.int32)
        if len(ids) == 0:
            raise fail(f"{self.path}: the tokenizer has no ordinary tokens to build synthetic prompts from")
        return ids

    def truncate(self, text: str, n: int) -> tuple[str, list[int]]:
        """The prefix of ``text`` covered by its first ``n`` tokens (by offsets), and those ids."""
        enc = self._tok.encode(text, add_special_tokens=False)
        if len(enc.ids) <= n:
            return text, list(enc.ids)
        if n <= 0:
            return "", []
        return text[: enc.offsets[n - 1][1]], list(enc.ids[:n])


def load_tokenizer(path: str | Path | None) -> BuiltinTokenizer | HFTokenizer:
    if path is None or str(path) in ("", "builtin"):
        return BuiltinTokenizer()
    p = Path(path)
    if not p.exists():
        raise fail(f"--tokenizer {p}: no such file or directory; give a local tokenizer directory or omit it")
    return HFTokenizer(p)
