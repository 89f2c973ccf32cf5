"""What a real target needs beyond the trace: headers (authentication, tenancy), an API key and extra body
fields merged into every request, as ``vllm bench serve`` takes them (``--header``, ``--api-key``,
``--extra-body``).

Secrets never reach run.json: :func:`redacted` keeps header names and says whether a key was set.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

from kvbench.errors import fail

# RFC 9110 token characters: what a header name may hold.
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
# Body fields kvbench sets itself because the measurement depends on them; overriding them needs intent.
MEASURED_FIELDS = ("model", "prompt", "messages", "stream", "max_tokens", "min_tokens", "ignore_eos")


def parse_headers(items: Iterable[str] | None, flag: str = "--header") -> dict[str, str]:
    """``["X-Tenant: a", "Authorization:Bearer k"]`` -> a dict; a malformed item is one line naming ``flag``."""
    out: dict[str, str] = {}
    for item in items or []:
        name, sep, value = item.partition(":")
        name = name.strip()
        if not sep or not _HEADER_NAME.fullmatch(name):
            raise fail(f"{flag} {item!r}: expected NAME:VALUE (e.g. {flag} 'X-Tenant: research')")
        out[name] = value.strip()
    check_headers(out, flag)
    return out


def parse_extra_body(text: str | None, flag: str = "--extra-body") -> dict[str, Any]:
    """A JSON object merged into every request body; anything else is one line naming ``flag``."""
    if text is None or not text.strip():
        return {}
    try:
        body = json.loads(text)
    except json.JSONDecodeError as exc:
        raise fail(f"{flag}: not valid JSON ({exc.msg} at character {exc.pos}); "
                   f"give an object, e.g. {flag} '{{\"top_p\": 0.9}}'") from None
    return check_extra_body(body, flag)


def check_extra_body(body: Any, flag: str = "--extra-body") -> dict[str, Any]:
    if not isinstance(body, dict):
        raise fail(f"{flag}: must be a JSON object, got {type(body).__name__}")
    touched = sorted(set(body) & set(MEASURED_FIELDS))
    if touched:
        raise fail(f"{flag}: sets {', '.join(touched)}, which kvbench sets from the trace and the target; "
                   f"use the trace, --model or --api instead")
    return body


def check_headers(headers: Mapping[str, Any], flag: str = "--header") -> None:
    for name, value in headers.items():
        if not isinstance(name, str) or not _HEADER_NAME.fullmatch(name):
            raise fail(f"{flag} {name!r}: not a valid header name")
        if not isinstance(value, str) or "\n" in value or "\r" in value:
            raise fail(f"{flag} {name}: the value must be one line of text")


def session_headers(headers: Mapping[str, str], api_key: str | None) -> dict[str, str]:
    """The headers every request (and every /metrics scrape and cache reset) carries."""
    out = dict(headers)
    if api_key and not any(k.lower() == "authorization" for k in out):
        out["Authorization"] = f"Bearer {api_key}"
    return out


def redacted(headers: Mapping[str, str], api_key: str | None) -> dict[str, Any]:
    """What run.json records: header names, never their values, and whether an API key was sent."""
    return {"headers": {k: "<redacted>" for k in headers}, "api_key": "<set>" if api_key else None}
