"""What a replay is asked to do: one typed schema (``ReplaySpec``) checked when it is built.

A pydantic dataclass, so callers keep using ``dataclasses.replace`` and every copy is checked again. Each
error is one line naming the ``kvbench replay`` flag the value came from, whether it was typed on the command
line or written in a spec file. What can only be judged against a trace or a target (eviction names, block
size multiples, policy parameters) is :mod:`kvbench.resolve`'s job.
"""

from __future__ import annotations

from dataclasses import asdict, field
from pathlib import Path
from typing import Any

from pydantic import ConfigDict, ValidationError, model_validator
from pydantic.dataclasses import dataclass

from kvbench.errors import fail

MAX_SIM_WORKERS = 1024

# the flag each field is set by, where its name is not simply --field-name
_FLAGS = {"timeout_s": "--timeout", "headers": "--header", "scrape_interval_s": "--scrape-interval",
          "output": "-o", "trace": "TRACE", "eviction_params": "--eviction-param", "router_params": "--router-param"}


def flag_of(name: str) -> str:
    return _FLAGS.get(name, "--" + name.replace("_", "-"))


@dataclass(config=ConfigDict(arbitrary_types_allowed=True))
class ReplaySpec:
    trace: Path
    output: Path
    target: str = "sim"  # "sim" | "http://a,http://b" | path/to/cluster.json
    eviction: str | None = None  # None: the target's own (simulator: lru; a real cluster: what it runs)
    router: str = "round_robin"
    seed: int = 0
    workers: int = 4  # simulator only; the HTTP path uses one worker per URL
    cache_tokens: int | None = None  # per-worker KV capacity in tokens; None = unbounded (simulator)
    block_size: int = 16
    router_params: dict[str, Any] = field(default_factory=dict)
    eviction_params: dict[str, Any] = field(default_factory=dict)
    profile: str = "default"  # simulator latency profile: built-in name or a TOML path
    max_batched_tokens: int = 8192
    max_num_seqs: int = 256
    time_scale: float = 1.0  # multiply trace arrival times (0.5 = twice as fast)
    max_requests: int | None = None
    # the first requests (whole sessions, see trace.warmup_mask) run before a barrier and are in no metric;
    # they count towards max_requests
    warmup: int = 0
    name: str | None = None
    # HTTP path
    history: str = "recorded"  # recorded | generated (closed-loop sessions)
    timeout_s: float = 600.0
    max_concurrency: int | None = None
    reset_cache: bool = True
    model: str | None = None
    api: str = "completions"  # completions | chat
    progress: bool = True
    chunked_prefill: bool = True  # simulator: split long prompts across steps (vLLM v1's default)
    goodput: dict[str, float] = field(default_factory=dict)  # SLOs in ms: ttft, tpot, e2el
    headers: dict[str, str] = field(default_factory=dict)  # HTTP: sent with every request
    api_key: str | None = None  # HTTP: sent as "Authorization: Bearer KEY"
    extra_body: dict[str, Any] = field(default_factory=dict)  # HTTP: merged into every request body
    scrape_interval_s: float | None = None  # write timeline.parquet: server (or simulated) state every N s

    @model_validator(mode="wrap")
    @classmethod
    def _one_line_per_type_error(cls, data: Any, handler: Any) -> Any:
        """A value of the wrong type names its flag, like every other replay error (no pydantic report)."""
        try:
            return handler(data)
        except ValidationError as exc:
            err = exc.errors()[0]
            name = str(err["loc"][0]) if err["loc"] else "spec"
            raise fail(f"{flag_of(name)} {err.get('input')!r}: {err['msg'].lower()}") from None

    @model_validator(mode="after")
    def _check_flags(self) -> "ReplaySpec":
        check_flags(self)
        return self

    @property
    def is_sim(self) -> bool:
        return self.target == "sim"

    def input_files(self) -> tuple[Path, ...]:
        """The files a replay reads (its trace, a profile given as a file): what a Ray node is sent."""
        profile = Path(self.profile)
        return (Path(self.trace), *((profile,) if profile.is_file() else ()))

    def to_config(self) -> dict[str, Any]:
        from kvbench.http.request_options import redacted

        d = asdict(self)
        d["trace"] = str(self.trace)
        d["output"] = str(self.output)
        d.pop("progress", None)
        d.update(redacted(self.headers, self.api_key))  # names only: secrets never reach run.json
        return d


def check_flags(spec: ReplaySpec) -> None:
    """Every value against its flag on its own (one line naming the flag); run when a spec is built."""
    checks = [
        (spec.block_size >= 1, f"--block-size {spec.block_size}: must be a positive number of tokens"),
        (spec.cache_tokens is None or spec.cache_tokens >= spec.block_size,
         f"--cache-tokens {spec.cache_tokens}: must hold at least one block ({spec.block_size} tokens); "
         f"omit it for an unbounded cache"),
        (spec.max_batched_tokens >= 1, f"--max-batched-tokens {spec.max_batched_tokens}: must be >= 1"),
        (spec.max_num_seqs >= 1, f"--max-num-seqs {spec.max_num_seqs}: must be >= 1"),
        (spec.time_scale > 0, f"--time-scale {spec.time_scale}: must be > 0 (0.5 replays twice as fast)"),
        (spec.max_requests is None or spec.max_requests >= 1, f"--max-requests {spec.max_requests}: must be >= 1"),
        (spec.warmup >= 0, f"--warmup {spec.warmup}: must be >= 0 (the number of warm-up requests)"),
        (spec.history in ("recorded", "generated"), f"--history {spec.history}: use 'recorded' or 'generated'"),
        (spec.api in ("completions", "chat"), f"--api {spec.api}: use 'completions' or 'chat'"),
        (spec.timeout_s > 0, f"--timeout {spec.timeout_s}: must be positive"),
        (spec.max_concurrency is None or spec.max_concurrency >= 1,
         f"--max-concurrency {spec.max_concurrency}: must be at least 1"),
    ]
    if spec.is_sim:
        checks.append((not spec.headers and not spec.extra_body,
                       "--header/--extra-body: the simulator sends no requests; use them with a real --target"))
        checks.append((spec.workers >= 1, f"--workers {spec.workers}: the simulator needs at least one worker"))
        checks.append((spec.workers <= MAX_SIM_WORKERS,
                       f"--workers {spec.workers}: the simulator takes at most {MAX_SIM_WORKERS} workers"))
    for ok, message in checks:
        if not ok:
            raise fail(message)
    from kvbench.goodput import check_goodput
    from kvbench.http.request_options import check_extra_body, check_headers
    from kvbench.routing import ROUTERS
    from kvbench.timeline import check_interval

    check_goodput(spec.goodput)
    check_interval(spec.scrape_interval_s)
    check_headers(spec.headers)
    check_extra_body(spec.extra_body)
    if spec.router not in ROUTERS:
        raise fail(f"--router {spec.router}: unknown router (known: {', '.join(ROUTERS)})")

