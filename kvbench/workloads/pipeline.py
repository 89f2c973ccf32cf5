"""Write a trace from a validated config: the one path behind `kvbench generate` and `kvbench run`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from kvbench.errors import fail
from kvbench.tokenizer import load_tokenizer
from kvbench.trace import TraceMeta
from kvbench.workloads import build
from kvbench.workloads.configs import (
    CONFIGS,
    ConversationConfig,
    DocqaConfig,
    GenerateConfig,
    GspConfig,
    StandInChoice,
    TraceConfig,
    plain,
    trace_params,
)
from kvbench.workloads.options import input_file, total_tokens_fit
from kvbench.workloads.text import TextCodec


def generate(kind: str, config: GenerateConfig, output: Path) -> Path:
    """Write the trace `kvbench generate KIND` would write for these options to ``output``; returns it.

    The same config and output name give a byte-identical file; the output path is not recorded in it."""
    model = CONFIGS.get(kind)
    if model is None:
        raise fail(f"{kind!r}: unknown source; choose one of {', '.join(CONFIGS)}")
    if not isinstance(config, model):
        raise TypeError(f"generate({kind!r}) needs a {model.__name__}, not a {type(config).__name__}")
    output = Path(output)
    if output.exists() and output.is_dir():
        raise fail(f"--output {output}: is a directory; give a file name such as trace.parquet")
    codec = TextCodec(load_tokenizer(config.tokenizer))
    rows, meta = _WRITERS[kind](config, codec)
    build.write(output, rows, meta, config.stores_token_ids)
    return output


def _meta(config: GenerateConfig, codec: TextCodec, generator: str, params: dict[str, Any], synthetic: bool,
          source: str) -> TraceMeta:
    return TraceMeta(generator=generator, block_size=config.block_size, seed=config.seed, tokenizer=codec.name,
                     params=params, synthetic=synthetic, source=source)


def _gsp(config: Any, codec: TextCodec) -> tuple[build.Rows, TraceMeta]:
    from kvbench.workloads.gsp import generate_gsp

    assert isinstance(config, GspConfig)
    cfg = config.settings()
    params = trace_params(config)
    params["resolved"] = plain(asdict(cfg))
    rows = generate_gsp(cfg, codec, config.seed, config.prompt_text)
    shape = (
        f"{cfg.system_tokens}-token system prompt + {cfg.question_tokens}-token question"
        if cfg.system_tokens is not None
        else f"lengths {cfg.lengths}, shared fraction {cfg.shared_fraction}"
    )
    source = (f"generated shared prefix, random tokens: {cfg.groups} groups x {cfg.prompts_per_group} "
              f"prompts, {shape}, order {cfg.order}")
    return rows, _meta(config, codec, "gsp", params, True, source)


def _docqa(config: Any, codec: TextCodec) -> tuple[build.Rows, TraceMeta]:
    from kvbench.workloads import docqa as dq

    assert isinstance(config, DocqaConfig)
    cfg = config.settings()
    ds = cfg.dataset
    rng = np.random.default_rng(config.seed)
    if config.synthetic:
        docs = dq.synthetic_documents(ds, codec, rng, config.documents or dq.SYNTHETIC[ds].documents)
        source = dq.SYNTHETIC[ds].description
    else:
        raw, source = dq.load_raw(ds, _input(config.input))
        docs = dq.encode_documents(raw, codec)
    params = trace_params(config)
    params["resolved"] = plain(asdict(cfg))
    with_text = not config.synthetic if config.prompt_text is None else config.prompt_text
    rows = dq.generate_docqa(cfg, docs, codec, rng, with_text)
    return rows, _meta(config, codec, f"docqa:{ds}", params, config.synthetic, f"{source}; sampling {cfg.sampling}")


def _conversation(config: Any, codec: TextCodec) -> tuple[build.Rows, TraceMeta]:
    from kvbench.workloads import conversation as cv

    assert isinstance(config, ConversationConfig)
    cfg = config.settings()
    ds = cfg.dataset
    params = trace_params(config)
    params["preset"] = config.chosen_preset()  # the construction actually used, also when it was a default
    params["resolved"] = plain(asdict(cfg))
    rng = np.random.default_rng(config.seed)
    if config.synthetic:
        convs = None
        source = (
            f"synthetic {ds} stand-in: user turns of {cfg.user_turn_tokens or 'lognormal'} tokens, "
            f"lognormal answers (median {cv.SYNTHETIC_ANSWER_MEDIAN[ds]} tokens)"
        )
    else:
        convs, source = cv.load_conversations(ds, _input(config.input))
        source += f"; {_conversation_shape(cfg)}"
    with_text = not config.synthetic if config.prompt_text is None else config.prompt_text
    rows, padded = cv.generate_conversations(cfg, convs, codec, rng, with_text, config.token_ids,
                                             config.block_size)
    if padded:
        build.warn(f"{padded} turn(s) synthesized because source conversations were shorter than --turns")
        source += f"; {padded} turns synthesized for short conversations"
    return rows, _meta(config, codec, f"conversation:{ds}", params, config.synthetic, source)


def _conversation_shape(cfg: Any) -> str:
    """How the real conversations were shaped, for the trace's `source` line."""
    if cfg.turns is None and not cfg.user_turn_tokens:
        return "turns and message lengths as recorded"
    turns = "recorded turns" if cfg.turns is None else f"turns {','.join(map(str, cfg.turns))} in rotation"
    users = f"user turns of {cfg.user_turn_tokens} tokens" if cfg.user_turn_tokens else "recorded user turns"
    return f"{turns}, {users}"


def _trace(config: Any, codec: TextCodec) -> tuple[build.Rows, TraceMeta]:
    from kvbench.workloads import imports as im

    assert isinstance(config, TraceConfig)
    fmt = config.format
    params = trace_params(config)
    stand_in = config.stand_in()
    if stand_in is not None:
        if config.write_source is not None and config.write_source.is_dir():
            raise fail(f"--write-source {config.write_source}: is a directory; give a file name such as "
                       f"source.jsonl")
        src, described = _synthetic_source(fmt, stand_in, config.seed, config.write_source, config.max_requests)
        params["stand_in"] = plain(asdict(stand_in))
    else:
        assert config.input is not None
        src = im.read_source(fmt, _input(config.input), config.max_requests)
        described = f"{fmt} trace file {config.input.name} ({len(src.input_len)} requests)"
    total_tokens_fit(f"--input {config.input}" if config.input is not None else "--synthetic",
                     int(src.input_len.sum()), "import fewer requests with --max-requests")
    src, moved = src.sorted_by_time()
    params["rows_reordered_by_timestamp"] = moved  # rows out of time order in the source, sorted stably
    if moved:
        described += f", {moved} rows sorted into time order"
    cfg = config.settings()
    params["resolved"] = plain(asdict(cfg))
    rows = im.generate_import(cfg, src, codec, config.seed, config.block_size, config.stores_token_ids, config.prompt_text,
                              config.hash_only)
    block = im.SOURCE_BLOCK[fmt]
    how = (
        f"prompt tokens synthesized from its {block}-token hash_ids"
        if block
        else "no prefix information: every prompt has unique tokens"
    )
    meta = _meta(config, codec, f"trace:{fmt}", params, stand_in is not None, f"{described}; {how}")
    if config.hash_only:
        # Azure lists no ids: its blocks are each request's own, derived from the row alone
        meta.source_block = block or im.NO_SOURCE_BLOCK
    return rows, meta


def _synthetic_source(
    fmt: str, stand_in: StandInChoice, seed: int, write_source: Path | None, max_requests: int | None
) -> tuple[Any, str]:
    """Synthesize the stand-in's records, optionally write them, and parse them like a file."""
    from kvbench.workloads import imports as im
    from kvbench.workloads import synthetic_traces as syn

    records = syn.synthesize_records(fmt, stand_in.flavour, stand_in.requests, stand_in.duration_s, seed)
    if write_source is not None:
        syn.write_source(fmt, records, write_source)
        build.warn(f"wrote the {fmt} stand-in ({len(records)} records) to {write_source}")
    where = f"synthetic {fmt} stand-in"
    src = im.parse_source(fmt, where, enumerate(records, start=1), max_requests, "parsing the stand-in")
    described = syn.describe(fmt, stand_in.flavour, stand_in.requests, stand_in.duration_s)
    if len(src.input_len) < len(records):
        described += f" (first {len(src.input_len)} imported)"
    return src, described


def _input(path: Path | None) -> Path | None:
    """A given --input must be a readable file; None loads the dataset from the hub."""
    return input_file("--input", path) if path is not None else None


_WRITERS: dict[str, Callable[[Any, TextCodec], tuple[build.Rows, TraceMeta]]] = {
    "gsp": _gsp,
    "docqa": _docqa,
    "conversation": _conversation,
    "trace": _trace,
}
