"""The one progress display: a replay's requests (simulator or HTTP) and a sweep's or experiment's runs.

Every bar goes to stderr, so stdout carries only results (a path, a table), and can be switched off (tests,
``--no-progress``) without the callers checking.
"""

from __future__ import annotations

from typing import Self

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)


def progress_bar(*extra: ProgressColumn, enabled: bool = True) -> Progress:
    """``description  bar  done/total  [extra]  elapsed``: the columns every kvbench bar shows."""
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), *extra, TimeElapsedColumn(),
                    console=Console(stderr=True), transient=False, disable=not enabled)


class ReplayProgress:
    """Requests finished out of ``total``; ``errors`` adds a column counting failed ones (real servers).

    The bar is redrawn every ~0.5% of the requests: the simulator finishes a request every few microseconds
    and must not pay for a redraw each time.
    """

    def __init__(self, total: int, label: str, enabled: bool = True, errors: bool = False) -> None:
        self.total = total
        self.count = 0
        self.errors = 0
        self._every = max(1, total // 200)
        self._bar: Progress | None = None
        if enabled:
            extra = (TextColumn("errors {task.fields[errors]}"),) if errors else ()
            self._bar = progress_bar(*extra)
            self._task = self._bar.add_task(label, total=total, errors=0)

    def __enter__(self) -> Self:
        if self._bar is not None:
            self._bar.start()
        return self

    def advance(self, status: str = "ok") -> None:
        self.count += 1
        if status == "error":
            self.errors += 1
        if self._bar is not None and (self.count % self._every == 0 or self.count == self.total):
            self._bar.update(self._task, completed=self.count, errors=self.errors)

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=self.count, errors=self.errors)
            self._bar.stop()
