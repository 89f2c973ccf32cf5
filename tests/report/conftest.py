"""Fixtures for the report tests: result directories built with the real result writer."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.report.report_strings import IMG, XSS

from tests.report.synthetic import write_synthetic_run
from kvbench.results import read_run, write_run

COMBINATIONS = (("lru", "round_robin"), ("rlt", "lbgr"), ("arc", "cache_aware"))
CACHE_SIZES = (16384, 65536, 262144)


@pytest.fixture
def sweep_dir(tmp_path: Path) -> Path:
    """3 combinations x 3 cache sizes of one workload, as a sweep would write them; one run has failures."""
    root = tmp_path / "sweep"
    i = 0
    for eviction, router in COMBINATIONS:
        for cache in CACHE_SIZES:
            write_synthetic_run(root / f"{eviction}-{router}-{cache}", name=f"{eviction}-{router}-c{cache}",
                                eviction=eviction, router=router, cache_tokens=cache, seed=i, n=300,
                                hit_level=0.2 + 0.08 * i, failed=4 if i == 1 else 0)
            i += 1
    return root


@pytest.fixture
def hostile_run(tmp_path: Path) -> Path:
    """A run whose name, trace parameters, worker names, config values and errors all carry markup."""
    out = write_synthetic_run(
        tmp_path / "hostile", name=XSS, n=200, failed=3, generator=f"gen{XSS}",
        params={"rate": 12.0, "note": XSS, "caption": IMG, "prompt": f'"quoted" & {XSS}'},
        eviction=f"lru{XSS}", router=f"rr{XSS}",
        extra={"workers": [f"w{XSS}", "w1", "w2", "w3"], "comment": XSS, "model": f"</pre>{XSS}"},
    )
    run = read_run(out)
    rows = run.requests
    rows.loc[rows["status"] != "ok", "error"] = f"upstream said {XSS}"
    rows["session_id"] = XSS
    return write_run(out, rows, {k: v for k, v in run.config.items() if k != "result_format_version"})
