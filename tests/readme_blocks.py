"""Shell blocks of README.md that the tests run, selected by the marker line before each block."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_commands(kind: str) -> list[str]:
    text = README.read_text(encoding="utf-8")
    blocks = re.findall(rf"<!-- readme-test: {kind} -->\n```bash\n(.*?)```", text, re.S)
    return [line for block in blocks for line in block.strip().splitlines() if line.strip()]
