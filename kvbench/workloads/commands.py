"""`kvbench generate {gsp,docqa,conversation,trace}` and `kvbench inspect`."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any, Optional

import numpy as np
import typer

from kvbench.errors import fail
from kvbench.tokenizer import load_tokenizer
from kvbench.trace import TraceMeta, read_trace
from kvbench.workloads import build
from kvbench.workloads.arrivals import ARRIVAL_KINDS, ArrivalSpec
from kvbench.workloads.options import (
    MAX_REQUEST_TOKENS,
    at_least,
    choice,
    input_file,
    int_list,
    int_range,
    total_tokens_fit,
)
from kvbench.workloads.text import TextCodec

generate_app = typer.Typer(
    help="Write a workload trace (Parquet) from a generator, a dataset or a public trace.",
    no_args_is_help=True,
)

Output = Annotated[Path, typer.Option("--output", "-o", help="Trace file to write (Parquet).")]
Seed = Annotated[
    int, typer.Option(help="Seed of every random choice; same arguments + seed = identical file.")
]
BlockSize = Annotated[int, typer.Option(help="Tokens per block of hash_ids (full blocks only).")]
TokenizerDir = Annotated[
    Optional[Path],
    typer.Option(
        "--tokenizer", help="Local Hugging Face tokenizer directory; default: the built-in tokenizer."
    ),
]
Arrival = Annotated[str, typer.Option(help=f"Arrival process: {'|'.join(ARRIVAL_KINDS)}.")]
Burstiness = Annotated[
    float, typer.Option(help="Gamma shape for --arrival gamma (1 = Poisson, <1 burstier).")
]
TokenIds = Annotated[
    bool,
    typer.Option(
        "--token-ids/--no-token-ids", help="Store prompt_token_ids (omit for simulator-only traces)."
    ),
]
InputPath = Annotated[
    Optional[Path], typer.Option("--input", help="Local data file in the dataset's own format.")
]
Synthetic = Annotated[bool, typer.Option(help="Offline stand-in with the published length statistics.")]
DataPromptText = Annotated[
    Optional[bool],
    typer.Option(
        "--prompt-text/--no-prompt-text",
        help="Also store prompt text (default: yes for real data, no for --synthetic).",
    ),
]


def _setup(
    seed: int,
    block_size: int,
    tokenizer: Optional[Path],
    arrival: str,
    rate: float,
    burstiness: float,
    has_timestamps: bool = False,
) -> tuple[TextCodec, ArrivalSpec]:
    at_least("--seed", seed, 0)
    at_least("--block-size", block_size, 1)
    spec = ArrivalSpec(choice("--arrival", arrival, ARRIVAL_KINDS), rate, burstiness).check(has_timestamps)
    return TextCodec(load_tokenizer(tokenizer)), spec


def _params(values: dict[str, Any]) -> dict[str, Any]:
    """Every CLI argument except the output path (renaming the output must not change the file)."""
    return {k: _plain(v) for k, v in values.items() if k != "output"}


def _plain(value: Any) -> Any:
    """Strict-JSON values for the metadata: paths as strings, infinities as "inf"."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _check_output(output: Path) -> None:
    if output.exists() and output.is_dir():
        raise fail(f"--output {output}: is a directory; give a file name such as trace.parquet")


@generate_app.command()
def gsp(
    output: Output,
    preset: Annotated[
        str, typer.Option(help="Defaults to start from: rlt (RLT paper) | sglang (bench_serving).")
    ] = "rlt",
    groups: Annotated[Optional[int], typer.Option(help="Prefix groups (rlt 128, sglang 64).")] = None,
    prompts_per_group: Annotated[
        Optional[int], typer.Option(help="Prompts per group (rlt 32, sglang 16).")
    ] = None,
    lengths: Annotated[
        Optional[str], typer.Option(help="Prompt tokens per group, cycling (rlt 512,1024,2048,4096,8192).")
    ] = None,
    shared_fraction: Annotated[
        Optional[float], typer.Option(help="Shared prefix share of each prompt (rlt 0.5).")
    ] = None,
    system_tokens: Annotated[
        Optional[int], typer.Option(help="Shared system prompt tokens (instead of --lengths) (sglang 2048).")
    ] = None,
    question_tokens: Annotated[
        Optional[int], typer.Option(help="Unique question tokens after the system prompt (sglang 128).")
    ] = None,
    order: Annotated[
        str, typer.Option(help="random | grouped (best case) | interleaved (round-robin, worst case).")
    ] = "random",
    output_tokens: Annotated[
        Optional[int], typer.Option(help="Output tokens per request (rlt 4, sglang 256).")
    ] = None,
    arrival: Arrival = "poisson",
    rate: Annotated[Optional[float], typer.Option(help="Requests per second (rlt 12, sglang inf).")] = None,
    burstiness: Burstiness = 1.0,
    seed: Seed = 0,
    block_size: BlockSize = 16,
    tokenizer: TokenizerDir = None,
    prompt_text: Annotated[
        bool,
        typer.Option(
            "--prompt-text/--no-prompt-text", help="Also store prompt text (costs time on large traces)."
        ),
    ] = False,
    token_ids: TokenIds = True,
) -> None:
    """Generated shared prefix: groups of random-token prompts sharing a prefix per group."""
    params = _params(dict(locals()))
    from kvbench.workloads.gsp import ORDERS, PRESETS, GspConfig, generate_gsp

    _check_output(output)
    base = PRESETS[choice("--preset", preset, tuple(PRESETS))]
    if system_tokens is not None or question_tokens is not None:
        lengths_list, frac = None, None
        sys_t = system_tokens if system_tokens is not None else int(base["system_tokens"] or 0)  # type: ignore[call-overload]
        q_t = question_tokens if question_tokens is not None else int(base["question_tokens"] or 0)  # type: ignore[call-overload]
    elif lengths is not None or shared_fraction is not None or base["lengths"] is not None:
        lengths_list = (
            int_list("--lengths", lengths)
            if lengths is not None
            else (base["lengths"] or PRESETS["rlt"]["lengths"])
        )  # type: ignore[assignment]
        frac = (
            shared_fraction
            if shared_fraction is not None
            else float(base["shared_fraction"] or PRESETS["rlt"]["shared_fraction"])
        )  # type: ignore[arg-type]
        sys_t, q_t = None, None
    else:
        lengths_list, frac = None, None
        sys_t, q_t = int(base["system_tokens"]), int(base["question_tokens"])  # type: ignore[call-overload]
    if frac is not None and not 0.0 <= frac <= 1.0:
        raise fail(f"--shared-fraction {frac}: must be between 0 and 1")
    at_least("--system-tokens", sys_t, 0)
    at_least("--question-tokens", q_t, 0)
    cfg_groups = groups if groups is not None else int(base["groups"])  # type: ignore[call-overload]
    cfg_ppg = prompts_per_group if prompts_per_group is not None else int(base["prompts_per_group"])  # type: ignore[call-overload]
    cfg_out = output_tokens if output_tokens is not None else int(base["output_tokens"])  # type: ignore[call-overload]
    at_least("--groups", cfg_groups, 1)
    at_least("--prompts-per-group", cfg_ppg, 1)
    at_least("--output-tokens", cfg_out, 0, MAX_REQUEST_TOKENS)
    at_least("--system-tokens", sys_t, 0, MAX_REQUEST_TOKENS)
    at_least("--question-tokens", q_t, 0, MAX_REQUEST_TOKENS)
    longest = max(lengths_list) if lengths_list else (sys_t or 0) + (q_t or 0)
    total_tokens_fit("--groups x --prompts-per-group x length", cfg_groups * cfg_ppg * longest,
                     "use fewer groups or shorter prompts")
    codec, spec = _setup(
        seed,
        block_size,
        tokenizer,
        arrival,
        rate if rate is not None else float(base["rate"]),  # type: ignore[arg-type]
        burstiness,
    )
    cfg = GspConfig(
        cfg_groups, cfg_ppg, lengths_list, frac, sys_t, q_t, choice("--order", order, ORDERS), cfg_out, spec
    )
    params["resolved"] = _plain(asdict(cfg))
    rows = generate_gsp(cfg, codec, seed, prompt_text)
    shape = (
        f"{sys_t}-token system prompt + {q_t}-token question"
        if sys_t is not None
        else f"lengths {lengths_list}, shared fraction {frac}"
    )
    meta = TraceMeta(
        generator="gsp",
        block_size=block_size,
        seed=seed,
        tokenizer=codec.name,
        params=params,
        synthetic=True,
        source=f"generated shared prefix, random tokens: {cfg_groups} groups x {cfg_ppg} "
        f"prompts, {shape}, order {cfg.order}",
    )
    build.write(output, rows, meta, token_ids)


@generate_app.command()
def docqa(
    output: Output,
    dataset: Annotated[str, typer.Option(help="quality | wikiqa | loogle.")],
    input: InputPath = None,
    synthetic: Synthetic = False,
    sampling: Annotated[
        Optional[str],
        typer.Option(
            help="windows (ARC: Zipf over documents, reshuffled per window) | shuffled (RLT: all questions) "
            "[quality/wikiqa windows, loogle shuffled]."
        ),
    ] = None,
    requests: Annotated[Optional[int], typer.Option(help="Requests (windows 3072; shuffled: all).")] = None,
    window: Annotated[int, typer.Option(help="Requests per window (windows sampling).")] = 512,
    zipf_alpha: Annotated[float, typer.Option(help="Zipf exponent over documents (windows sampling).")] = 1.0,
    documents: Annotated[
        Optional[int], typer.Option(help="Documents to use (loogle 512; others all).")
    ] = None,
    questions_per_doc: Annotated[
        int, typer.Option(help="Questions per document at most (shuffled sampling).")
    ] = 100,
    doc_tokens: Annotated[
        Optional[str],
        typer.Option(
            help="MIN,MAX: drop shorter documents, cut others to a random length between (loogle 1000,8000)."
        ),
    ] = None,
    output_tokens: Annotated[
        Optional[int], typer.Option(help="Output tokens (windows 1 (ARC), shuffled 4 (RLT)).")
    ] = None,
    arrival: Arrival = "poisson",
    rate: Annotated[float, typer.Option(help="Requests per second (inf: all at time 0).")] = 12.0,
    burstiness: Burstiness = 1.0,
    seed: Seed = 0,
    block_size: BlockSize = 16,
    tokenizer: TokenizerDir = None,
    prompt_text: DataPromptText = None,
    token_ids: TokenIds = True,
) -> None:
    """Document + question requests; the document comes first so it is a cacheable prefix."""
    params = _params(dict(locals()))
    from kvbench.workloads import docqa as dq

    _check_output(output)
    ds = choice("--dataset", dataset, dq.DATASETS)
    mode = choice("--sampling", sampling, dq.SAMPLING) if sampling is not None else dq.DEFAULT_SAMPLING[ds]
    for flag, value, low, high in (
        ("--requests", requests, 1, 1 << 24),
        ("--window", window, 1, None),
        ("--documents", documents, 1, 1 << 24),
        ("--questions-per-doc", questions_per_doc, 1, None),
        ("--output-tokens", output_tokens, 0, MAX_REQUEST_TOKENS),
    ):
        at_least(flag, value, low, high)
    if zipf_alpha < 0:
        raise fail(f"--zipf-alpha {zipf_alpha}: must be >= 0")
    if input is not None and synthetic:
        raise fail("--input and --synthetic exclude each other; pick one")
    cut = int_range("--doc-tokens", doc_tokens) if doc_tokens else ((1000, 8000) if ds == "loogle" else None)
    codec, spec = _setup(seed, block_size, tokenizer, arrival, rate, burstiness)
    rng = np.random.default_rng(seed)
    if synthetic:
        n_docs = documents or dq.SYNTHETIC[ds].documents
        docs = dq.synthetic_documents(ds, codec, rng, n_docs)
        source = dq.SYNTHETIC[ds].description
        if ds == "loogle" and doc_tokens is None:
            cut = None  # the stand-in is generated in [1000, 8000] already
    else:
        raw, source = dq.load_raw(ds, input_file("--input", input) if input is not None else None)
        docs = dq.encode_documents(raw, codec)
    cfg = dq.DocqaConfig(
        ds,
        mode,
        requests if requests is not None else (3072 if mode == "windows" else None),
        window,
        zipf_alpha,
        documents if documents is not None else (512 if ds == "loogle" else None),
        questions_per_doc,
        cut,
        output_tokens if output_tokens is not None else (1 if mode == "windows" else 4),
        spec,
    )
    params["resolved"] = _plain(asdict(cfg))
    rows = dq.generate_docqa(cfg, docs, codec, rng, not synthetic if prompt_text is None else prompt_text)
    meta = TraceMeta(
        generator=f"docqa:{ds}",
        block_size=block_size,
        seed=seed,
        tokenizer=codec.name,
        params=params,
        synthetic=synthetic,
        source=f"{source}; sampling {mode}",
    )
    build.write(output, rows, meta, token_ids)


@generate_app.command()
def conversation(
    output: Output,
    dataset: Annotated[str, typer.Option(help="sharegpt | ultrachat.")],
    input: InputPath = None,
    synthetic: Synthetic = False,
    preset: Annotated[
        Optional[str],
        typer.Option(
            help="recorded (real data's default): each conversation's own turns and message lengths | "
            "rlt (the RLT paper; --synthetic's default): --turns 2,4,6,8 --user-turn-tokens 1024 "
            "--max-output-tokens 1024. --turns/--user-turn-tokens override rlt, shape real data "
            "when --preset is not given, and conflict with --preset recorded."
        ),
    ] = None,
    conversations: Annotated[
        int, typer.Option(help="Sessions to generate: a seeded sample of the source's conversations.")
    ] = 128,
    turns: Annotated[
        Optional[str],
        typer.Option(
            help="Turns per session, in rotation; shorter conversations get synthesized turns "
            "(rlt 2,4,6,8; recorded: each conversation's own)."
        ),
    ] = None,
    user_turn_tokens: Annotated[
        Optional[int],
        typer.Option(
            help="Exact tokens of every user turn, cut or padded; 0 keeps each message's length "
            "(rlt 1024, recorded 0)."
        ),
    ] = None,
    output_tokens: Annotated[
        Optional[int], typer.Option(help="Fixed answer tokens (default: the recorded answer's length).")
    ] = None,
    max_output_tokens: Annotated[
        Optional[int], typer.Option(help="Cap on recorded answer lengths (rlt 1024, recorded none).")
    ] = None,
    think_s: Annotated[
        float, typer.Option("--think-s", help="Seconds between a turn finishing and the next being sent.")
    ] = 0.0,
    arrival: Arrival = "poisson",
    rate: Annotated[float, typer.Option(help="Session starts per second (inf: all at time 0).")] = 12.0,
    burstiness: Burstiness = 1.0,
    seed: Seed = 0,
    block_size: BlockSize = 16,
    tokenizer: TokenizerDir = None,
    prompt_text: DataPromptText = None,
    token_ids: TokenIds = True,
) -> None:
    """Multi-turn sessions with accumulated history (closed loop: a turn waits for the previous one).

    Real data (--input or the hub) keeps its recorded conversations; --preset rlt builds the RLT paper's.
    """
    params = _params(dict(locals()))
    from kvbench.workloads import conversation as cv

    _check_output(output)
    ds = choice("--dataset", dataset, cv.DATASETS)
    chosen = _conversation_preset(preset, synthetic, turns, user_turn_tokens)
    params["preset"] = chosen  # the construction actually used, also when it was a default
    base = cv.PRESETS[chosen]
    turn_list = (
        int_list("--turns", turns, minimum=1) if turns is not None
        else list(base.turns) if base.turns is not None else None
    )
    user_turn_tokens = user_turn_tokens if user_turn_tokens is not None else base.user_turn_tokens
    max_output_tokens = max_output_tokens if max_output_tokens is not None else base.max_output_tokens
    at_least("--conversations", conversations, 1)
    at_least("--user-turn-tokens", user_turn_tokens, 0)
    at_least("--output-tokens", output_tokens, 0, MAX_REQUEST_TOKENS)
    at_least("--max-output-tokens", max_output_tokens, 1, MAX_REQUEST_TOKENS)
    if think_s < 0 or think_s != think_s:
        raise fail(f"--think-s {think_s}: must be >= 0")
    if input is not None and synthetic:
        raise fail("--input and --synthetic exclude each other; pick one")
    codec, spec = _setup(seed, block_size, tokenizer, arrival, rate, burstiness)
    rng = np.random.default_rng(seed)
    cfg = cv.ConversationConfig(
        ds, conversations, turn_list, user_turn_tokens, output_tokens, max_output_tokens, think_s, spec
    )
    params["resolved"] = _plain(asdict(cfg))
    if synthetic:
        convs = None
        source = (
            f"synthetic {ds} stand-in: user turns of {user_turn_tokens or 'lognormal'} tokens, "
            f"lognormal answers (median {cv.SYNTHETIC_ANSWER_MEDIAN[ds]} tokens)"
        )
    else:
        convs, source = cv.load_conversations(ds, input_file("--input", input) if input is not None else None)
        source += f"; {_conversation_shape(cfg)}"
    rows, padded = cv.generate_conversations(
        cfg, convs, codec, rng, not synthetic if prompt_text is None else prompt_text, token_ids, block_size
    )
    if padded:
        build.warn(f"{padded} turn(s) synthesized because source conversations were shorter than --turns")
        source += f"; {padded} turns synthesized for short conversations"
    meta = TraceMeta(
        generator=f"conversation:{ds}",
        block_size=block_size,
        seed=seed,
        tokenizer=codec.name,
        params=params,
        synthetic=synthetic,
        source=source,
    )
    build.write(output, rows, meta, token_ids)


def _conversation_preset(
    preset: Optional[str], synthetic: bool, turns: Optional[str], user_turn_tokens: Optional[int]
) -> str:
    """The construction to use; an explicit `recorded` promises untouched turns, so reshaping it fails."""
    from kvbench.workloads.conversation import PRESETS

    if preset is None:
        return "rlt" if synthetic else "recorded"
    chosen = choice("--preset", preset, tuple(PRESETS))
    if chosen == "recorded" and synthetic:
        raise fail("--preset recorded keeps recorded conversations and --synthetic has none; "
                   "give --input FILE instead of --synthetic, or use --preset rlt")
    if chosen == "recorded":
        for flag, value in (("--turns", turns), ("--user-turn-tokens", user_turn_tokens)):
            if value is not None:
                raise fail(f"--preset recorded keeps each conversation as recorded, so {flag} {value} "
                           f"conflicts with it; drop --preset to apply {flag} to the real data, "
                           f"or drop {flag}")
    return chosen


def _conversation_shape(cfg: Any) -> str:
    """How the real conversations were shaped, for the trace's `source` line."""
    if cfg.turns is None and not cfg.user_turn_tokens:
        return "turns and message lengths as recorded"
    turns = "recorded turns" if cfg.turns is None else f"turns {','.join(map(str, cfg.turns))} in rotation"
    users = f"user turns of {cfg.user_turn_tokens} tokens" if cfg.user_turn_tokens else "recorded user turns"
    return f"{turns}, {users}"


@generate_app.command("trace")
def trace_import(
    output: Output,
    format: Annotated[str, typer.Option("--format", help="mooncake | bailian | azure.")],
    input: Annotated[
        Optional[Path], typer.Option("--input", help="The public trace file (JSONL / CSV).")
    ] = None,
    synthetic: Annotated[
        bool,
        typer.Option(
            help="No file: synthesize a seeded stand-in in the public format and import it like a file."
        ),
    ] = False,
    flavour: Annotated[
        Optional[str],
        typer.Option(
            help="--synthetic: which trace to imitate; mooncake conversation|toolagent|synthetic, "
            "azure conversation|code (default: the first)."
        ),
    ] = None,
    requests: Annotated[
        Optional[int],
        typer.Option(
            help="--synthetic: requests (mooncake conversation 12031, toolagent 23608, synthetic 3993; "
            "bailian 10000; azure conversation 19366, code 8819)."
        ),
    ] = None,
    duration: Annotated[
        Optional[float],
        typer.Option(help="--synthetic: seconds spanned by the stand-in's timestamps (default 3600)."),
    ] = None,
    write_source: Annotated[
        Optional[Path],
        typer.Option(
            "--write-source",
            help="--synthetic: also write the stand-in in the public format (JSONL; CSV for azure).",
        ),
    ] = None,
    time_scale: Annotated[float, typer.Option(help="Multiply source times (0.5 = twice as fast).")] = 1.0,
    max_requests: Annotated[Optional[int], typer.Option(help="Keep only the first N requests.")] = None,
    sessions: Annotated[
        bool,
        typer.Option(
            "--sessions/--no-sessions",
            help="Bailian: link chat_id/parent_chat_id turns into closed-loop sessions.",
        ),
    ] = True,
    think_s: Annotated[
        Optional[float],
        typer.Option(
            "--think-s",
            help="Fixed think time between session turns (default: the source gap between the turns).",
        ),
    ] = None,
    arrival: Arrival = "trace",
    rate: Annotated[
        Optional[float],
        typer.Option(
            help="Requests per second when --arrival is not trace (default 1); with --synthetic and "
            "--arrival trace, the stand-in's own request rate instead of --duration."
        ),
    ] = None,
    burstiness: Burstiness = 1.0,
    seed: Seed = 0,
    block_size: BlockSize = 16,
    tokenizer: TokenizerDir = None,
    prompt_text: Annotated[
        bool,
        typer.Option(
            "--prompt-text/--no-prompt-text", help="Also store decoded prompt text (slow on large traces)."
        ),
    ] = False,
    token_ids: TokenIds = True,
) -> None:
    """Import a public trace; prompts are synthesized from its hash ids with exact input lengths."""
    params = _params(dict(locals()))
    del params["write_source"]  # a side output: naming it must not change the trace, like --output
    from kvbench.workloads import imports as im

    _check_output(output)
    fmt = choice("--format", format, im.FORMATS)
    if not (time_scale > 0) or time_scale == float("inf"):
        raise fail(f"--time-scale {time_scale}: must be a positive number")
    at_least("--max-requests", max_requests, 1)
    if think_s is not None and (think_s < 0 or think_s != think_s):
        raise fail(f"--think-s {think_s}: must be >= 0")
    stand_in = _stand_in_options(
        fmt, input, synthetic, flavour, requests, duration, write_source, arrival, rate
    )
    replay_rate = rate if rate is not None and (stand_in is None or arrival != "trace") else 1.0
    codec, spec = _setup(seed, block_size, tokenizer, arrival, replay_rate, burstiness, has_timestamps=True)
    if stand_in is not None:
        src, described = _synthetic_source(fmt, stand_in, seed, write_source, max_requests)
        params["stand_in"] = _plain(asdict(stand_in))
    else:
        assert input is not None
        src = im.read_source(fmt, input_file("--input", input), max_requests)
        described = f"{fmt} trace file {input.name} ({len(src.input_len)} requests)"
    total_tokens_fit(f"--input {input}" if input is not None else "--synthetic", int(src.input_len.sum()),
                     "import fewer requests with --max-requests")
    src, moved = src.sorted_by_time()
    params["rows_reordered_by_timestamp"] = moved  # rows out of time order in the source, sorted stably
    if moved:
        described += f", {moved} rows sorted into time order"
    cfg = im.ImportConfig(fmt, time_scale, spec, think_s, sessions)
    params["resolved"] = _plain(asdict(cfg))
    rows = im.generate_import(cfg, src, codec, seed, block_size, token_ids, prompt_text)
    block = im.SOURCE_BLOCK[fmt]
    how = (
        f"prompt tokens synthesized from its {block}-token hash_ids"
        if block
        else "no prefix information: every prompt has unique tokens"
    )
    meta = TraceMeta(
        generator=f"trace:{fmt}",
        block_size=block_size,
        seed=seed,
        tokenizer=codec.name,
        params=params,
        synthetic=stand_in is not None,
        source=f"{described}; {how}",
    )
    build.write(output, rows, meta, token_ids)


@dataclass(frozen=True)
class StandInChoice:
    flavour: str
    requests: int
    duration_s: float


def _stand_in_options(
    fmt: str,
    input: Optional[Path],
    synthetic: bool,
    flavour: Optional[str],
    requests: Optional[int],
    duration: Optional[float],
    write_source: Optional[Path],
    arrival: str,
    rate: Optional[float],
) -> StandInChoice | None:
    """Check the --synthetic options against --input; None for a real file."""
    from kvbench.workloads import synthetic_traces as syn

    if input is not None and synthetic:
        raise fail("--input and --synthetic exclude each other; pick one")
    if not synthetic:
        if input is None:
            raise fail(
                "--input FILE is required (or --synthetic for an offline stand-in in the public format)"
            )
        for flag, value in (
            ("--flavour", flavour),
            ("--requests", requests),
            ("--duration", duration),
            ("--write-source", write_source),
        ):
            if value is not None:
                raise fail(
                    f"{flag} only applies with --synthetic; drop it or use --synthetic instead of --input"
                )
        return None
    names = syn.flavours(fmt)
    if flavour is not None and len(names) == 1 and flavour.strip().lower() != names[0]:
        raise fail(f"--flavour {flavour}: the {fmt} stand-in has no flavours; drop --flavour")
    chosen = choice("--flavour", flavour, names) if flavour is not None else syn.DEFAULT_FLAVOUR[fmt]
    at_least("--requests", requests, 1)
    n = requests if requests is not None else syn.STAND_INS[(fmt, chosen)].requests
    if duration is not None and not (0 < duration < float("inf")):
        raise fail(f"--duration {duration}: must be a positive number of seconds")
    if rate is not None and arrival == "trace":
        if duration is not None:
            raise fail("--rate and --duration both set the stand-in's timing; give only one")
        if not (0 < rate < float("inf")):
            raise fail(f"--rate {rate}: must be a positive finite number of requests per second")
        duration = n / rate
    if write_source is not None and write_source.is_dir():
        raise fail(f"--write-source {write_source}: is a directory; give a file name such as source.jsonl")
    return StandInChoice(
        chosen, n, duration if duration is not None else syn.STAND_INS[(fmt, chosen)].duration_s
    )


def _synthetic_source(
    fmt: str, stand_in: StandInChoice, seed: int, write_source: Optional[Path], max_requests: Optional[int]
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


def inspect(
    trace: Annotated[Path, typer.Argument(help="Trace file (Parquet) written by `kvbench generate`.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Requests, sessions, token statistics, arrival rate, distinct blocks and the ideal hit rate."""
    from kvbench.workloads.summary import render, summarize

    summary = summarize(read_trace(trace))
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
    else:
        render(summary)


def register(app: typer.Typer) -> None:
    app.add_typer(generate_app, name="generate")
    app.command("inspect")(inspect)
