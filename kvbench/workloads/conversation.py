"""Multi-turn conversations (ShareGPT, UltraChat) as closed-loop sessions.

Turn ``k``'s prompt is the whole history (earlier user turns and the recorded assistant answers) plus the
new user message, so ``input_tokens[k] = input_tokens[k-1] + output_tokens[k-1] + user_tokens[k]``: the
recorded answer is cut to the turn's ``output_tokens``, which lets a replay client rebuild the history
with the answers the server actually generated. Later turns' ``arrival_s`` is nominal (previous turn's
arrival + ``think_s``); replay releases them after the previous turn finishes plus ``think_s``.

Real data keeps each conversation as recorded (preset ``recorded``) unless asked otherwise, because a
benchmark of someone's own traffic must not silently become the RLT paper's construction; that
construction (2/4/6/8 turns in rotation, user turns of exactly 1,024 tokens) is preset ``rlt``, and the
synthetic stand-ins, which have nothing recorded to keep, default to it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Literal, get_args

import numpy as np

from kvbench.errors import fail
from kvbench.hashing import GrowingSequence
from kvbench.workloads.arrivals import ArrivalSpec, arrival_times
from kvbench.workloads.build import Rows, tracked, warn
from kvbench.workloads.readers import Row, as_text, hub_rows, records
from kvbench.workloads.text import Segment, TextCodec, join

Dataset = Literal["sharegpt", "ultrachat"]
DATASETS: tuple[str, ...] = get_args(Dataset)
EXPECTED = {
    "sharegpt": "ShareGPT JSON (a list of {'id', 'conversations': [{'from', 'value'}]})",
    "ultrachat": "UltraChat JSONL (one object per line with 'messages': [{'role', 'content'}] "
    "or 'data': [str, ...])",
}
HUB = {
    "sharegpt": (
        "anon8231489123/ShareGPT_Vicuna_unfiltered",
        "train",
        "ShareGPT_V3_unfiltered_cleaned_split.json",
    ),
    "ultrachat": ("HuggingFaceH4/ultrachat_200k", "train_sft", None),
}
USER_ROLES = {"human", "user", "prompter"}
ASSISTANT_ROLES = {"gpt", "assistant", "chatgpt", "bard", "bing", "model", "bot"}
SYSTEM_ROLES = {"system"}
# Answer lengths of the synthetic stand-ins: lognormal, median tokens (ShareGPT answers are shorter).
SYNTHETIC_ANSWER_MEDIAN = {"sharegpt": 220, "ultrachat": 300}
MISSING_ANSWER_TOKENS = 256


@dataclass(frozen=True)
class Preset:
    """Defaults a --preset gives the shaping options; an explicit option overrides its value."""

    turns: tuple[int, ...] | None  # None: each conversation's own recorded turns
    user_turn_tokens: int  # 0: each user message's own length
    max_output_tokens: int | None  # None: recorded answers uncapped


PRESETS = {"recorded": Preset(None, 0, None), "rlt": Preset((2, 4, 6, 8), 1024, 1024)}


@dataclass
class Conversation:
    conv_id: str
    pairs: list[tuple[str, str]]  # (user message, assistant answer; "" when the source has none)


def normalize(conv_id: str, messages: list[tuple[str, str]]) -> Conversation:
    """Roles folded to user/assistant, empty turns dropped, same-role runs merged, system text put
    before the first user message, answers without a question skipped."""
    merged: list[list[str]] = []
    system: list[str] = []
    for role, text in messages:
        text = text.strip()
        if not text:
            continue
        if role in SYSTEM_ROLES:
            system.append(text)
            continue
        kind = "user" if role in USER_ROLES else "assistant" if role in ASSISTANT_ROLES else None
        if kind is None:
            continue
        if merged and merged[-1][0] == kind:
            merged[-1][1] += "\n\n" + text
        else:
            merged.append([kind, text])
    while merged and merged[0][0] != "user":
        merged.pop(0)
    if merged and system:
        merged[0][1] = "\n\n".join(system) + "\n\n" + merged[0][1]
    pairs = []
    for i in range(0, len(merged), 2):
        answer = merged[i + 1][1] if i + 1 < len(merged) else ""
        pairs.append((merged[i][1], answer))
    return Conversation(conv_id, pairs)


def parse_sharegpt(rows: Iterable[Row], where: str) -> list[Conversation]:
    out = []
    for line, rec in rows:
        turns = rec.get("conversations", rec.get("conversation"))
        if turns is None:
            raise fail(f"{where}:{line}: missing field 'conversations'; expected {EXPECTED['sharegpt']}")
        if not isinstance(turns, list):
            raise fail(
                f"{where}:{line}: field 'conversations' must be a list; expected {EXPECTED['sharegpt']}"
            )
        msgs = []
        for t in turns:
            if isinstance(t, dict):
                role = as_text(t.get("from", t.get("role"))).strip().lower()
                msgs.append((role, as_text(t.get("value", t.get("content")))))
        conv = normalize(as_text(rec.get("id")) or f"row{line}", msgs)
        if conv.pairs:
            out.append(conv)
    return out


def parse_ultrachat(rows: Iterable[Row], where: str) -> list[Conversation]:
    out = []
    for line, rec in rows:
        msgs: list[tuple[str, str]] = []
        if "messages" in rec and isinstance(rec["messages"], list):
            for m in rec["messages"]:
                if isinstance(m, dict):
                    msgs.append((as_text(m.get("role")).strip().lower(), as_text(m.get("content"))))
        elif "data" in rec and isinstance(rec["data"], list):
            msgs = [("user" if i % 2 == 0 else "assistant", as_text(v)) for i, v in enumerate(rec["data"])]
        else:
            raise fail(
                f"{where}:{line}: missing list field 'messages' or 'data'; expected {EXPECTED['ultrachat']}"
            )
        conv = normalize(as_text(rec.get("prompt_id", rec.get("id"))) or f"row{line}", msgs)
        if conv.pairs:
            out.append(conv)
    return out


def load_conversations(dataset: str, input_path: Path | None) -> tuple[list[Conversation], str]:
    expected = EXPECTED[dataset]
    if input_path is not None:
        where = str(input_path)
        rows: Iterable[Row] = records(input_path, expected)
        source = f"{dataset} from local file {input_path.name}"
    else:
        repo, split, data_files = HUB[dataset]
        where = f"hub:{repo}"
        rows = hub_rows("--dataset " + dataset, repo, split, expected, data_files=data_files)
        source = f"{dataset} from the Hugging Face hub ({repo})"
    parse = parse_sharegpt if dataset == "sharegpt" else parse_ultrachat
    convs = parse(tracked(rows, f"reading {dataset}"), where)
    if not convs:
        raise fail(f"{where}: no conversations with a non-empty user message; expected {expected}")
    return convs, source


@dataclass
class ConversationSettings:
    dataset: str
    conversations: int
    turns: list[int] | None  # None: each conversation's own recorded turns
    user_turn_tokens: int  # 0: keep each user message's own length
    output_tokens: int | None  # None: the recorded answer length (capped)
    max_output_tokens: int | None  # None: recorded answer lengths uncapped
    think_s: float
    arrival: ArrivalSpec


@dataclass
class Turn:
    user: Segment
    answer: Segment


class TurnSource:
    """Encodes recorded turns to their exact token budgets, or invents them for --synthetic."""

    def __init__(self, cfg: ConversationSettings, codec: TextCodec, rng: np.random.Generator):
        self.cfg, self.codec, self.rng = cfg, codec, rng

    def _answer_length(self, recorded: int | None) -> int:
        if self.cfg.output_tokens is not None:
            return self.cfg.output_tokens
        cap = self.cfg.max_output_tokens
        if recorded is None:  # a last question without an answer still needs an output length
            return MISSING_ANSWER_TOKENS if cap is None else min(MISSING_ANSWER_TOKENS, cap)
        return max(1, recorded if cap is None else min(recorded, cap))

    def real(self, user: str, answer: str) -> Turn:
        u = self.codec.encode(user)
        if self.cfg.user_turn_tokens:
            u = self.codec.exactly(u, self.cfg.user_turn_tokens, self.rng)
        a = self.codec.encode(answer) if answer.strip() else None
        n = self._answer_length(len(a) if a is not None and len(a) else None)
        a = self.codec.exactly(a if a is not None else Segment(np.zeros(0, np.int32), ""), n, self.rng)
        return Turn(u, a)

    def synthetic(self) -> Turn:
        n_user = self.cfg.user_turn_tokens or int(np.clip(self.rng.lognormal(np.log(120), 1.0), 4, 4096))
        median = SYNTHETIC_ANSWER_MEDIAN[self.cfg.dataset]
        recorded = int(np.clip(self.rng.lognormal(np.log(median), 0.8), 1, 8192))
        return Turn(
            self.codec.random(self.rng, n_user), self.codec.random(self.rng, self._answer_length(recorded))
        )


def pick_conversations(
    convs: list[Conversation], cfg: ConversationSettings, rng: np.random.Generator
) -> list[tuple[Conversation, int]]:
    """The first ``conversations`` of a seeded shuffle, each with all its recorded turns; with ``turns``,
    session ``i`` (``turns[i % len(turns)]`` turns) takes the next shuffled conversation with enough
    turns, or if none is left the longest remaining one, later padded with synthetic turns."""
    pool = [convs[i] for i in rng.permutation(len(convs))]
    if cfg.turns is None:
        out = [(c, len(c.pairs)) for c in pool[: cfg.conversations]]
    else:
        out = _fill_turn_slots(pool, cfg.turns, cfg.conversations)
    if len(out) < cfg.conversations:
        warn(
            f"only {len(out)} conversations available; "
            f"generating {len(out)} of --conversations {cfg.conversations}"
        )
    return out


def _fill_turn_slots(pool: list[Conversation], turns: list[int], n: int) -> list[tuple[Conversation, int]]:
    used = [False] * len(pool)
    out = []
    for i in range(n):
        want = turns[i % len(turns)]
        pick = next((j for j, c in enumerate(pool) if not used[j] and len(c.pairs) >= want), None)
        if pick is None:
            free = [j for j in range(len(pool)) if not used[j]]
            if not free:
                break
            pick = max(free, key=lambda j: (len(pool[j].pairs), -j))
        used[pick] = True
        out.append((pool[pick], want))
    return out


def generate_conversations(
    cfg: ConversationSettings,
    convs: list[Conversation] | None,
    codec: TextCodec,
    rng: np.random.Generator,
    with_text: bool,
    keep_token_ids: bool = True,
    block_size: int = 16,
) -> tuple[Rows, int]:
    """Rows plus the number of turns that had to be synthesized because a source was too short.

    Each turn's hash ids extend the session's (every history token is hashed once), and without token ids
    or text no prompt is ever materialized, so a long conversation costs time in proportion to what it
    writes, not to the square of its turns.
    """
    source = TurnSource(cfg, codec, rng)
    if convs is None:
        assert cfg.turns is not None, "a synthetic stand-in has no recorded turns to keep"
        plan: list[tuple[Conversation | None, int]] = [
            (None, cfg.turns[i % len(cfg.turns)]) for i in range(cfg.conversations)
        ]
    else:
        plan = list(pick_conversations(convs, cfg, rng))
    starts = arrival_times(len(plan), cfg.arrival, rng)
    rows = Rows()
    padded = 0
    text_codec = codec if with_text else None
    for s, (conv, n_turns) in enumerate(tracked(plan, "building sessions", total=len(plan))):
        session = f"conv-{s:05d}"
        history: list[Segment] = []
        hashed = GrowingSequence(block_size)
        t = starts[s]
        for k in range(n_turns):
            if conv is not None and k < len(conv.pairs):
                turn = source.real(*conv.pairs[k])
            else:
                turn = source.synthetic()
                padded += conv is not None
            materialize = keep_token_ids or with_text
            prompt = join(history + [turn.user], text_codec) if materialize else None
            if k > 0:
                t += cfg.think_s
            rows.add(
                request_id=f"{session}-t{k:02d}",
                arrival_s=t,
                tokens=prompt.ids if prompt is not None else None,
                hash_ids=hashed.ids_with(turn.user.ids),
                input_tokens=hashed.length + len(turn.user),
                output_tokens=len(turn.answer),
                session_id=session,
                turn=k,
                think_s=cfg.think_s if k > 0 else 0.0,
                group_id=session,
                user_tokens=len(turn.user),
                prompt=prompt.text if with_text and prompt is not None else None,
            )
            history += [turn.user, turn.answer]
            hashed.extend(turn.user.ids)
            hashed.extend(turn.answer.ids)
    return rows, padded
