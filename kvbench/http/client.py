"""One streamed OpenAI-compatible request, timed token by token.

Times are ``time.monotonic()`` seconds; the caller turns them into run-relative times. Failures never
raise: they come back as an :class:`Outcome` with ``status="error"`` and a message naming the URL, plus
flags saying whether the worker itself looks gone (so the router can stop choosing it).
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

CONNECTION_ERRORS = (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError, aiohttp.ClientPayloadError,
                     aiohttp.ClientConnectionResetError)


@dataclass
class Prompt:
    """What to send: token ids when known (exact lengths), text as the fallback and for chat."""

    token_ids: list[int] | None = None
    text: str | None = None
    messages: list[dict[str, str]] | None = None  # chat with generated history
    recorded: bool = True  # exactly the trace's prompt (its hash ids apply)
    decoder: Callable[[list[int]], str] | None = field(default=None, repr=False, compare=False)

    def as_text(self) -> str:
        """The text, decoded from the ids on first use: most requests send ids and never need it."""
        if self.text is None and self.token_ids is not None and self.decoder is not None:
            self.text = self.decoder(self.token_ids)
        return self.text or ""


@dataclass
class Outcome:
    status: str = "ok"  # ok | error
    error: str | None = None
    sent: float | None = None
    first_token: float | None = None
    done: float | None = None
    chunk_times: list[float] = field(default_factory=list)  # arrival of each chunk carrying output
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cached_tokens: int | None = None
    pieces: list[str] = field(default_factory=list)  # generated text, chunk by chunk (joined once: see text)
    token_ids: list[int] | None = None  # generated ids when the server returns them
    used_token_ids: bool = False
    connect_failed: bool = False  # never reached the server: safe to send elsewhere
    worker_lost: bool = False  # the connection broke: the worker is probably down
    rejected_token_ids: bool = False  # the server refused a token-id prompt's format: retry as text

    @property
    def text(self) -> str:
        return "".join(self.pieces)


class StreamError(Exception):
    """The server's stream broke the SSE / OpenAI chunk format."""


@dataclass
class ClientSettings:
    model: str
    api: str = "completions"  # completions | chat
    timeout_s: float = 600.0
    return_token_ids: bool = False  # ask vLLM for generated ids (generated history)
    temperature: float = 0.0
    extra_body: dict[str, Any] = field(default_factory=dict)  # --extra-body, merged last


def build_body(settings: ClientSettings, prompt: Prompt, max_tokens: int, use_ids: bool) -> dict[str, Any]:
    n = max(1, int(max_tokens))
    body: dict[str, Any] = {
        "model": settings.model,
        "max_tokens": n,
        "min_tokens": n,
        "ignore_eos": True,
        "temperature": settings.temperature,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if settings.api == "chat":
        body["messages"] = prompt.messages or [{"role": "user", "content": prompt.as_text()}]
    elif use_ids:
        body["prompt"] = list(prompt.token_ids or [])
    else:
        body["prompt"] = prompt.as_text()
    if settings.return_token_ids:
        body["return_token_ids"] = True
    body.update(settings.extra_body)
    return body


def endpoint_path(api: str) -> str:
    return "/v1/chat/completions" if api == "chat" else "/v1/completions"


def _json_or_none(body: str) -> Any:
    try:
        return json.loads(body)
    except (json.JSONDecodeError, ValueError):
        return None


def _error_detail(body: str) -> str:
    """The human-readable part of an error body (OpenAI ``error.message``, FastAPI ``detail``, or the text)."""
    detail = body.strip()
    data = _json_or_none(body)
    err = data.get("error", data) if isinstance(data, dict) else data
    if isinstance(err, dict):
        detail = str(err.get("message") or err.get("detail") or err)
    elif isinstance(err, str):
        detail = err
    return detail


def _error_message(status: int, body: str) -> str:
    return f"HTTP {status}: {' '.join(_error_detail(body).split())[:300]}"


_FORMAT_WORDS = re.compile(r"\b(type|types|list|lists|array|string|str|token|tokens|integer|integers|int)\b")
_LENGTH_WORDS = re.compile(r"too long|length|maximum|context|exceed|max_tokens|max_model_len")


def rejects_prompt_format(status: int, body: str) -> bool:
    """Whether a 400/422 says the *form* of the prompt (token ids rather than a string) is not accepted.

    Conservative on purpose: only then is re-sending as text the same request. Anything else (an unknown
    field, a prompt too long for the model, a bad sampling parameter) is the request's own error.
    """
    if status not in (400, 422):
        return False
    data = _json_or_none(body)
    detail = data.get("detail") if isinstance(data, dict) else None
    if isinstance(detail, list):  # FastAPI / pydantic validation errors name the offending field in "loc"
        return any(isinstance(e, dict) and "prompt" in [str(x) for x in e.get("loc") or []] for e in detail)
    message = _error_detail(body).lower()
    if "out of vocabulary" in message:  # the ids are not this model's: its own tokenizer must read text
        return True
    if "prompt" not in message or _LENGTH_WORDS.search(message):
        return False
    return bool(_FORMAT_WORDS.search(message))


def _apply_chunk(out: Outcome, data: dict[str, Any], now: float) -> None:
    if "error" in data and not data.get("choices"):
        err = data["error"]
        msg = err.get("message") if isinstance(err, dict) else err
        raise StreamError(f"server reported an error mid-stream: {msg}")
    choices = data.get("choices")
    if choices is not None and not isinstance(choices, list):
        raise StreamError("chunk has a 'choices' field that is not a list")
    for ch in choices or []:
        if not isinstance(ch, dict):
            raise StreamError("chunk choice is not an object")
        piece = ch.get("text")
        delta = ch.get("delta")
        if piece is None and isinstance(delta, dict):
            piece = delta.get("content") or ""
            if not piece and "role" in delta:
                continue  # chat servers announce the role before any token is generated
        ids = ch.get("token_ids")
        if piece or ids or ch.get("finish_reason") is None or out.first_token is None:
            # every decode step produces a chunk (its text may be empty for partial characters); only a
            # closing chunk that carries nothing but the finish reason is not a token
            if out.first_token is None:
                out.first_token = now
            out.chunk_times.append(now)
        if piece:
            out.pieces.append(piece)
        if isinstance(ids, list):
            if out.token_ids is None:
                out.token_ids = []
            out.token_ids.extend(int(t) for t in ids)
    usage = data.get("usage")
    if isinstance(usage, dict):
        out.prompt_tokens = usage.get("prompt_tokens", out.prompt_tokens)
        out.completion_tokens = usage.get("completion_tokens", out.completion_tokens)
        details = usage.get("prompt_tokens_details")
        if isinstance(details, dict) and details.get("cached_tokens") is not None:
            out.cached_tokens = int(details["cached_tokens"])


async def read_sse(resp: aiohttp.ClientResponse, out: Outcome,
                   on_first_token: Callable[[], None] | None = None) -> None:
    """Consume an SSE body of OpenAI chunks into ``out``; raise StreamError on a malformed stream.

    ``on_first_token`` (a test hook) is called once, right after the first output chunk is recorded.
    """
    done = False
    events = 0
    async for raw in resp.content:
        now = time.monotonic()
        line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
        if not line or line.startswith(":"):
            continue
        field_name, _, value = line.partition(":")
        if field_name != "data":
            if field_name in ("event", "id", "retry"):
                continue
            raise StreamError(f"line is not an SSE field: {line[:80]!r}")
        value = value.removeprefix(" ")
        if value.strip() == "[DONE]":
            done = True
            break
        try:
            data = json.loads(value)
        except json.JSONDecodeError:
            raise StreamError(f"data line is not JSON: {value[:80]!r}") from None
        if not isinstance(data, dict):
            raise StreamError(f"data line is not a JSON object: {value[:80]!r}")
        events += 1
        waiting = out.first_token is None
        _apply_chunk(out, data, now)
        if waiting and on_first_token is not None and out.first_token is not None:
            on_first_token()
    if not done:
        raise StreamError(f"stream ended before 'data: [DONE]' after {events} chunk(s)")
    if out.first_token is None:
        raise StreamError("stream finished without any output chunk")


async def send(session: aiohttp.ClientSession, url: str, settings: ClientSettings, prompt: Prompt,
               max_tokens: int, use_ids: bool, on_first_token: Callable[[], None] | None = None) -> Outcome:
    """One request; ``on_first_token`` is a test hook (see :func:`read_sse`), for example to kill a worker
    while this request is provably in flight."""
    use_ids = use_ids and settings.api != "chat" and prompt.token_ids is not None
    out = Outcome(used_token_ids=use_ids)
    body = build_body(settings, prompt, max_tokens, use_ids)
    target = url + endpoint_path(settings.api)
    deadline = asyncio.timeout(settings.timeout_s)
    out.sent = time.monotonic()
    try:
        async with deadline, session.post(target, json=body) as resp:
            if resp.status != 200:
                text = await resp.text()
                out.status, out.error = "error", f"{target}: " + _error_message(resp.status, text)
                out.rejected_token_ids = use_ids and rejects_prompt_format(resp.status, text)
                out.done = time.monotonic()
                return out
            ctype = resp.headers.get("Content-Type", "")
            if "text/event-stream" not in ctype and "json" in ctype:
                # a server that ignores stream=true: one JSON body, no token timing
                data = await resp.json(content_type=None)
                now = time.monotonic()
                if not isinstance(data, dict):
                    raise StreamError("response body is not a JSON object")
                out.first_token = now
                _apply_chunk(out, data, now)
            else:
                await read_sse(resp, out, on_first_token)
        out.done = time.monotonic()
    except StreamError as exc:
        out.status, out.error = "error", f"{target}: malformed stream: {exc}"
    except aiohttp.ClientConnectorError as exc:
        out.status, out.error = "error", f"{target}: cannot connect ({exc.os_error or exc})"
        out.connect_failed = out.worker_lost = True
    except CONNECTION_ERRORS as exc:
        out.status, out.error = "error", f"{target}: connection lost ({type(exc).__name__}: {exc})"
        out.worker_lost = True
    except TimeoutError as exc:
        if deadline.expired():
            out.status, out.error = "error", f"{target}: timed out after {settings.timeout_s:g}s"
        else:  # not our limit: a socket or session timeout of the HTTP client
            why = f"{type(exc).__name__}: {exc}".rstrip(": ")
            out.status, out.error = "error", f"{target}: HTTP client timeout before {settings.timeout_s:g}s ({why})"
    except aiohttp.ClientError as exc:
        out.status, out.error = "error", f"{target}: {type(exc).__name__}: {exc}"
    if out.status == "error" and out.done is None:
        out.done = time.monotonic()
    return out
