"""The simulator's latency model: the time of one continuous-batching step, from a profile file.

One engine step computes some prompt chunks (prefill) and one token for each decoding sequence::

    step_s = step_base_s
           + prefill_token_s * P      P = prompt tokens computed in the step (cached tokens are free)
           + prefill_attn_s  * A      A = sum over chunks of c * (ctx + (c + 1) / 2): the causal
                                          (query, key) pairs of a chunk of c new tokens after ctx tokens
           + decode_seq_s    * D      D = sequences decoding one token in the step
           + decode_ctx_s    * C      C = sum of the context lengths of those sequences (KV reads)

``step_base_s`` is the per-step fixed cost (weights read once per step, scheduling); the prefill terms are
the linear layers and causal attention of new tokens; the decode terms are per-sequence compute and KV
reads. Outside the steps, ``request_s`` is paid once per request: the front end's time between the client
sending a request and the engine being able to schedule it (HTTP, tokenization, admission), plus any other
constant per-request cost on the way back. A request becomes schedulable ``request_s`` after it arrives;
with ``request_sigma`` > 0 that delay varies from request to request, log-normally around ``request_s``
(see :func:`frontend_delay`): a real front end shares its machine, and its TTFT tail is wider than any
constant reproduces.

There is no per-output-token front-end term: vLLM detokenizes and streams in the API server process while
the engine computes the next step, so that work overlaps the steps instead of adding to them, and any
per-token cost that does serialise with the steps is a per-sequence decode cost, which ``decode_seq_s``
already holds (calibration measures decode steps from end-to-end times, so it includes such costs there).

Coefficients live in a TOML profile (``kvbench/profiles/*.toml`` or a path) that names its source;
``kvbench calibrate`` fits them to measurements of a real server by least squares, and records in
``[fit]`` the prompt lengths it measured, so a replay can say when a trace goes beyond them (an
extrapolated profile can be several times off). See docs/simulator.md.
"""

from __future__ import annotations

import hashlib
import math
import statistics
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from kvbench.errors import fail
from kvbench.fsutil import read_toml, staged

STEP_COEFFICIENTS = ("step_base_s", "prefill_token_s", "prefill_attn_s", "decode_seq_s", "decode_ctx_s")
COEFFICIENTS = (*STEP_COEFFICIENTS, "request_s")  # the terms of time, fitted by least squares
# the spread of the front-end time (log-normal sigma around request_s), fitted on whole replays only
SPREAD = ("request_sigma",)
PROFILE_KEYS = (*COEFFICIENTS, *SPREAD)
# coefficients a profile may leave out: profiles written before the term existed load unchanged
OPTIONAL = {"request_s": 0.0, "request_sigma": 0.0}
DEFAULT_PROFILE = "llama31-8b-a100"
# [fit] keys that bound where a calibrated profile was measured
FIT_RANGE = ("prompt_tokens_min", "prompt_tokens_max", "max_concurrency")
# a trace warns when its prompts go this far beyond the fitted lengths: the 4x error that prompted the check
# came from using a profile fitted up to 1.5k tokens on 6k-token prompts. Below the range the model tends to
# its intercept (request_s + step_base_s), which the shortest measured prompts pin, so only far below warns.
ABOVE_FIT = 1.25
BELOW_FIT = 0.25


@dataclass(frozen=True)
class LatencyProfile:
    name: str
    source: str
    step_base_s: float
    prefill_token_s: float
    prefill_attn_s: float
    decode_seq_s: float
    decode_ctx_s: float
    request_s: float = 0.0
    request_sigma: float = 0.0
    notes: dict[str, str] = field(default_factory=dict)
    origin: str = ""  # built-in name or file the profile was read from
    fit_range: dict[str, int] = field(default_factory=dict)  # the [fit] bounds it has (FIT_RANGE keys)

    def step_time(self, prefill_tokens: int, attn_pairs: float, decode_seqs: int, decode_ctx: int) -> float:
        return (self.step_base_s + self.prefill_token_s * prefill_tokens + self.prefill_attn_s * attn_pairs
                + self.decode_seq_s * decode_seqs + self.decode_ctx_s * decode_ctx)

    def to_config(self) -> dict[str, Any]:
        return {"name": self.name, "source": self.source, "origin": self.origin,
                "coefficients": {k: getattr(self, k) for k in PROFILE_KEYS}, "notes": dict(self.notes),
                "fitted_range": {k: self.fit_range.get(k) for k in FIT_RANGE}}

    def range_warning(self, prompt_min: int, prompt_max: int, trace: str = "TRACE") -> str | None:
        """One line when a trace's prompt lengths go well beyond those the profile was fitted on, else None
        (also for profiles that record no range, such as the roofline estimates)."""
        lo, hi = self.fit_range.get("prompt_tokens_min"), self.fit_range.get("prompt_tokens_max")
        above = hi is not None and prompt_max > ABOVE_FIT * hi
        below = lo is not None and prompt_min < BELOW_FIT * lo
        if not (above or below):
            return None
        side = " and ".join(w for w, on in (("above", above), ("below", below)) if on)
        return (f"profile {self.name} was fitted on prompts of {'?' if lo is None else lo}.."
                f"{'?' if hi is None else hi} tokens, but the trace's prompts span {prompt_min}..{prompt_max} "
                f"tokens; simulated latencies {side} that range are extrapolated and can be several times "
                f"off (fit one on this trace: `kvbench calibrate --trace {trace}`)")


def attn_pairs(chunk: int, context_before: int) -> float:
    """Causal (query, key) pairs when ``chunk`` new tokens follow ``context_before`` tokens."""
    return chunk * (context_before + (chunk + 1) / 2.0)


def builtin_profiles() -> list[str]:
    folder = resources.files("kvbench") / "profiles"
    return sorted(p.name[: -len(".toml")] for p in folder.iterdir() if p.name.endswith(".toml"))


def parse_profile(data: dict[str, Any], origin: str) -> LatencyProfile:
    meta = data.get("profile", {})
    coef = data.get("coefficients")
    if not isinstance(coef, dict):
        raise fail(f"{origin}: no [coefficients] table; a profile needs {', '.join(STEP_COEFFICIENTS)}")
    unknown = sorted(set(coef) - set(PROFILE_KEYS))
    if unknown:  # a misspelt optional coefficient would otherwise be 0 without a word
        raise fail(f"{origin}: unknown coefficient {', '.join(unknown)} (known: {', '.join(PROFILE_KEYS)})")
    values = {}
    for k in PROFILE_KEYS:
        v = coef.get(k, OPTIONAL.get(k))
        if not isinstance(v, (int, float)) or isinstance(v, bool) or v < 0:
            raise fail(f"{origin}: coefficients.{k} must be a number >= 0 (got {v!r})")
        values[k] = float(v)
    notes = {str(k): str(v) for k, v in data.get("notes", {}).items()}
    fit_table = data.get("fit", {})
    fit_range = {}
    for k in FIT_RANGE:
        v = fit_table.get(k) if isinstance(fit_table, dict) else None
        if v is None:
            continue
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise fail(f"{origin}: fit.{k} must be a positive integer (got {v!r})")
        fit_range[k] = v
    if fit_range.get("prompt_tokens_min", 0) > fit_range.get("prompt_tokens_max", float("inf")):
        raise fail(f"{origin}: fit.prompt_tokens_min {fit_range['prompt_tokens_min']} is above "
                   f"fit.prompt_tokens_max {fit_range['prompt_tokens_max']}")
    return LatencyProfile(name=str(meta.get("name", Path(origin).stem)), source=str(meta.get("source", "")),
                          notes=notes, origin=origin, fit_range=fit_range, **values)


def load_profile(name_or_path: str) -> LatencyProfile:
    """A built-in profile by name, or a TOML file path."""
    p = Path(name_or_path)
    local = staged(p)  # a copy shipped to a Ray node; the profile keeps the path as given
    if name_or_path == "default":
        name_or_path = DEFAULT_PROFILE
    if p.suffix == ".toml" or local.exists():
        if not local.is_file():
            raise fail(f"--profile {p}: no such profile file; built-in profiles: {', '.join(builtin_profiles())}")
        return parse_profile(read_toml(local, f"--profile {p}"), str(p))
    if name_or_path not in builtin_profiles():
        raise fail(f"--profile {name_or_path}: unknown profile (built-in: {', '.join(builtin_profiles())}; "
                   f"or give a .toml path, e.g. from `kvbench calibrate`)")
    text = (resources.files("kvbench") / "profiles" / f"{name_or_path}.toml").read_text(encoding="utf-8")
    return parse_profile(tomllib.loads(text), name_or_path)


def profile_toml(name: str, source: str, coefficients: dict[str, float], notes: dict[str, str],
                 extra: dict[str, dict[str, Any]] | None = None) -> str:
    """Render a profile file."""
    import tomli_w

    given = {**OPTIONAL, **coefficients}
    # request_sigma only when there is a spread: profiles without one stay as they were written
    keys = PROFILE_KEYS if given["request_sigma"] > 0 else COEFFICIENTS
    doc: dict[str, Any] = {"profile": {"name": name, "source": source},
                           "coefficients": {k: float(given[k]) for k in keys},
                           "notes": dict(notes)}
    doc.update({table: dict(values) for table, values in (extra or {}).items()})
    return tomli_w.dumps(doc)


def warn_outside_fit(profile: LatencyProfile, trace, max_requests: int | None = None) -> str | None:
    """Print (stderr, one line, like the replay's other warnings) and return the profile's range warning
    for the prompts a replay will send: the first ``max_requests`` in replay order, or all."""
    import sys

    from kvbench.trace import replay_order

    inputs = trace.df["input_tokens"].to_numpy()
    if max_requests is not None:
        inputs = inputs[replay_order(trace.df)[:max_requests]]
    where = str(trace.path) if trace.path else "TRACE"
    warning = profile.range_warning(int(inputs.min()), int(inputs.max()), where) if len(inputs) else None
    if warning:
        print(f"kvbench: warning: {warning}", file=sys.stderr)
    return warning


def frontend_delay(profile: LatencyProfile, request_id: str) -> float:
    """The front-end time of one request: ``request_s`` times exp(``request_sigma`` * z).

    z is a standard normal drawn from the request's id, not from a generator: the same request meets the same
    delay under every router, policy and seed (common random numbers, so combinations differ only by what
    they decide), and the draw does not depend on the order events happen in."""
    if profile.request_sigma <= 0 or profile.request_s <= 0:
        return profile.request_s
    digest = hashlib.blake2b(request_id.encode(), digest_size=8, person=b"kvbench-frontend").digest()
    u = (int.from_bytes(digest, "little") + 0.5) / 2.0**64  # in (0, 1)
    return profile.request_s * math.exp(profile.request_sigma * _NORMAL.inv_cdf(u))


_NORMAL = statistics.NormalDist()
