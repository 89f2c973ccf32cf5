"""A rich progress bar for replays that can be switched off (tests, --no-progress)."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


class RunProgress:
    def __init__(self, total: int, enabled: bool = True, label: str = "replay"):
        self.total = total
        self.errors = 0
        self._progress = None
        if enabled:
            self._progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                      TextColumn("errors {task.fields[errors]}"), TimeElapsedColumn(),
                                      console=Console(stderr=True), transient=False)
            self._task = self._progress.add_task(label, total=total, errors=0)

    def __enter__(self) -> RunProgress:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.stop()

    def advance(self, status: str) -> None:
        if status == "error":
            self.errors += 1
        if self._progress is not None:
            self._progress.update(self._task, advance=1, errors=self.errors)
