"""Generated shared prefix (GSP): groups of prompts of random tokens sharing a prefix per group.

Two published set-ups: the RLT paper (128 groups x 32 prompts, group lengths cycling 512..8192, half of
each prompt shared; orders random / grouped ("best" for LRU) / interleaved round-robin ("worst")) and
SGLang bench_serving's defaults (64 groups x 16, a 2,048-token system prompt plus a 128-token question,
256 output tokens).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np

from kvbench.workloads.arrivals import ArrivalSpec, arrival_times
from kvbench.workloads.build import Rows
from kvbench.workloads.text import TextCodec

Order = Literal["random", "grouped", "interleaved"]
ORDERS: tuple[str, ...] = get_args(Order)


@dataclass(frozen=True)
class GspPreset:
    """Defaults a --preset gives; an explicit option overrides its value."""

    groups: int
    prompts_per_group: int
    output_tokens: int
    rate: float
    # The prompt shape when --lengths or --shared-fraction is given, or the preset has no system prompt.
    lengths: tuple[int, ...] = (512, 1024, 2048, 4096, 8192)
    shared_fraction: float = 0.5
    system_tokens: int | None = None  # set: a system prompt plus a question by default
    question_tokens: int = 0


PRESETS = {
    "rlt": GspPreset(groups=128, prompts_per_group=32, output_tokens=4, rate=12.0),
    "sglang": GspPreset(groups=64, prompts_per_group=16, output_tokens=256, rate=float("inf"),
                        system_tokens=2048, question_tokens=128),
}


@dataclass
class GspSettings:
    """The resolved shape the generator runs on (recorded in the trace as params['resolved'])."""

    groups: int
    prompts_per_group: int
    lengths: list[int] | None  # prompt length per group, cycling; or system + question tokens
    shared_fraction: float | None
    system_tokens: int | None
    question_tokens: int | None
    order: str
    output_tokens: int
    arrival: ArrivalSpec

    def group_shape(self, g: int) -> tuple[int, int]:
        """(shared prefix tokens, unique suffix tokens) of group ``g``."""
        if self.system_tokens is not None:
            return self.system_tokens, int(self.question_tokens or 0)
        assert self.lengths is not None and self.shared_fraction is not None
        length = self.lengths[g % len(self.lengths)]
        shared = int(round(length * self.shared_fraction))
        return shared, length - shared


def request_order(groups: int, per_group: int, order: str, rng: np.random.Generator) -> np.ndarray:
    """Flat indices ``g * per_group + p`` in the order they arrive."""
    grid = np.arange(groups * per_group).reshape(groups, per_group)
    if order == "grouped":
        return grid.reshape(-1)
    if order == "interleaved":
        return grid.T.reshape(-1)
    return rng.permutation(groups * per_group)


def generate_gsp(cfg: GspSettings, codec: TextCodec, seed: int, with_text: bool) -> Rows:
    rng = np.random.default_rng(seed)
    shapes = [cfg.group_shape(g) for g in range(cfg.groups)]
    prefixes = [codec.random_ids(rng, shared) for shared, _ in shapes]
    suffix_len = np.repeat([u for _, u in shapes], cfg.prompts_per_group)
    suffix_pool = codec.random_ids(rng, int(suffix_len.sum()))
    suffix_start = np.concatenate([[0], np.cumsum(suffix_len)[:-1]])
    order = request_order(cfg.groups, cfg.prompts_per_group, cfg.order, rng)
    arrivals = arrival_times(len(order), cfg.arrival, rng)
    prefix_text: dict[int, str] = {}
    rows = Rows()
    for k, flat_idx in enumerate(order.tolist()):
        g = flat_idx // cfg.prompts_per_group
        s0 = suffix_start[flat_idx]
        suffix = suffix_pool[s0 : s0 + suffix_len[flat_idx]]
        text = None
        if with_text:
            if g not in prefix_text:
                prefix_text[g] = codec.tokenizer.decode(prefixes[g])
            text = " ".join(t for t in (prefix_text[g], codec.tokenizer.decode(suffix)) if t)
        rows.add(
            request_id=f"gsp-{k:06d}",
            arrival_s=arrivals[k],
            tokens=np.concatenate((prefixes[g], suffix)),
            output_tokens=cfg.output_tokens,
            group_id=f"g{g:04d}",
            prompt=text,
        )
    return rows
