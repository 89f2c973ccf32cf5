"""Cache hygiene: start every run from an empty prefix cache, check that it really is empty, say what was done.

vLLM exposes ``POST /reset_prefix_cache`` only with ``VLLM_SERVER_DEV_MODE=1`` (else 404) and answers 200
with ``{"success": false}`` while blocks are still held. A reset is verified with a probe: a prompt is
cached, the cache reset, the prompt sent again; zero cached tokens (from usage, or from the /metrics hit
counter when usage lacks them) proves the reset worked. A last reset removes the probe itself.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import aiohttp

from kvbench.http import metrics
from kvbench.http.client import ClientSettings, Prompt, send
from kvbench.tokenizer import WORD_COUNT, BuiltinTokenizer

RESET_PATH = "/reset_prefix_cache"  # vLLM (with VLLM_SERVER_DEV_MODE=1)
FLUSH_PATH = "/flush_cache"  # SGLang


@dataclass
class HygieneRecord:
    url: str
    action: str  # reset | skipped | unsupported | refused | failed
    detail: str = ""
    verified: bool | None = None
    probe_cached_tokens: int | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def probe_prompt(block_size: int) -> Prompt:
    """Two full blocks and one token: long enough that a warm cache must report a hit."""
    n = 2 * block_size + 1
    ids = [(7919 * i + 104_729) % WORD_COUNT for i in range(n)]
    return Prompt(token_ids=ids, text=BuiltinTokenizer().decode(ids))


async def post_reset(session: aiohttp.ClientSession, url: str, attempts: int = 5) -> tuple[str, str]:
    """(action, detail) after retrying a refused reset a few times (blocks may still be held).

    vLLM resets with /reset_prefix_cache; a server without it (404/405) gets SGLang's /flush_cache."""
    action, detail = await _post_until_reset(session, url, RESET_PATH, attempts, _vllm_answer)
    if action != "unsupported":
        return action, detail
    sgl_action, sgl_detail = await _post_until_reset(session, url, FLUSH_PATH, attempts, _sglang_answer)
    if sgl_action == "unsupported":
        return action, (f"{detail}; vLLM serves it only with VLLM_SERVER_DEV_MODE=1, and SGLang's POST "
                        f"{FLUSH_PATH} is not there either")
    return sgl_action, sgl_detail


def _vllm_answer(status: int, text: str) -> str:
    """vLLM: 200 with success=false while blocks are still in use (retry); any other error is final."""
    if status != 200:
        return "failed"
    try:
        body = json.loads(text) if text.strip() else {}
    except ValueError:
        body = {}
    return "reset" if not isinstance(body, dict) or body.get("success", True) else "retry"


def _sglang_answer(status: int, text: str) -> str:
    """SGLang: 200 once its radix cache is flushed, 400 while requests still run (retry)."""
    return "reset" if status == 200 else "retry"


async def _post_until_reset(session: aiohttp.ClientSession, url: str, path: str, attempts: int,
                            judge: Callable[[int, str], str]) -> tuple[str, str]:
    detail = ""
    for i in range(attempts):
        try:
            async with session.post(url + path, timeout=aiohttp.ClientTimeout(total=30)) as resp:
                text = await resp.text()
        except (aiohttp.ClientError, TimeoutError) as exc:
            return "failed", f"POST {path} failed: {type(exc).__name__}: {exc}"
        if resp.status in (404, 405):
            return "unsupported", f"POST {path} answered HTTP {resp.status}"
        verdict = judge(resp.status, text)
        if verdict == "reset":
            return "reset", f"POST {path}: HTTP {resp.status} {text.strip()[:80]}"
        if verdict == "failed":
            return "failed", f"POST {path} answered HTTP {resp.status}: {text[:200]}"
        detail = f"POST {path} refused {i + 1} time(s) (requests or blocks still in use): {text.strip()[:120]}"
        await asyncio.sleep(0.5)
    return "refused", detail


async def _probe_cached(session, url: str, settings: ClientSettings, prompt: Prompt) -> tuple[int | None, str]:
    before = await metrics.scrape(session, url)
    out = await send(session, url, settings, prompt, 1, use_ids=True)
    if out.status != "ok" and out.rejected_token_ids:
        out = await send(session, url, settings, prompt, 1, use_ids=False)
    if out.status != "ok":
        return None, f"probe failed: {out.error}"
    if out.cached_tokens is not None:
        return out.cached_tokens, "usage.prompt_tokens_details.cached_tokens"
    after = await metrics.scrape(session, url)
    hits = metrics.delta(before, after, metrics.PREFIX_HITS)
    if hits is None:
        return None, "server reports neither cached_tokens nor prefix-cache counters"
    return int(hits), "/metrics prefix_cache_hits delta"


async def reset_and_verify(session: aiohttp.ClientSession, url: str, settings: ClientSettings,
                           block_size: int) -> HygieneRecord:
    action, detail = await post_reset(session, url)
    if action != "reset":
        return HygieneRecord(url=url, action=action, detail=detail)
    probe_settings = ClientSettings(model=settings.model, api="completions", timeout_s=min(settings.timeout_s, 120))
    prompt = probe_prompt(block_size)
    warm, how = await _probe_cached(session, url, probe_settings, prompt)  # caches the probe
    if warm is None and how.startswith("probe failed"):
        return HygieneRecord(url=url, action="reset", detail=f"{detail}; not verified: {how}")
    action, d2 = await post_reset(session, url)
    if action != "reset":
        return HygieneRecord(url=url, action=action, detail=f"second reset: {d2}")
    cold, how = await _probe_cached(session, url, probe_settings, prompt)
    verified = None if cold is None else cold == 0
    action, d3 = await post_reset(session, url)  # drop the probe itself
    rec = HygieneRecord(url=url, action=action, verified=verified, probe_cached_tokens=cold,
                        detail=f"{detail}; verified by re-sending a cached probe ({how})")
    if action != "reset":
        rec.detail += f"; final reset: {d3}"
    return rec
