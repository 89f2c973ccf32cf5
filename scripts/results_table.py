"""Markdown tables of the committed reproduction summaries (results/<spec>.csv), for results/README.md.

Each cell is mean ± the 95% confidence half-width over seeds (summary.csv's ``_ci95``); summaries written
before kvbench recorded intervals give ± the standard deviation instead, and the table says which.

    python scripts/results_table.py results/rlt-gsp-random.csv [more.csv ...]
"""

from __future__ import annotations

import sys

import pandas as pd


def _pm(mean: float, std: float, scale: float = 1.0, digits: int = 3) -> str:
    if pd.isna(mean):
        return "-"
    if pd.isna(std):  # one seed: no interval
        return f"{mean * scale:.{digits}f}"
    return f"{mean * scale:.{digits}f} ± {std * scale:.{digits}f}"


def table(path: str) -> str:
    df = pd.read_csv(path)
    spread = "_ci95" if "hit_rate_ci95" in df.columns else "_std"
    sweep = [c for c in df.columns if c not in ("experiment", "eviction", "router", "seeds")
             and not c.endswith(("_mean", "_std", "_ci95")) and c != "ideal_hit_rate"]
    head = ["", *sweep, "eviction", "router", "hit rate", "ideal", "mean TTFT (s)", "p99 TTFT (s)",
            "mean e2e (s)", "req/s"]
    lines = ["| " + " | ".join(head[1:]) + " |", "|" + "---|" * (len(head) - 1)]
    for _, r in df.iterrows():
        cells = [str(r[c]) for c in sweep] + [
            r["eviction"], r["router"], _pm(r["hit_rate_mean"], r["hit_rate" + spread]),
            f"{r['ideal_hit_rate']:.3f}" if not pd.isna(r["ideal_hit_rate"]) else "-",
            _pm(r["mean_ttft_ms_mean"], r["mean_ttft_ms" + spread], 1e-3, 2),
            _pm(r["p99_ttft_ms_mean"], r["p99_ttft_ms" + spread], 1e-3, 1),
            _pm(r["mean_e2el_ms_mean"], r["mean_e2el_ms" + spread], 1e-3, 2),
            f"{r['request_throughput_mean']:.2f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("± is the 95% confidence half-width over seeds" if spread == "_ci95"
                 else "± is the standard deviation over seeds")
    return "\n".join(lines)


if __name__ == "__main__":
    for p in sys.argv[1:]:
        print(f"\n`{p}`\n")
        print(table(p))
