"""Fit a latency profile to a real OpenAI-compatible server (``kvbench calibrate``).

Every measurement is one engine step shape with a measured duration, i.e. one row of the linear system
``seconds = X @ (step_base_s, prefill_token_s, prefill_attn_s, decode_seq_s, decode_ctx_s, request_s)``
of :mod:`kvbench.sim.latency`:

- cold prefill: a fresh random prompt of L tokens, one output token; TTFT is the front end's request_s
  plus one step with P = L;
- warm prefill: a prompt whose first part was sent just before; the server's reported ``cached_tokens``
  (or the known prefix length) gives P = L - cached and the attention pairs after the cached context; its
  TTFT includes request_s too;
- decode: k concurrent fresh prompts of L tokens answered with N tokens, and k more with one token; the
  difference of their (median) end-to-end times over N - 1 is one step with D = k sequences and
  C = k * (L + N / 2) context tokens. End-to-end times, not gaps between streamed tokens: a busy API server
  (vLLM on CPU) delivers tokens in bursts, often the whole answer at once, while the last token still
  arrives only after every step. request_s cancels in the difference.

request_s and step_base_s are both 1 in every prefill row, so prefills alone cannot tell them apart: the
decode rows, one step each and no request, carry step_base_s alone (their intercept over at least two
concurrency levels and two prompt lengths), and the prefill rows give the sum. ``fit`` reports the rank
of the system, so a plan that cannot separate the terms is said, not silently split.

``--trace`` takes the prompt lengths from the trace to be simulated (``pick_prompt_lengths``), capped at
what the server accepts, so the profile is not extrapolated far beyond what it measured.

One unrecorded request per server comes first: vLLM's first request after start-up is several times slower.

The coefficients are the non-negative least-squares solution with rows weighted by 1/duration (relative
error, so short decode steps count as much as long prefills); repeated measurements of one shape enter as
their median. Prompts are token ids (random, seeded) so
their lengths are exact.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.optimize import nnls

from kvbench.errors import fail
from kvbench.sim.latency import COEFFICIENTS, attn_pairs


@dataclass
class CalibrationPlan:
    prompt_lengths: list[int] = field(default_factory=lambda: [128, 256, 512, 1024, 2048])
    suffix_tokens: int = 64
    output_tokens: int = 16
    concurrency: list[int] = field(default_factory=lambda: [1, 2, 4, 8])
    repeats: int = 2
    token_range: tuple[int, int] = (10, 1000)
    seed: int = 0
    timeout_s: float = 300.0


@dataclass
class Sample:
    kind: str  # cold | warm | decode
    features: list[float]  # one row of X, in COEFFICIENTS order
    seconds: float
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class Stream:
    ttft: float
    gaps: list[float]
    cached: int | None
    last: float  # arrival of the last token, seconds after sending


async def _complete(session, url: str, model: str, prompt: list[int], max_tokens: int, timeout: float) -> Stream:
    """One streamed request through kvbench's HTTP client (the one the replay uses); failure is one line."""
    from kvbench.http.client import ClientSettings, Prompt, send

    settings = ClientSettings(model=model, api="completions", timeout_s=timeout)
    out = await send(session, url, settings, Prompt(token_ids=list(prompt)), max_tokens, use_ids=True)
    if out.status != "ok":
        hint = "; is the server running?" if out.connect_failed else ""
        raise fail(f"--target {url}: {out.error}{hint}")
    if not out.chunk_times or out.sent is None:
        raise fail(f"--target {url}: the stream returned no tokens; does the server support streaming completions?")
    times = [t - out.sent for t in out.chunk_times]
    return Stream(ttft=times[0], gaps=np.diff(times).tolist(), cached=out.cached_tokens, last=times[-1])


async def _batch_end(session, url: str, model: str, prompts: list[list[int]], max_tokens: int,
                     timeout: float) -> float:
    """Median time until the last token of concurrent requests sent together."""
    streams = await asyncio.gather(*(_complete(session, url, model, p, max_tokens, timeout) for p in prompts))
    return float(np.median([s.last for s in streams]))


async def _model(session, url: str, name: str | None = None) -> tuple[str, int | None]:
    """The served model's name (``name``, else the first listed) and the longest sequence it accepts
    (vLLM lists ``max_model_len``; None when the server does not say)."""
    import aiohttp

    try:
        async with session.get(f"{url}/v1/models", timeout=aiohttp.ClientTimeout(total=30)) as r:
            data = await r.json(content_type=None)
            listed = data["data"]
            entry = next((m for m in listed if m.get("id") == name), None if name else listed[0])
            if entry is None:  # --model names one the server does not list: its limit is unknown
                return str(name), None
            limit = entry.get("max_model_len")
            return name or str(entry["id"]), limit if isinstance(limit, int) and limit > 0 else None
    except aiohttp.ClientConnectorError as exc:
        raise fail(f"--target {url}: cannot connect ({exc.os_error or exc}); is the server running?") from None
    except (TimeoutError, aiohttp.ClientError, KeyError, IndexError, ValueError, TypeError, AttributeError):
        if name:  # named by --model: a server that lists nothing still serves it, its limit unknown
            return name, None
        raise fail(f"--target {url}: no model listed at /v1/models; pass --model NAME") from None


async def measure(urls: list[str], plan: CalibrationPlan, model: str | None = None, tick=None) -> list[Sample]:
    """Run the measurement plan (see module docstring) spread round-robin over ``urls``."""
    import aiohttp

    rng = np.random.default_rng(plan.seed)
    lo, hi = plan.token_range
    samples: list[Sample] = []
    tick = tick or (lambda: None)

    def prompt(n: int) -> list[int]:
        return rng.integers(lo, hi, n).tolist()

    async with aiohttp.ClientSession() as session:
        name = model or (await _model(session, urls[0]))[0]
        for u in urls:  # warm-up, not recorded
            await _complete(session, u, name, prompt(plan.prompt_lengths[0]), 2, plan.timeout_s)
        k = 0

        def url() -> str:
            nonlocal k
            k += 1
            return urls[(k - 1) % len(urls)]

        for _ in range(plan.repeats):
            for L in plan.prompt_lengths:
                s = await _complete(session, url(), name, prompt(L), 1, plan.timeout_s)
                hit = s.cached or 0  # non-zero only if an earlier run with this seed left the prompt cached
                samples.append(Sample("cold", [1.0, L - hit, attn_pairs(L - hit, hit), 0.0, 0.0, 1.0], s.ttft,
                                      {"prompt": L, "cached": hit}))
                tick()
                u = url()
                base = prompt(L)
                await _complete(session, u, name, base, 1, plan.timeout_s)
                s = await _complete(session, u, name, base + prompt(plan.suffix_tokens), 1, plan.timeout_s)
                total = L + plan.suffix_tokens
                cached = s.cached if s.cached is not None else L
                new = total - cached
                samples.append(Sample("warm", [1.0, new, attn_pairs(new, cached), 0.0, 0.0, 1.0], s.ttft,
                                      {"prompt": total, "cached": cached}))
                tick()
            for c in plan.concurrency:
                for L in (plan.prompt_lengths[0], plan.prompt_lengths[-1]):
                    u = url()
                    one = await _batch_end(session, u, name, [prompt(L) for _ in range(c)], 1, plan.timeout_s)
                    many = await _batch_end(session, u, name, [prompt(L) for _ in range(c)], plan.output_tokens,
                                            plan.timeout_s)
                    step_s = (many - one) / (plan.output_tokens - 1)
                    if step_s > 0:  # noise can swamp a very fast step; such a pair carries no information
                        ctx = c * (L + plan.output_tokens / 2)
                        samples.append(Sample("decode", [1.0, 0.0, 0.0, float(c), ctx, 0.0], step_s,
                                              {"prompt": L, "concurrency": c}))
                    tick()
    return samples


async def max_model_len(urls: list[str], model: str | None) -> int | None:
    """The shortest ``max_model_len`` the servers list (None when none says): a longer prompt is refused."""
    import aiohttp

    async with aiohttp.ClientSession() as session:
        limits = [(await _model(session, u, model))[1] for u in urls]
    known = [v for v in limits if v is not None]
    return min(known) if known else None


TRACE_QUANTILES = (0.0, 0.25, 0.5, 0.75, 1.0)
MIN_LENGTHS = 3  # cold and warm prefills at three lengths pin the three prefill terms


def pick_prompt_lengths(input_tokens, block_size: int, limit: int | None = None) -> list[int]:
    """Prompt lengths spanning a trace's ``input_tokens``: its min, quartiles and max on whole blocks (the
    min rounded down, the max up, so the fitted range covers the trace), none above ``limit`` (the longest
    prompt the server takes in every measurement). A narrow trace gets shorter lengths added down to
    ``MIN_LENGTHS``: the fit needs that many to tell the prefill terms apart."""
    x = np.asarray(input_tokens, dtype=float)
    if x.size == 0:
        raise fail("--trace: the trace has no requests to take prompt lengths from")
    q = np.quantile(x, TRACE_QUANTILES).tolist()
    picked = [round(v / block_size) * block_size for v in q]
    picked[0] = int(q[0] // block_size) * block_size
    picked[-1] = -(-int(q[-1]) // block_size) * block_size
    if limit is not None:
        top = limit // block_size * block_size
        if top < block_size:
            raise fail(f"the servers' max_model_len leaves room for prompts of {limit} tokens next to the "
                       f"measurements' new and output tokens: less than one {block_size}-token block")
        picked = [min(v, top) for v in picked]
    lengths = sorted({max(block_size, v) for v in picked})
    while len(lengths) < MIN_LENGTHS and lengths[0] > block_size:
        lengths.insert(0, max(block_size, lengths[0] // 2 // block_size * block_size))
    return lengths


def steps_in_plan(plan: CalibrationPlan) -> int:
    return plan.repeats * (2 * len(plan.prompt_lengths) + 2 * len(plan.concurrency))


def fit(samples: list[Sample]) -> tuple[dict[str, float], dict[str, Any]]:
    """Non-negative least squares on relative error; returns coefficients and fit statistics."""
    if len(samples) < len(COEFFICIENTS):
        raise fail(f"calibration needs at least {len(COEFFICIENTS)} measurements, got {len(samples)}")
    # repeats of one shape count once, at their median: noise on a shared machine comes in bursts
    repeats: dict[tuple[str, tuple[float, ...]], list[float]] = {}
    for s in samples:
        repeats.setdefault((s.kind, tuple(s.features)), []).append(s.seconds)
    X = np.array([f for _, f in repeats], dtype=float)
    y = np.array([float(np.median(v)) for v in repeats.values()], dtype=float)
    w = 1.0 / np.maximum(y, 1e-6)
    Xw, yw = X * w[:, None], y * w
    scale = np.maximum(np.abs(Xw).max(axis=0), 1e-30)  # columns span 1 .. 1e7: normalise for conditioning
    coef = nnls(Xw / scale, yw)[0] / scale
    rank = int(np.linalg.matrix_rank(Xw / scale))
    pred = X @ coef
    resid = (pred - y) / y
    ss_res = float(((pred - y) ** 2).sum())
    ss_tot = float(((y - y.mean()) ** 2).sum()) or 1.0
    # below len(COEFFICIENTS) some terms trade off freely (e.g. request_s against step_base_s without decode
    # rows at two concurrency levels): nnls still answers, but the split between them means nothing
    stats = {"samples": len(samples), "rank": rank, "r2": 1.0 - ss_res / ss_tot,
             "median_abs_rel_error": float(np.median(np.abs(resid))),
             "max_abs_rel_error": float(np.max(np.abs(resid))),
             "by_kind": {k: sum(1 for s in samples if s.kind == k) for k in ("cold", "warm", "decode")}}
    return dict(zip(COEFFICIENTS, coef.tolist())), stats
