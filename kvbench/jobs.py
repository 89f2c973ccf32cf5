"""One runner for many replays: a ``kvbench replay`` sweep and the runs of a ``kvbench run`` experiment.

Each job writes one result directory. The runner checks every job before any starts, runs them in-process or
in a spawn-context process pool, shows one progress bar across jobs, and on Ctrl-C (or a failed job) keeps
the finished directories and removes the partial ones. Where jobs run is an :class:`Executor`, so another
(e.g. Ray) can be added without touching the callers.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from kvbench.errors import KvbenchError, fail
from kvbench.record import check_output


@dataclass(frozen=True)
class Job:
    """``fn(*args)`` writes ``output``; ``fn`` must be a module-level function (it is pickled to a worker)."""

    label: str  # names the job in the progress bar, its result key and its error line
    output: Path
    fn: Callable[..., Any]
    args: tuple[Any, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class Outcome:
    label: str
    error: str | None  # one line; None when the job finished
    value: Any = None  # what ``fn`` returned


def call(job: Job) -> Outcome:
    """Runs in the worker: a failure becomes an error line, never a traceback through the pool."""
    try:
        return Outcome(job.label, None, job.fn(*job.args))
    except KvbenchError as exc:
        return Outcome(job.label, str(exc))
    except OSError as exc:
        where = exc.filename or job.output
        return Outcome(job.label, f"{where}: {exc.strerror or exc}")
    except Exception as exc:  # noqa: BLE001 - a failed job is reported as a line, the others go on
        return Outcome(job.label, f"replay failed ({type(exc).__name__}: {exc})")


class Executor(Protocol):
    """Where jobs run. ``outcomes`` yields one Outcome per job as each finishes; ``stop`` ends the work at
    once (Ctrl-C); ``close`` after every outcome has arrived."""

    def outcomes(self, jobs: Sequence[Job]) -> Iterator[Outcome]: ...

    def stop(self) -> None: ...

    def close(self) -> None: ...


class InProcess:
    """One job after another in this process (real targets, or a single process)."""

    def outcomes(self, jobs: Sequence[Job]) -> Iterator[Outcome]:
        return (call(job) for job in jobs)

    def stop(self) -> None:
        pass

    def close(self) -> None:
        pass


class ProcessPool:
    """Spawned processes: no inherited state, and the parent alone owns Ctrl-C."""

    def __init__(self, processes: int) -> None:
        import multiprocessing

        # Ctrl-C / SIGTERM wait until every worker has its start-up data: a signal that cut the parent's write
        # to a starting child would leave it to die with a traceback on a half-read pipe.
        with signals_deferred():
            self.pool = multiprocessing.get_context("spawn").Pool(processes, initializer=_child_init)

    def outcomes(self, jobs: Sequence[Job]) -> Iterator[Outcome]:
        return self.pool.imap_unordered(call, jobs)

    def stop(self) -> None:
        self.pool.terminate()
        self.pool.join()

    def close(self) -> None:
        self.pool.close()
        self.pool.join()


def executor_for(processes: int) -> Executor:
    return ProcessPool(processes) if processes > 1 else InProcess()


def run_jobs(jobs: Sequence[Job], processes: int = 1, *, check: Callable[[Job], None] | None = None,
             keep_going: bool = True, progress: bool = True, bar: Any = None,
             name: str = "jobs") -> dict[str, Any]:
    """Run ``jobs`` and return ``{label: value}`` of those that finished.

    ``check`` runs on every job before any output directory is made. ``keep_going``: the other jobs finish
    when one fails (a sweep); otherwise the first failure stops the rest (an experiment, which resumes). Then
    the first error is raised as one line naming its job, after partial directories are removed; on Ctrl-C
    likewise, re-raising KeyboardInterrupt. ``bar``: a rich Progress to add this run's task to (else one is
    shown when ``progress``).
    """
    from kvbench.progress import progress_bar

    for job in jobs:
        if check is not None:
            check(job)
    _make_outputs(jobs)
    results: dict[str, Any] = {}
    errors: list[str] = []
    own = bar is None
    if own:
        bar = progress_bar(enabled=progress)
    executor: Executor | None = None
    try:
        with bar if own else contextlib.nullcontext():
            task = bar.add_task(f"{name} of {len(jobs)} runs", total=len(jobs))
            executor = executor_for(min(processes, len(jobs)))
            for outcome in executor.outcomes(jobs):
                if outcome.error is not None:
                    errors.append(f"{outcome.label}: {outcome.error}")
                    if not keep_going:
                        executor.stop()
                        break
                else:
                    results[outcome.label] = outcome.value
                bar.update(task, advance=1, description=f"{name}: {outcome.label} done")
            else:
                executor.close()
    except KeyboardInterrupt:
        if executor is not None:
            executor.stop()
        remove_partial([j.output for j in jobs if j.label not in results])
        raise
    if errors:
        remove_partial([j.output for j in jobs if j.label not in results])
        raise fail(errors[0])
    return results


def _make_outputs(jobs: Sequence[Job]) -> None:
    """Create every output now, so a bad path fails before any run (and none is left made if one does)."""
    created: set[Path] = set()
    try:
        for job in jobs:
            out = Path(job.output)
            if not out.exists():
                created.add(out)
            check_output(out)
    except KvbenchError:
        for out in created:
            with contextlib.suppress(OSError):
                out.rmdir()
        raise


def remove_partial(outputs: Sequence[Path]) -> None:
    """A directory without run.json holds no finished run: it goes; in the others, only half-written
    temporary files go."""
    for out in map(Path, outputs):
        if out.is_dir() and not (out / "run.json").exists():
            shutil.rmtree(out, ignore_errors=True)
        elif out.is_dir():
            for tmp in out.glob(".*.tmp"):
                with contextlib.suppress(OSError):
                    tmp.unlink()


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM until the block ends, then act on them.

    The Python-level handler runs in the main thread whichever thread the OS delivered the signal to, so a
    thread signal mask cannot defer it; swapping the handlers for a recorder can.
    """
    caught: list[int] = []
    old = {sig: signal.signal(sig, lambda s, _f: caught.append(s)) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
        if caught:
            handler = old[caught[0]]
            if callable(handler):
                handler(caught[0], None)
            else:
                raise KeyboardInterrupt


def _child_init() -> None:
    # The parent owns Ctrl-C; a terminated child raises SystemExit so atomic writes clean up after themselves.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
