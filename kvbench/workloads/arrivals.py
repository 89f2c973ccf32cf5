"""Arrival processes shared by every generator (open loop for single-shot requests, session starts
for conversations). Gamma gaps follow ``vllm bench serve``: shape ``b``, scale ``1/(rate*b)``, so the mean
rate is ``rate`` for every ``b`` and ``b = 1`` is Poisson; ``b < 1`` is burstier."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np

from kvbench.errors import fail

ArrivalKind = Literal["poisson", "gamma", "constant", "trace"]
ARRIVAL_KINDS: tuple[str, ...] = get_args(ArrivalKind)


@dataclass(frozen=True)
class ArrivalSpec:
    kind: str = "poisson"
    rate: float = 1.0  # requests (or session starts) per second; inf = all at time 0
    burstiness: float = 1.0  # gamma shape

    def check(self, has_timestamps: bool) -> "ArrivalSpec":
        if self.kind not in ARRIVAL_KINDS:
            raise fail(
                f"--arrival {self.kind}: unknown arrival process; choose one of {', '.join(ARRIVAL_KINDS)}"
            )
        if self.kind == "trace" and not has_timestamps:
            raise fail(
                "--arrival trace: this source has no timestamps (only `generate trace` has); "
                "use poisson, gamma or constant"
            )
        if self.kind != "trace" and (math.isnan(self.rate) or self.rate <= 0):
            raise fail(f"--rate {self.rate}: must be > 0 (use inf to release everything at time 0)")
        if math.isnan(self.burstiness) or self.burstiness <= 0 or math.isinf(self.burstiness):
            raise fail(f"--burstiness {self.burstiness}: the gamma shape must be a positive number")
        return self


def arrival_times(
    n: int,
    spec: ArrivalSpec,
    rng: np.random.Generator,
    source_times: np.ndarray | None = None,
    time_scale: float = 1.0,
) -> np.ndarray:
    """Non-decreasing arrival times in seconds, the first at 0."""
    if n == 0:
        return np.zeros(0)
    if spec.kind == "trace":
        assert source_times is not None
        t = np.asarray(source_times, dtype=np.float64)
        if (np.diff(t) < 0).any():
            raise ValueError("source times must be sorted (importers sort them stably first)")
        return (t - t.min()) * time_scale
    if math.isinf(spec.rate):
        return np.zeros(n)
    if spec.kind == "constant":
        gaps = np.full(n - 1, 1.0 / spec.rate)
    elif spec.kind == "poisson":
        gaps = rng.exponential(1.0 / spec.rate, size=n - 1)
    else:  # gamma
        b = spec.burstiness
        gaps = rng.gamma(shape=b, scale=1.0 / (spec.rate * b), size=n - 1)
    out = np.zeros(n)
    np.cumsum(gaps, out=out[1:])
    return out * time_scale
