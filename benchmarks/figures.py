"""The figures a benchmark script hands to run_all.py (``--json PATH``), next to its human-readable output.

Every target in kvbench's issues is an upper bound ("under 10 s", "within 3x"), so a figure carries at most
one ``target`` that its value should stay below; figures without one are reported for context only.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from kvbench.fsutil import write_json_atomic


@dataclass
class Figure:
    name: str
    value: float
    unit: str
    target: float | None = None  # the value should stay below this, at full (non --quick) sizes
    note: str = ""


@dataclass
class FigureSet:
    benchmark: str
    title: str
    quick: bool
    params: dict = field(default_factory=dict)
    figures: list[Figure] = field(default_factory=list)

    def add(self, name: str, value: float, unit: str, target: float | None = None, note: str = "") -> None:
        self.figures.append(Figure(name, float(value), unit, target, note))

    def write(self, path: Path | None) -> None:
        """Write the figures as JSON (NaN becomes null, which strict JSON readers accept); no-op without a path."""
        if path is None:
            return
        data = asdict(self)
        for fig in data["figures"]:
            if not math.isfinite(fig["value"]):
                fig["value"] = None
        write_json_atomic(path, data)
