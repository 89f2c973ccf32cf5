"""Write-then-rename helpers: kvbench never leaves a half-written output behind."""

from __future__ import annotations

import contextlib
import contextvars
import json
import os
import shutil
import tempfile
import tomllib
from pathlib import Path
from typing import Any, Iterator

from kvbench.errors import fail


_STAGED: contextvars.ContextVar[dict[Path, Path]] = contextvars.ContextVar("staged")


def staged(path: str | os.PathLike[str]) -> Path:
    """Where ``path`` is on this machine: the path itself, except in a job run on a node that need not share
    the driver's filesystem (``--executor ray``, kvbench.jobs), whose trace and output are local copies.
    run.json still records the paths as given, so a result is the same file wherever it ran."""
    return _STAGED.get({}).get(Path(path), Path(path))


@contextlib.contextmanager
def staging(local: dict[Path, Path]) -> Iterator[None]:
    """Within the block, :func:`staged` maps each key of ``local`` to its value."""
    token = _STAGED.set({Path(k): Path(v) for k, v in local.items()})
    try:
        yield
    finally:
        _STAGED.reset(token)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary sibling of ``path``; rename it over ``path`` only if the block succeeds."""
    target = Path(path)
    if target.exists() and not target.is_file():
        # renaming over /dev/null (as root) or a directory would replace it: refuse instead
        raise fail(f"{target}: exists and is not a regular file; choose a file path to write to")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp creates 0600; outputs are ordinary files
        os.replace(tmp_path, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary sibling directory; it replaces ``path`` only if the block succeeds."""
    target = Path(path)
    if target.exists() and not target.is_dir():
        raise fail(f"{target}: exists and is not a directory; choose a new output path")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield tmp
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: str | os.PathLike[str], obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def read_toml(path: Path, label: str) -> dict[str, Any]:
    """Parse a TOML file; a syntax error becomes one line naming ``label`` (a flag or the file)."""
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise fail(f"{label}: not UTF-8 text; a TOML file is expected") from None
    except tomllib.TOMLDecodeError as exc:
        raise fail(f"{label}: invalid TOML ({exc})") from None
