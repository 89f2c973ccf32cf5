"""The options of each `kvbench generate` source as one validated model.

The command line, `kvbench run` specs and library callers all build one of these models, so a value is
checked once, with the same one-line message (naming the command-line flag) wherever it came from. Field
names are the flags without dashes; defaults are the command line's. The trace records the model's values
as its metadata ``params`` (see :func:`trace_params`).
"""

from __future__ import annotations

import math
from abc import abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, TypeVar

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    model_validator,
)

from kvbench.errors import KvbenchError, fail
from kvbench.workloads import conversation as cv
from kvbench.workloads import docqa as dq
from kvbench.workloads import imports as im
from kvbench.workloads import synthetic_traces as syn
from kvbench.workloads.arrivals import ARRIVAL_KINDS, ArrivalKind, ArrivalSpec
from kvbench.workloads.gsp import ORDERS, PRESETS, GspSettings, Order
from kvbench.workloads.options import MAX_REQUEST_TOKENS, choice, int_list, int_range, total_tokens_fit

T = TypeVar("T")


def flag(field: str) -> str:
    """The command-line flag of a field: every field is its flag without the leading dashes."""
    return "--" + field.replace("_", "-")


def _as_value_error(check: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run an option parser from kvbench.workloads.options inside a validator, keeping its message."""
    try:
        return check(*args, **kwargs)
    except KvbenchError as exc:
        raise ValueError(str(exc)) from None


def _one_of(options: tuple[str, ...]) -> BeforeValidator:
    """Case- and space-insensitive choice, with the command line's "unknown value; choose one of" line."""

    def check(value: Any, info: ValidationInfo) -> Any:
        if value is None or not isinstance(value, str):
            return value
        return _as_value_error(choice, flag(str(info.field_name)), value, options)

    return BeforeValidator(check)


def _int_list(minimum: int) -> BeforeValidator:
    """Comma-separated text (the command line's spelling) or a list of integers."""

    def check(value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, list):
            value = ",".join(str(v) for v in value)
        if not isinstance(value, str):
            return value
        return _as_value_error(int_list, flag(str(info.field_name)), value, minimum=minimum)

    return BeforeValidator(check)


def _int_range(value: Any, info: ValidationInfo) -> Any:
    """MIN,MAX as text or a two-item list; empty text means unset, as on the command line."""
    if isinstance(value, (list, tuple)):
        value = ",".join(str(v) for v in value)
    if not isinstance(value, str):
        return value
    return _as_value_error(int_range, flag(str(info.field_name)), value) if value else None


Tokens = Annotated[int, Field(ge=0, le=MAX_REQUEST_TOKENS)]
Arrival = Annotated[ArrivalKind, _one_of(ARRIVAL_KINDS), Field(description=f"Arrival process: {'|'.join(ARRIVAL_KINDS)}.")]
Burstiness = Annotated[float, Field(description="Gamma shape for --arrival gamma (1 = Poisson, <1 burstier).")]
Seed = Annotated[int, Field(ge=0, description="Seed of every random choice; same arguments + seed = identical file.")]
BlockSize = Annotated[int, Field(ge=1, description="Tokens per block of hash_ids (full blocks only).")]
TokenizerDir = Annotated[
    Path | None, Field(description="Local Hugging Face tokenizer directory; default: the built-in tokenizer.")
]
TokenIds = Annotated[bool, Field(description="Store prompt_token_ids (omit for simulator-only traces).")]
InputPath = Annotated[Path | None, Field(description="Local data file in the dataset's own format.")]
Synthetic = Annotated[bool, Field(description="Offline stand-in with the published length statistics.")]
DataPromptText = Annotated[
    bool | None, Field(description="Also store prompt text (default: yes for real data, no for --synthetic).")
]


class GenerateConfig(BaseModel):
    """What every source shares. Subclasses set ``kind`` (the `kvbench generate` subcommand)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    kind: ClassVar[str]
    has_timestamps: ClassVar[bool] = False  # only imported traces can be replayed at their own times
    burstiness: Burstiness = 1.0
    seed: Seed = 0
    block_size: BlockSize = 16
    tokenizer: TokenizerDir = None
    token_ids: TokenIds = True

    @property
    def stores_token_ids(self) -> bool:
        return self.token_ids

    @abstractmethod
    def arrival_spec(self) -> ArrivalSpec:
        """How requests arrive: each source names its own flags (rate, timestamps, burstiness)."""

    @model_validator(mode="after")
    def _check_arrival(self) -> GenerateConfig:
        _as_value_error(self.arrival_spec().check, self.has_timestamps)
        return self


def _no_input_and_synthetic(input: Path | None, synthetic: bool) -> None:
    if input is not None and synthetic:
        raise ValueError("--input and --synthetic exclude each other; pick one")


class _DatasetConfig(GenerateConfig):
    """A source read from a data set (a file, the hub, or an offline stand-in) at an arrival rate."""

    input: InputPath = None
    synthetic: Synthetic = False
    arrival: Arrival = "poisson"
    rate: float = Field(12.0, description="Requests per second (inf: all at time 0).")
    prompt_text: DataPromptText = None

    def arrival_spec(self) -> ArrivalSpec:
        return ArrivalSpec(self.arrival, self.rate, self.burstiness)

    @model_validator(mode="after")
    def _check_source(self) -> _DatasetConfig:
        _no_input_and_synthetic(self.input, self.synthetic)
        return self


class GspConfig(GenerateConfig):
    """Generated shared prefix: groups of random-token prompts sharing a prefix per group."""

    kind: ClassVar[str] = "gsp"
    preset: Annotated[Literal["rlt", "sglang"], _one_of(tuple(PRESETS))] = Field(
        "rlt", description="Defaults to start from: rlt (RLT paper) | sglang (bench_serving).")
    groups: int | None = Field(None, ge=1, description="Prefix groups (rlt 128, sglang 64).")
    prompts_per_group: int | None = Field(None, ge=1, description="Prompts per group (rlt 32, sglang 16).")
    lengths: Annotated[list[int] | None, _int_list(1)] = Field(
        None, description="Prompt tokens per group, cycling (rlt 512,1024,2048,4096,8192).")
    shared_fraction: float | None = Field(None, description="Shared prefix share of each prompt (rlt 0.5).")
    system_tokens: Tokens | None = Field(
        None, description="Shared system prompt tokens (instead of --lengths) (sglang 2048).")
    question_tokens: Tokens | None = Field(
        None, description="Unique question tokens after the system prompt (sglang 128).")
    order: Annotated[Order, _one_of(ORDERS)] = Field(
        "random", description="random | grouped (best case) | interleaved (round-robin, worst case).")
    output_tokens: Tokens | None = Field(None, description="Output tokens per request (rlt 4, sglang 256).")
    arrival: Arrival = "poisson"
    rate: float | None = Field(None, description="Requests per second (rlt 12, sglang inf).")
    prompt_text: bool = Field(False, description="Also store prompt text (costs time on large traces).")

    def arrival_spec(self) -> ArrivalSpec:
        rate = self.rate if self.rate is not None else PRESETS[self.preset].rate
        return ArrivalSpec(self.arrival, rate, self.burstiness)

    def settings(self) -> GspSettings:
        """The preset filled in: --system-tokens/--question-tokens pick a system prompt + question,
        --lengths/--shared-fraction a fraction of each prompt, otherwise the preset's own shape."""
        base = PRESETS[self.preset]
        lengths: list[int] | None = None
        frac = sys_t = q_t = None
        if self.system_tokens is not None or self.question_tokens is not None:
            sys_t = self.system_tokens if self.system_tokens is not None else base.system_tokens or 0
            q_t = self.question_tokens if self.question_tokens is not None else base.question_tokens
        elif self.lengths is not None or self.shared_fraction is not None or base.system_tokens is None:
            lengths = self.lengths if self.lengths is not None else list(base.lengths)
            frac = self.shared_fraction if self.shared_fraction is not None else base.shared_fraction
        else:
            sys_t, q_t = base.system_tokens, base.question_tokens
        return GspSettings(
            self.groups if self.groups is not None else base.groups,
            self.prompts_per_group if self.prompts_per_group is not None else base.prompts_per_group,
            lengths, frac, sys_t, q_t, self.order,
            self.output_tokens if self.output_tokens is not None else base.output_tokens,
            self.arrival_spec(),
        )

    @model_validator(mode="after")
    def _check_shape(self) -> GspConfig:
        s = self.settings()
        if s.shared_fraction is not None and not 0.0 <= s.shared_fraction <= 1.0:
            raise ValueError(f"--shared-fraction {s.shared_fraction}: must be between 0 and 1")
        longest = max(s.lengths) if s.lengths else (s.system_tokens or 0) + (s.question_tokens or 0)
        _as_value_error(total_tokens_fit, "--groups x --prompts-per-group x length",
                        s.groups * s.prompts_per_group * longest, "use fewer groups or shorter prompts")
        return self


class DocqaConfig(_DatasetConfig):
    """Document + question requests; the document comes first so it is a cacheable prefix."""

    kind: ClassVar[str] = "docqa"
    dataset: Annotated[dq.Dataset, _one_of(dq.DATASETS)] = Field(description="quality | wikiqa | loogle.")
    sampling: Annotated[dq.Sampling | None, _one_of(dq.SAMPLING)] = Field(
        None, description="windows (ARC: Zipf over documents, reshuffled per window) | shuffled (RLT: all "
        "questions) [quality/wikiqa windows, loogle shuffled].")
    requests: int | None = Field(None, ge=1, le=1 << 24, description="Requests (windows 3072; shuffled: all).")
    window: int = Field(512, ge=1, description="Requests per window (windows sampling).")
    zipf_alpha: float = Field(1.0, ge=0, description="Zipf exponent over documents (windows sampling).")
    documents: int | None = Field(None, ge=1, le=1 << 24, description="Documents to use (loogle 512; others all).")
    questions_per_doc: int = Field(100, ge=1, description="Questions per document at most (shuffled sampling).")
    doc_tokens: Annotated[tuple[int, int] | None, BeforeValidator(_int_range)] = Field(
        None, description="MIN,MAX: drop shorter documents, cut others to a random length between "
        "(loogle 1000,8000).")
    output_tokens: Tokens | None = Field(None, description="Output tokens (windows 1 (ARC), shuffled 4 (RLT)).")

    def settings(self) -> dq.DocqaSettings:
        windows = (self.sampling or dq.DEFAULT_SAMPLING[self.dataset]) == "windows"
        loogle = self.dataset == "loogle"
        cut = self.doc_tokens
        if cut is None and loogle and not self.synthetic:  # the stand-in is generated in [1000, 8000] already
            cut = (1000, 8000)
        return dq.DocqaSettings(
            self.dataset,
            "windows" if windows else "shuffled",
            self.requests if self.requests is not None else (3072 if windows else None),
            self.window,
            self.zipf_alpha,
            self.documents if self.documents is not None else (512 if loogle else None),
            self.questions_per_doc,
            cut,
            self.output_tokens if self.output_tokens is not None else (1 if windows else 4),
            self.arrival_spec(),
        )


class ConversationConfig(_DatasetConfig):
    """Multi-turn sessions with accumulated history (closed loop: a turn waits for the previous one)."""

    kind: ClassVar[str] = "conversation"
    dataset: Annotated[cv.Dataset, _one_of(cv.DATASETS)] = Field(description="sharegpt | ultrachat.")
    preset: Annotated[Literal["recorded", "rlt"] | None, _one_of(tuple(cv.PRESETS))] = Field(
        None, description="recorded (real data's default): each conversation's own turns and message lengths | "
        "rlt (the RLT paper; --synthetic's default): --turns 2,4,6,8 --user-turn-tokens 1024 "
        "--max-output-tokens 1024. --turns/--user-turn-tokens override rlt, shape real data "
        "when --preset is not given, and conflict with --preset recorded.")
    conversations: int = Field(128, ge=1, description="Sessions to generate: a seeded sample of the source's "
                               "conversations.")
    turns: Annotated[list[int] | None, _int_list(1)] = Field(
        None, description="Turns per session, in rotation; shorter conversations get synthesized turns "
        "(rlt 2,4,6,8; recorded: each conversation's own).")
    user_turn_tokens: int | None = Field(
        None, ge=0, description="Exact tokens of every user turn, cut or padded; 0 keeps each message's length "
        "(rlt 1024, recorded 0).")
    output_tokens: Tokens | None = Field(
        None, description="Fixed answer tokens (default: the recorded answer's length).")
    max_output_tokens: int | None = Field(
        None, ge=1, le=MAX_REQUEST_TOKENS, description="Cap on recorded answer lengths (rlt 1024, recorded none).")
    think_s: float = Field(0.0, ge=0, description="Seconds between a turn finishing and the next being sent.")
    rate: float = Field(12.0, description="Session starts per second (inf: all at time 0).")

    def chosen_preset(self) -> str:
        """The construction used: real data stays as recorded unless asked otherwise."""
        if self.preset is not None:
            return self.preset
        return "rlt" if self.synthetic else "recorded"

    @model_validator(mode="after")
    def _check_preset(self) -> ConversationConfig:
        """An explicit `recorded` promises untouched turns, so reshaping it fails."""
        if self.preset == "recorded" and self.synthetic:
            raise ValueError("--preset recorded keeps recorded conversations and --synthetic has none; "
                             "give --input FILE instead of --synthetic, or use --preset rlt")
        if self.preset == "recorded":
            for name in ("turns", "user_turn_tokens"):
                value = getattr(self, name)
                if value is not None:
                    shown = ",".join(map(str, value)) if isinstance(value, list) else value
                    raise ValueError(f"--preset recorded keeps each conversation as recorded, so {flag(name)} "
                                     f"{shown} conflicts with it; drop --preset to apply {flag(name)} to the "
                                     f"real data, or drop {flag(name)}")
        return self

    def settings(self) -> cv.ConversationSettings:
        base = cv.PRESETS[self.chosen_preset()]
        turns = self.turns if self.turns is not None else list(base.turns) if base.turns is not None else None
        return cv.ConversationSettings(
            self.dataset,
            self.conversations,
            turns,
            self.user_turn_tokens if self.user_turn_tokens is not None else base.user_turn_tokens,
            self.output_tokens,
            self.max_output_tokens if self.max_output_tokens is not None else base.max_output_tokens,
            self.think_s,
            self.arrival_spec(),
        )


@dataclass(frozen=True)
class StandInChoice:
    """The --synthetic stand-in's flavour, size and span with its defaults filled in."""

    flavour: str
    requests: int
    duration_s: float


class TraceConfig(GenerateConfig):
    """Import a public trace; prompts are synthesized from its hash ids with exact input lengths."""

    kind: ClassVar[str] = "trace"
    has_timestamps: ClassVar[bool] = True
    format: Annotated[im.Format, _one_of(im.FORMATS)] = Field(description="mooncake | bailian | azure.")
    input: Path | None = Field(None, description="The public trace file (JSONL / CSV).")
    synthetic: bool = Field(
        False, description="No file: synthesize a seeded stand-in in the public format and import it like a file.")
    flavour: str | None = Field(
        None, description="--synthetic: which trace to imitate; mooncake conversation|toolagent|synthetic, "
        "azure conversation|code (default: the first).")
    requests: int | None = Field(
        None, ge=1, description="--synthetic: requests (mooncake conversation 12031, toolagent 23608, synthetic "
        "3993; bailian 10000; azure conversation 19366, code 8819).")
    duration: float | None = Field(
        None, description="--synthetic: seconds spanned by the stand-in's timestamps (default 3600).")
    # A side output: naming it must not change the trace, so it is left out of the trace's params.
    write_source: Path | None = Field(
        None, exclude=True,
        description="--synthetic: also write the stand-in in the public format (JSONL; CSV for azure).")
    time_scale: float = Field(1.0, description="Multiply source times (0.5 = twice as fast).")
    max_requests: int | None = Field(None, ge=1, description="Keep only the first N requests.")
    sessions: bool = Field(True, description="Bailian: link chat_id/parent_chat_id turns into closed-loop sessions.")
    think_s: float | None = Field(
        None, ge=0, description="Fixed think time between session turns (default: the source gap between the turns).")
    arrival: Arrival = "trace"
    rate: float | None = Field(
        None, description="Requests per second when --arrival is not trace (default 1); with --synthetic and "
        "--arrival trace, the stand-in's own request rate instead of --duration.")
    prompt_text: bool = Field(False, description="Also store decoded prompt text (slow on large traces).")
    token_ids: bool = Field(
        False, description="Store every prompt's token ids (a one-hour Mooncake trace: 300 MB instead of 3 MB). "
        "Without it the trace keeps the source's hash ids and prompts are synthesized, the same tokens, when "
        "sent; a --tokenizer import always stores them.")

    @property
    def hash_only(self) -> bool:
        """Keep the source's ids instead of materialized prompts (send-time synthesis uses the built-in
        tokenizer, so an import with another tokenizer stores its tokens)."""
        return not (self.token_ids or self.prompt_text or self.tokenizer is not None)

    @property
    def stores_token_ids(self) -> bool:
        return self.token_ids or self.tokenizer is not None

    def arrival_spec(self) -> ArrivalSpec:
        rate = self.rate if self.rate is not None and (not self.synthetic or self.arrival != "trace") else 1.0
        return ArrivalSpec(self.arrival, rate, self.burstiness)

    @model_validator(mode="after")
    def _check_source(self) -> TraceConfig:
        if not (self.time_scale > 0) or self.time_scale == float("inf"):
            raise ValueError(f"--time-scale {self.time_scale}: must be a positive number")
        _no_input_and_synthetic(self.input, self.synthetic)
        if not self.synthetic:
            if self.input is None:
                raise ValueError(
                    "--input FILE is required (or --synthetic for an offline stand-in in the public format)")
            for name in ("flavour", "requests", "duration", "write_source"):
                if getattr(self, name) is not None:
                    raise ValueError(f"{flag(name)} only applies with --synthetic; drop it or use --synthetic "
                                     f"instead of --input")
        else:
            self.stand_in()
        return self

    def stand_in(self) -> StandInChoice | None:
        """The stand-in to synthesize with its defaults filled in; None for a real file."""
        if not self.synthetic:
            return None
        names = syn.flavours(self.format)
        if self.flavour is not None and len(names) == 1 and self.flavour.strip().lower() != names[0]:
            raise ValueError(f"--flavour {self.flavour}: the {self.format} stand-in has no flavours; drop --flavour")
        chosen = (_as_value_error(choice, "--flavour", self.flavour, names) if self.flavour is not None
                  else syn.DEFAULT_FLAVOUR[self.format])
        n = self.requests if self.requests is not None else syn.STAND_INS[(self.format, chosen)].requests
        duration = self.duration
        if duration is not None and not (0 < duration < float("inf")):
            raise ValueError(f"--duration {duration}: must be a positive number of seconds")
        if self.rate is not None and self.arrival == "trace":
            if duration is not None:
                raise ValueError("--rate and --duration both set the stand-in's timing; give only one")
            if not (0 < self.rate < float("inf")):
                raise ValueError(f"--rate {self.rate}: must be a positive finite number of requests per second")
            duration = n / self.rate
        return StandInChoice(
            chosen, n, duration if duration is not None else syn.STAND_INS[(self.format, chosen)].duration_s)

    def settings(self) -> im.ImportSettings:
        return im.ImportSettings(self.format, self.time_scale, self.arrival_spec(), self.think_s, self.sessions)


CONFIGS: dict[str, type[GenerateConfig]] = {
    model.kind: model for model in (GspConfig, DocqaConfig, ConversationConfig, TraceConfig)
}


def parse_config(kind: str, values: dict[str, Any], where: str | None = None) -> GenerateConfig:
    """Validate options for `kvbench generate KIND`; a bad value is one KvbenchError line.

    ``where`` (a spec file and table) prefixes the line and the key is named, for values read from a file;
    without it the line starts with the flag, as the command line's own errors do."""
    if kind not in CONFIGS:
        raise fail(f"{where + ': ' if where else ''}kind = {kind!r}: unknown source; "
                   f"choose one of {', '.join(CONFIGS)}")
    try:
        return CONFIGS[kind].model_validate(values)
    except ValidationError as exc:
        raise config_error(exc, where) from None


def config_error(exc: ValidationError, where: str | None = None) -> KvbenchError:
    """The first problem as one line, worded like the command line's own option errors."""
    err = exc.errors()[0]
    loc = [str(part) for part in err["loc"]]
    name = flag(loc[0]) if loc else ""
    value = err.get("input")
    ctx = err.get("ctx", {})
    if err["type"] in ("value_error", "assertion_error"):
        text = str(ctx.get("error", err["msg"])).removeprefix("Value error, ")
    elif err["type"] == "greater_than_equal":
        text = f"{name} {value}: must be >= {_number(ctx['ge'])}"
    elif err["type"] == "less_than_equal":
        text = f"{name} {value}: must be <= {_number(ctx['le']):,}"
    elif err["type"] == "extra_forbidden":
        text = f"unknown option {name}; drop it or see `kvbench generate ... --help`"
    elif err["type"] == "missing":
        text = f"{name} is required"
    else:
        text = f"{name} {value!r}: {err['msg'][0].lower()}{err['msg'][1:]}"
    if where is None:
        return fail(text)
    return fail(f"{where} {'.'.join(loc)}: {text}" if loc else f"{where}: {text}")


def _number(x: float) -> float | int:
    return int(x) if isinstance(x, float) and x.is_integer() else x


def trace_params(config: GenerateConfig) -> dict[str, Any]:
    """The options as a trace's metadata ``params``, spelled as on the command line (lists as comma-separated
    text, paths as strings, infinities as "inf"), so a trace keeps the metadata it always had."""
    return {k: _cli_spelling(v) for k, v in config.model_dump().items()}


def plain(value: Any) -> Any:
    """Strict-JSON values for the metadata: paths as strings, infinities as "inf"."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def _cli_spelling(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return plain(value)
