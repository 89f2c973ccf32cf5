"""Recursive least squares with exponential forgetting: an online linear regression whose old samples
weigh ``forgetting ** age``, so the estimate tracks a drifting worker."""

from __future__ import annotations

import numpy as np


class RecursiveLeastSquares:
    def __init__(self, dim: int, forgetting: float = 0.992, delta: float = 100.0, max_trace: float = 1e6):
        if not 0.0 < forgetting <= 1.0:
            raise ValueError("forgetting must be in (0, 1]")
        self.theta = np.zeros(dim)
        self.P = np.eye(dim) * delta
        self.lam = forgetting
        self.delta = delta
        self.max_trace = max_trace  # guards covariance wind-up when a feature stops varying
        self.updates = 0

    def predict(self, x: np.ndarray) -> float:
        return float(self.theta @ x)

    def update(self, x: np.ndarray, y: float) -> None:
        Px = self.P @ x
        gain = Px / (self.lam + float(x @ Px))
        self.theta = self.theta + gain * (y - float(self.theta @ x))
        self.P = (self.P - np.outer(gain, Px)) / self.lam
        if np.trace(self.P) > self.max_trace:
            self.P *= self.max_trace / np.trace(self.P)
        self.updates += 1
