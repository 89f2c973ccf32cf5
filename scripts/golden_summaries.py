"""Regenerate tests/golden/summaries: every spec's reduced run, its summary.csv kept as the reference.

tests/test_experiment.py compares each reduced run with these files, so a refactoring that changes any
simulated figure fails there. Run this only when a change of results is meant, and say why in the commit:

    python scripts/golden_summaries.py [SPEC ...]
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kvbench.experiment import run_experiment  # noqa: E402

GOLDEN = ROOT / "tests" / "golden" / "summaries"


def main(argv: list[str]) -> None:
    specs = [Path(a) for a in argv] or sorted((ROOT / "workloads").glob("*.toml"))
    GOLDEN.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="kvbench-golden-") as tmp:
        for spec in specs:
            out = Path(tmp) / spec.stem
            run_experiment(spec, out, jobs_n=1, progress=False, reduced=True, report=False)
            shutil.copyfile(out / "summary.csv", GOLDEN / f"{spec.stem}.csv")
            print(GOLDEN / f"{spec.stem}.csv")


if __name__ == "__main__":
    main(sys.argv[1:])
