"""`kvbench generate {gsp,docqa,conversation,trace}` and `kvbench inspect`.

Each command only turns its flags into the source's config model (kvbench.workloads.configs) and hands it
to :func:`kvbench.workloads.generate`; the help texts are the models' field descriptions.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import BaseModel

from kvbench.trace import read_trace
from kvbench.workloads import generate, parse_config
from kvbench.workloads.configs import ConversationConfig, DocqaConfig, GspConfig, TraceConfig

generate_app = typer.Typer(
    help="Write a workload trace (Parquet) from a generator, a dataset or a public trace.",
    no_args_is_help=True,
)


def _opt(model: type[BaseModel], name: str, *decls: str) -> Any:
    """A typer option whose help is the config field's description (one text for CLI, schema and docs)."""
    return typer.Option(*decls, help=model.model_fields[name].description)


def _run(kind: str, output: Path, flags: dict[str, Any]) -> None:
    """Every flag but the output goes into the config; the config alone decides the trace."""
    generate(kind, parse_config(kind, {k: v for k, v in flags.items() if k != "output"}), output)


Output = Annotated[Path, typer.Option("--output", "-o", help="Trace file to write (Parquet).")]
Seed = Annotated[int, _opt(GspConfig, "seed")]
BlockSize = Annotated[int, _opt(GspConfig, "block_size")]
TokenizerDir = Annotated[Path | None, _opt(GspConfig, "tokenizer", "--tokenizer")]
Arrival = Annotated[str, _opt(GspConfig, "arrival")]
Burstiness = Annotated[float, _opt(GspConfig, "burstiness")]
TokenIds = Annotated[bool, _opt(GspConfig, "token_ids", "--token-ids/--no-token-ids")]
InputPath = Annotated[Path | None, _opt(DocqaConfig, "input", "--input")]
Synthetic = Annotated[bool, _opt(DocqaConfig, "synthetic")]
DataPromptText = Annotated[bool | None, _opt(DocqaConfig, "prompt_text", "--prompt-text/--no-prompt-text")]


@generate_app.command()
def gsp(
    output: Output,
    preset: Annotated[str, _opt(GspConfig, "preset")] = "rlt",
    groups: Annotated[int | None, _opt(GspConfig, "groups")] = None,
    prompts_per_group: Annotated[int | None, _opt(GspConfig, "prompts_per_group")] = None,
    lengths: Annotated[str | None, _opt(GspConfig, "lengths")] = None,
    shared_fraction: Annotated[float | None, _opt(GspConfig, "shared_fraction")] = None,
    system_tokens: Annotated[int | None, _opt(GspConfig, "system_tokens")] = None,
    question_tokens: Annotated[int | None, _opt(GspConfig, "question_tokens")] = None,
    order: Annotated[str, _opt(GspConfig, "order")] = "random",
    output_tokens: Annotated[int | None, _opt(GspConfig, "output_tokens")] = None,
    arrival: Arrival = "poisson",
    rate: Annotated[float | None, _opt(GspConfig, "rate")] = None,
    burstiness: Burstiness = 1.0,
    seed: Seed = 0,
    block_size: BlockSize = 16,
    tokenizer: TokenizerDir = None,
    prompt_text: Annotated[bool, _opt(GspConfig, "prompt_text", "--prompt-text/--no-prompt-text")] = False,
    token_ids: TokenIds = True,
) -> None:
    """Generated shared prefix: groups of random-token prompts sharing a prefix per group."""
    _run("gsp", output, locals())


@generate_app.command()
def docqa(
    output: Output,
    dataset: Annotated[str, _opt(DocqaConfig, "dataset")],
    input: InputPath = None,
    synthetic: Synthetic = False,
    sampling: Annotated[str | None, _opt(DocqaConfig, "sampling")] = None,
    requests: Annotated[int | None, _opt(DocqaConfig, "requests")] = None,
    window: Annotated[int, _opt(DocqaConfig, "window")] = 512,
    zipf_alpha: Annotated[float, _opt(DocqaConfig, "zipf_alpha")] = 1.0,
    documents: Annotated[int | None, _opt(DocqaConfig, "documents")] = None,
    questions_per_doc: Annotated[int, _opt(DocqaConfig, "questions_per_doc")] = 100,
    doc_tokens: Annotated[str | None, _opt(DocqaConfig, "doc_tokens")] = None,
    output_tokens: Annotated[int | None, _opt(DocqaConfig, "output_tokens")] = None,
    arrival: Arrival = "poisson",
    rate: Annotated[float, _opt(DocqaConfig, "rate")] = 12.0,
    burstiness: Burstiness = 1.0,
    seed: Seed = 0,
    block_size: BlockSize = 16,
    tokenizer: TokenizerDir = None,
    prompt_text: DataPromptText = None,
    token_ids: TokenIds = True,
) -> None:
    """Document + question requests; the document comes first so it is a cacheable prefix."""
    _run("docqa", output, locals())


@generate_app.command()
def conversation(
    output: Output,
    dataset: Annotated[str, _opt(ConversationConfig, "dataset")],
    input: InputPath = None,
    synthetic: Synthetic = False,
    preset: Annotated[str | None, _opt(ConversationConfig, "preset")] = None,
    conversations: Annotated[int, _opt(ConversationConfig, "conversations")] = 128,
    turns: Annotated[str | None, _opt(ConversationConfig, "turns")] = None,
    user_turn_tokens: Annotated[int | None, _opt(ConversationConfig, "user_turn_tokens")] = None,
    output_tokens: Annotated[int | None, _opt(ConversationConfig, "output_tokens")] = None,
    max_output_tokens: Annotated[int | None, _opt(ConversationConfig, "max_output_tokens")] = None,
    think_s: Annotated[float, _opt(ConversationConfig, "think_s", "--think-s")] = 0.0,
    arrival: Arrival = "poisson",
    rate: Annotated[float, _opt(ConversationConfig, "rate")] = 12.0,
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
    _run("conversation", output, locals())


@generate_app.command("trace")
def trace_import(
    output: Output,
    format: Annotated[str, _opt(TraceConfig, "format", "--format")],
    input: Annotated[Path | None, _opt(TraceConfig, "input", "--input")] = None,
    synthetic: Annotated[bool, _opt(TraceConfig, "synthetic")] = False,
    flavour: Annotated[str | None, _opt(TraceConfig, "flavour")] = None,
    requests: Annotated[int | None, _opt(TraceConfig, "requests")] = None,
    duration: Annotated[float | None, _opt(TraceConfig, "duration")] = None,
    write_source: Annotated[Path | None, _opt(TraceConfig, "write_source", "--write-source")] = None,
    time_scale: Annotated[float, _opt(TraceConfig, "time_scale")] = 1.0,
    max_requests: Annotated[int | None, _opt(TraceConfig, "max_requests")] = None,
    sessions: Annotated[bool, _opt(TraceConfig, "sessions", "--sessions/--no-sessions")] = True,
    think_s: Annotated[float | None, _opt(TraceConfig, "think_s", "--think-s")] = None,
    arrival: Arrival = "trace",
    rate: Annotated[float | None, _opt(TraceConfig, "rate")] = None,
    burstiness: Burstiness = 1.0,
    seed: Seed = 0,
    block_size: BlockSize = 16,
    tokenizer: TokenizerDir = None,
    prompt_text: Annotated[bool, _opt(TraceConfig, "prompt_text", "--prompt-text/--no-prompt-text")] = False,
    token_ids: Annotated[bool, _opt(TraceConfig, "token_ids", "--token-ids/--no-token-ids")] = False,
) -> None:
    """Import a public trace; prompts are synthesized from its hash ids with exact input lengths."""
    _run("trace", output, locals())


def inspect(
    trace: Annotated[Path, typer.Argument(help="Trace file (Parquet) written by `kvbench generate`.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Requests, sessions, token statistics, arrival rate, distinct blocks and the ideal hit rate."""
    from kvbench.workloads.summary import render, summarize_file

    summary = summarize_file(trace)
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
    else:
        render(summary)


def register(app: typer.Typer) -> None:
    app.add_typer(generate_app, name="generate")
    app.command("inspect")(inspect)
