"""``KEY=VALUE`` parameters of policies and routers: one parser, one type coercion.

Values stay strings when parsed; each consumer converts them to the type of the matching default (its
router's ``defaults`` or its eviction policy's ``__init__`` defaults), so the simulator and a real cluster
given the same flag run the same policy (``mark_inserts=False`` is False everywhere).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from kvbench.errors import fail

_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def parse_key_values(items: Iterable[str] | None, flag: str) -> dict[str, str]:
    """``["a=1", "b = x"]`` -> ``{"a": "1", "b": "x"}``; a malformed item is one line naming ``flag``."""
    out: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not _KEY.fullmatch(key.strip()):
            raise fail(f"{flag} {item!r}: expected KEY=VALUE (e.g. {flag} name=value)")
        out[key.strip()] = value.strip()
    return out


def coerce(value: Any, like: Any) -> Any:
    """``value`` converted to the type of ``like`` when it is a string; ValueError if it does not parse.

    Non-strings (already typed, e.g. from JSON) and defaults that are strings or None pass through.
    """
    if not isinstance(value, str) or like is None or isinstance(like, str):
        return value
    if isinstance(like, bool):
        low = value.strip().lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise ValueError(value)
    if isinstance(like, int):
        return int(value)
    if isinstance(like, float):
        return float(value)
    return value


def resolve_params(owner: str, defaults: Mapping[str, Any], given: Mapping[str, Any], flag: str,
                   fill_defaults: bool = True) -> dict[str, Any]:
    """``given`` checked against ``defaults`` and converted to their types (defaults filled in unless
    ``fill_defaults`` is False). ``owner`` names what takes them, e.g. "router 'lbgr'"."""
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        known = ", ".join(sorted(defaults)) or "none"
        raise fail(f"{flag} {unknown[0]}: {owner} has no such parameter (known: {known})")
    out = dict(defaults) if fill_defaults else {}
    for key, value in given.items():
        try:
            out[key] = coerce(value, defaults[key])
        except ValueError:
            kind = type(defaults[key]).__name__
            hint = " (true/false, 1/0, yes/no)" if kind == "bool" else ""
            article = "an" if kind == "int" else "a"
            raise fail(f"{flag} {key}={value}: {owner} expects {article} {kind} for '{key}'{hint}") from None
    return out


__all__ = ["coerce", "parse_key_values", "resolve_params"]
