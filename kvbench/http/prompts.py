"""What each replayed request sends: the trace's prompt, or (``--history generated``) the conversation so far.

Traces carry token ids, text, or only hash ids (imported Mooncake / Bailian traces). Hash-only rows get
synthetic token ids derived from each block's hash id, so equal hash ids still mean equal prefixes on the
server. Generated history: prompt_k = prompt sent for turn k-1 + the output generated for it + the last
``user_tokens`` tokens of the trace's prompt_k.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

import numpy as np
import pandas as pd

from kvbench.hashing import block_token_keys, keyed_tokens
from kvbench.http.client import Outcome, Prompt
from kvbench.tokenizer import WORD_COUNT, BuiltinTokenizer
from kvbench.trace import TraceMeta

_PIECE = re.compile(r"\w+|[^\w\s]", re.UNICODE)


_SALT_BLOCK = 0x2545F4914F6CDD1D
_SALT_TAIL = 0x6A09E667F3BCC909


def synthesize_ids(hash_ids: np.ndarray, input_tokens: int, block_size: int, salt: str) -> list[int]:
    """Token ids whose blocks are a pure function of the block's hash id (the tail, of the request's id)."""
    ids = np.asarray(hash_ids, dtype=np.int64)[: max(0, input_tokens) // block_size]
    keys = block_token_keys(ids, block_size, _SALT_BLOCK)
    tail = input_tokens - len(keys)
    if tail > 0:
        uid = int.from_bytes(hashlib.blake2b(salt.encode("utf-8"), digest_size=8).digest(), "little")
        keys = np.concatenate([keys, keyed_tokens(np.full(tail, uid, dtype=np.uint64),
                                                  np.arange(len(keys), input_tokens, dtype=np.uint64), _SALT_TAIL)])
    return (keys % np.uint64(WORD_COUNT)).astype(np.int64).tolist()


class SourcePrompts:
    """A hash-only import's prompts, synthesized when sent: the tokens `kvbench generate trace --token-ids`
    stores for the same source and seed (kvbench.workloads.imports.synthesize_tokens)."""

    def __init__(self, df: pd.DataFrame, meta: TraceMeta):
        from kvbench.workloads.text import TextCodec

        self.codec = TextCodec(BuiltinTokenizer())
        self.block = meta.source_block
        self.seed = meta.seed or 0
        self.ids = df["source_ids"].tolist()
        self.rows = df["source_row"].tolist()
        self.inputs = df["input_tokens"].tolist()

    def token_ids(self, i: int) -> list[int]:
        from kvbench.workloads.imports import synthesize_tokens

        ids = np.asarray(self.ids[i], dtype=np.int64)
        tokens = synthesize_tokens(self.codec, np.array([self.inputs[i]], dtype=np.int64), ids,
                                   np.zeros(1, dtype=np.int64), np.array([len(ids)], dtype=np.int64), self.block,
                                   np.array([self.rows[i]], dtype=np.int64), self.seed)
        return tokens.astype(np.int64).tolist()


def text_suffix(text: str, n_tokens: int) -> str:
    """The last ``n_tokens`` builtin-tokenizer pieces of ``text`` (the new user turn)."""
    if n_tokens <= 0:
        return ""
    spans = [m.start() for m in _PIECE.finditer(text)]
    if n_tokens >= len(spans):
        return text
    return text[spans[len(spans) - n_tokens]:]


@dataclass
class SessionHistory:
    """The last prompt a session sent and what the server generated for it."""

    prompt: Prompt | None = None
    output: Outcome | None = None

    def record(self, prompt: Prompt, out: Outcome) -> None:
        self.prompt, self.output = prompt, out


class PromptSource:
    def __init__(self, df: pd.DataFrame, block_size: int, tokenizer_name: str = "kvbench-builtin-v1",
                 meta: TraceMeta | None = None):
        self.df = df
        self.block_size = block_size
        self.tok = BuiltinTokenizer()
        self.builtin = tokenizer_name == BuiltinTokenizer.name
        self._has_ids = "prompt_token_ids" in df.columns
        self._has_text = "prompt" in df.columns
        # plain lists, read by position: a pandas lookup per field per request was a quarter of the client's
        # CPU at 800 req/s (the rows are positional, 0..n-1, like the recorder's)
        self._ids_col = df["prompt_token_ids"].tolist() if self._has_ids else None
        self._text_col = df["prompt"].tolist() if self._has_text else None
        self._input_tokens = df["input_tokens"].tolist()
        self._user_tokens = df["user_tokens"].tolist() if "user_tokens" in df.columns else None
        self._source = SourcePrompts(df, meta) if meta is not None and meta.hash_only else None
        self._ready: dict[int, list[int] | None] = {}  # token ids built ahead of their send time

    def prepare(self, i: int) -> None:
        """Build row ``i``'s recorded token ids now, while the client waits for its send time: synthesizing a
        hash-only prompt takes 0.5 ms per 12k tokens, which would otherwise add to the send lag."""
        self._ready[i] = self._ids(i)

    def _trace_ids(self, i: int) -> list[int] | None:
        if self._ids_col is not None:
            v = self._ids_col[i]
            if v is not None and not (isinstance(v, float) and np.isnan(v)):
                return np.asarray(v, dtype=np.int64).tolist()
        return None

    def _ids(self, i: int) -> list[int] | None:
        if i in self._ready:
            return self._ready.pop(i)
        ids = self._trace_ids(i)
        if ids is None and self._source is not None:
            return self._source.token_ids(i)
        if ids is None and self._text(i) is None:
            r = self.df.iloc[i]
            return synthesize_ids(r["hash_ids"], int(r["input_tokens"]), self.block_size, str(r["request_id"]))
        return ids

    def _text(self, i: int) -> str | None:
        if self._text_col is not None:
            v = self._text_col[i]
            if isinstance(v, str):
                return v
        return None

    def recorded(self, i: int) -> Prompt:
        """The trace's prompt; text missing from the trace is decoded only if something asks for it."""
        return Prompt(token_ids=self._ids(i), text=self._text(i), recorded=True, decoder=self.tok.decode)

    def prompt(self, i: int, history: SessionHistory | None, chat: bool = False) -> Prompt:
        base = self.recorded(i)
        if history is None or history.prompt is None or history.output is None:
            if chat and history is not None:
                base.messages = [{"role": "user", "content": base.as_text()}]
            return base
        prev, out = history.prompt, history.output
        n_user = int(self._user_tokens[i]) if self._user_tokens is not None else int(base_len(base))
        user_ids = base.token_ids[len(base.token_ids) - n_user:] if base.token_ids is not None and n_user > 0 else []
        if base.token_ids is not None and n_user > 0 and (self._text(i) is None or self.builtin):
            user_text = self.tok.decode(user_ids)
        else:
            user_text = text_suffix(base.as_text(), n_user)
        sep = " " if user_text and not user_text.startswith((" ", "\n")) else ""
        text = prev.as_text() + out.text + sep + user_text
        if chat:
            msgs = list(prev.messages or [{"role": "user", "content": prev.as_text()}])
            msgs += [{"role": "assistant", "content": out.text}, {"role": "user", "content": user_text}]
            return Prompt(token_ids=None, text=text, messages=msgs, recorded=False)
        if prev.token_ids is not None and out.token_ids is not None and base.token_ids is not None:
            return Prompt(token_ids=list(prev.token_ids) + list(out.token_ids) + user_ids, text=text, recorded=False)
        return Prompt(token_ids=None, text=text, recorded=False)

    def route_units(self, i: int, prompt: Prompt) -> tuple[str | None, list[int] | None]:
        """(text, token ids) the router may match for row ``i``: only the kinds the trace row holds.

        The simulator's router sees the trace row, so the HTTP router must too: a hash-only row's synthetic
        ids and a token-id row's text decoded for chat are ways of sending it, not its units (with neither,
        the router matches the hash ids). A generated-history prompt keeps the row's kinds, taken from what
        was actually sent (ids re-encoded from the text when it went as text), so a session stays in one unit.
        """
        text, ids = self._text(i), self._trace_ids(i)
        if prompt.recorded:
            return text, ids
        if ids is not None:
            ids = list(prompt.token_ids) if prompt.token_ids is not None else self.encode(prompt.as_text())
        return (prompt.as_text() if text is not None else None), ids

    def length(self, i: int, prompt: Prompt) -> int:
        if prompt.recorded:
            return int(self._input_tokens[i])
        if prompt.token_ids is not None:
            return len(prompt.token_ids)
        return self.tok.count(prompt.as_text())

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text)


def base_len(p: Prompt) -> int:
    return len(p.token_ids) if p.token_ids is not None else 0
