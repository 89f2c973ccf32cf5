"""docs/schemas/ is what scripts/schemas.py writes from the models: a changed model needs the script rerun."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("kvbench_schemas_script", ROOT / "scripts" / "schemas.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_docs_schemas_match_the_models():
    script = _script()
    published = {p.stem for p in (ROOT / "docs" / "schemas").glob("*.json")}
    assert published == set(script.MODELS), "run `python scripts/schemas.py` (and delete schemas of removed models)"
    for name, model in script.MODELS.items():
        on_disk = (ROOT / "docs" / "schemas" / f"{name}.json").read_text(encoding="utf-8")
        assert on_disk == script.render(model), f"docs/schemas/{name}.json is stale; run `python scripts/schemas.py`"


def test_every_generate_subcommand_has_a_schema():
    from kvbench.workloads.commands import generate_app

    names = {c.name or c.callback.__name__ for c in generate_app.registered_commands}
    assert {n.removeprefix("generate-") for n in _script().MODELS if n.startswith("generate-")} == names
