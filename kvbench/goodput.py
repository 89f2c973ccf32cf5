"""Goodput: requests per second that met every service-level objective, as ``vllm bench serve --goodput``.

SLOs are in milliseconds on ``ttft``, ``tpot`` and ``e2el``. A request counts when it completed and met all
of them; a single-token answer has no TPOT and meets that objective (vLLM counts its TPOT as 0). Failed
requests never count: a run that drops requests cannot buy goodput with them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import numpy as np
import pandas as pd

from kvbench.errors import fail

SLO_COLUMNS = {"ttft": "ttft_s", "tpot": "tpot_s", "e2el": "e2e_s"}


def parse_goodput(text: str | None, flag: str = "--goodput") -> dict[str, float]:
    """``"ttft:500,tpot:50"`` (or space separated, as vLLM takes it) -> ``{"ttft": 500.0, "tpot": 50.0}``."""
    if text is None or not text.strip():
        return {}
    out: dict[str, float] = {}
    for item in re.split(r"[,\s]+", text.strip()):
        name, sep, value = item.partition(":")
        if not sep or name not in SLO_COLUMNS:
            raise fail(f"{flag} {item!r}: expected NAME:MILLISECONDS with NAME one of "
                       f"{', '.join(SLO_COLUMNS)} (e.g. {flag} ttft:500,tpot:50)")
        try:
            out[name] = float(value)
        except ValueError:
            raise fail(f"{flag} {item!r}: {value!r} is not a number of milliseconds") from None
    return check_goodput(out, flag)


def check_goodput(slo: Mapping[str, object], flag: str = "--goodput") -> dict[str, float]:
    out: dict[str, float] = {}
    for name, ms in slo.items():
        if name not in SLO_COLUMNS:
            raise fail(f"{flag} {name}: unknown objective (known: {', '.join(SLO_COLUMNS)})")
        if isinstance(ms, bool) or not isinstance(ms, (int, float)) or not np.isfinite(ms) or ms <= 0:
            raise fail(f"{flag} {name}:{ms}: the objective must be a positive number of milliseconds")
        out[name] = float(ms)
    return out


def goodput_summary(df: pd.DataFrame, slo: Mapping[str, float], duration_s: float) -> dict[str, object]:
    """``request_goodput`` (good requests per second) and each objective's attainment.

    Attainment is over the requests that were sent and ended (ok or error), so failures lower it; cancelled
    requests (an interrupted run) are left out, as in every other metric.
    """
    ended = df[df["status"].isin(["ok", "error"])]
    ok = ended["status"].to_numpy() == "ok"
    good = ok.copy()
    attainment: dict[str, float | None] = {}
    for name, limit in slo.items():
        seconds = ended[SLO_COLUMNS[name]].to_numpy(dtype=float)
        if name == "tpot":
            seconds = np.where(np.isnan(seconds), 0.0, seconds)
        met = ok & (seconds * 1000.0 <= limit)
        attainment[name] = float(met.mean()) if len(met) else None
        good &= met
    n_good = int(good.sum())
    rate = n_good / duration_s if n_good and np.isfinite(duration_s) and duration_s > 0 else 0.0
    return {"goodput_slo_ms": dict(slo), "good_requests": n_good, "request_goodput": rate,
            "slo_attainment": attainment,
            "goodput_attainment": float(good.mean()) if len(good) else None}
