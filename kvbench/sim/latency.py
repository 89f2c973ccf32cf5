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
reads. Coefficients live in a TOML profile (``kvbench/profiles/*.toml`` or a path) that names its source;
``kvbench calibrate`` fits them to measurements of a real server by least squares. See docs/simulator.md.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from kvbench.errors import fail
from kvbench.fsutil import read_toml

COEFFICIENTS = ("step_base_s", "prefill_token_s", "prefill_attn_s", "decode_seq_s", "decode_ctx_s")
DEFAULT_PROFILE = "llama31-8b-a100"


@dataclass(frozen=True)
class LatencyProfile:
    name: str
    source: str
    step_base_s: float
    prefill_token_s: float
    prefill_attn_s: float
    decode_seq_s: float
    decode_ctx_s: float
    notes: dict[str, str] = field(default_factory=dict)
    origin: str = ""  # built-in name or file the profile was read from

    def step_time(self, prefill_tokens: int, attn_pairs: float, decode_seqs: int, decode_ctx: int) -> float:
        return (self.step_base_s + self.prefill_token_s * prefill_tokens + self.prefill_attn_s * attn_pairs
                + self.decode_seq_s * decode_seqs + self.decode_ctx_s * decode_ctx)

    def to_config(self) -> dict[str, Any]:
        return {"name": self.name, "source": self.source, "origin": self.origin,
                "coefficients": {k: getattr(self, k) for k in COEFFICIENTS}, "notes": dict(self.notes)}


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
        raise fail(f"{origin}: no [coefficients] table; a profile needs {', '.join(COEFFICIENTS)}")
    values = {}
    for k in COEFFICIENTS:
        v = coef.get(k)
        if not isinstance(v, (int, float)) or isinstance(v, bool) or v < 0:
            raise fail(f"{origin}: coefficients.{k} must be a number >= 0 (got {v!r})")
        values[k] = float(v)
    notes = {str(k): str(v) for k, v in data.get("notes", {}).items()}
    return LatencyProfile(name=str(meta.get("name", Path(origin).stem)), source=str(meta.get("source", "")),
                          notes=notes, origin=origin, **values)


def load_profile(name_or_path: str) -> LatencyProfile:
    """A built-in profile by name, or a TOML file path."""
    p = Path(name_or_path)
    if name_or_path == "default":
        name_or_path = DEFAULT_PROFILE
    if p.suffix == ".toml" or p.exists():
        if not p.is_file():
            raise fail(f"--profile {p}: no such profile file; built-in profiles: {', '.join(builtin_profiles())}")
        return parse_profile(read_toml(p, f"--profile {p}"), str(p))
    if name_or_path not in builtin_profiles():
        raise fail(f"--profile {name_or_path}: unknown profile (built-in: {', '.join(builtin_profiles())}; "
                   f"or give a .toml path, e.g. from `kvbench calibrate`)")
    text = (resources.files("kvbench") / "profiles" / f"{name_or_path}.toml").read_text(encoding="utf-8")
    return parse_profile(tomllib.loads(text), name_or_path)


def profile_toml(name: str, source: str, coefficients: dict[str, float], notes: dict[str, str],
                 extra: dict[str, dict[str, Any]] | None = None) -> str:
    """Render a profile file."""
    import tomli_w

    doc: dict[str, Any] = {"profile": {"name": name, "source": source},
                           "coefficients": {k: float(coefficients[k]) for k in COEFFICIENTS},
                           "notes": dict(notes)}
    doc.update({table: dict(values) for table, values in (extra or {}).items()})
    return tomli_w.dumps(doc)
