"""Write the JSON Schema of every input kvbench validates to docs/schemas/<name>.json.

Run after changing a model: `python scripts/schemas.py`. tests/test_schemas.py fails while docs/schemas/
differs from what this writes. To publish another model, add it to MODELS.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kvbench.experiment import ExperimentSpec
from kvbench.http.cluster import ClusterInfo
from kvbench.record import RunRecord
from kvbench.spec import ReplaySpec
from kvbench.workloads import CONFIGS

OUT = ROOT / "docs" / "schemas"

# pydantic models or dataclasses (ReplaySpec is a pydantic dataclass)
MODELS: dict[str, Any] = {
    **{f"generate-{kind}": model for kind, model in CONFIGS.items()},
    "experiment-spec": ExperimentSpec,
    "replay-spec": ReplaySpec,
    "run": RunRecord,
    "cluster": ClusterInfo,
}


def render(model: Any) -> str:
    """The schema of what a file may hold (validation mode), stable text for diffs."""
    schema = TypeAdapter(model).json_schema(mode="validation")
    if model is ExperimentSpec:
        _link_generators(schema["$defs"]["GenerateTable"])
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def _link_generators(table: dict[str, Any]) -> None:
    """``[generate] args`` are the options of the generator ``kind`` names: point them at its schema file, so
    an editor checks a spec the way load_spec does. Added here because pydantic takes every ``$ref`` in a
    model's own schema for one of its definitions."""
    table["properties"]["kind"]["enum"] = list(CONFIGS)
    table["allOf"] = [{"if": {"properties": {"kind": {"const": kind}}},
                       "then": {"properties": {"args": {"$ref": f"generate-{kind}.json"}}}} for kind in CONFIGS]


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for name, model in MODELS.items():
        (OUT / f"{name}.json").write_text(render(model), encoding="utf-8")
        print(f"wrote {(OUT / f'{name}.json').relative_to(ROOT)}")


if __name__ == "__main__":
    main()
