"""One runner for many replays: a ``kvbench replay`` sweep and the runs of a ``kvbench run`` experiment.

Each job writes one result directory. The runner checks every job before any starts, runs them in-process or
in a spawn-context process pool or as Ray tasks (``--executor ray``), shows one progress bar
across jobs, and on Ctrl-C (or a failed job) keeps the finished directories and removes the partial ones. Where
jobs run is an :class:`Executor`; the callers only pass the user's :class:`Placement`.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from kvbench.errors import KvbenchError, fail
from kvbench.fsutil import atomic_path, staging
from kvbench.record import check_output


@dataclass(frozen=True)
class Job:
    """``fn(*args)`` writes ``output``; ``fn`` must be a module-level function (it is pickled to a worker)."""

    label: str  # names the job in the progress bar, its result key and its error line
    output: Path
    fn: Callable[..., Any]
    args: tuple[Any, ...] = field(default_factory=tuple)
    # files fn reads: an executor whose nodes need not share this filesystem ships them (kvbench.fsutil.staged)
    inputs: tuple[Path, ...] = ()
    # the result files that mark the job finished: written after the others, in this order, when results are
    # copied back from another node (so an interrupted copy never looks finished)
    last: tuple[str, ...] = ("run.json",)


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


# ---------------------------------------------------------------------------------------------------- Ray
# Each input file (a trace) goes into Ray's object store once, shared by every job that reads it. A task writes
# the bytes to a temporary folder on its node, runs the job there (kvbench.fsutil.staged maps the job's paths to
# those copies) and returns the bytes of its result files; this process writes them into the job's output
# directory. run.json records the paths as given, so every file is byte for byte the local executor's, and the
# nodes need not share a filesystem. Ray is imported only when asked for, so kvbench works without it.


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise fail("--executor ray: Ray is not installed; pip install 'kvbench[ray]'") from None
    return ray


def _check_listening(address: str) -> None:
    """ray.init retries an address where nothing listens for minutes; one TCP connection tells at once."""
    if address == "auto":  # Ray's own lookup of a cluster started on this machine
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise fail(f"--address {address}: expected HEAD:PORT of a Ray cluster, e.g. 10.0.0.1:6379")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=10).close()
    except OSError as exc:
        raise fail(f"--address {address}: no Ray cluster answers there ({exc.strerror or exc}); "
                   f"start one with `ray start --head` on that node") from None


def run_on_node(job: Job, *blobs: bytes | None) -> tuple[Outcome, list[tuple[str, bytes]]]:
    """The Ray task: ``job`` on local copies of its inputs (``blobs`` in ``job.inputs`` order; None: not
    readable where the jobs were submitted, so the job meets the path as given and reports it). Returns the
    outcome and the output folder's files, since nothing written on the node outlives the task."""
    with tempfile.TemporaryDirectory(prefix="kvbench-job-") as tmp:
        out = Path(tmp) / "out"
        local = {Path(job.output): out}
        for i, (path, blob) in enumerate(zip(job.inputs, blobs, strict=True)):
            if blob is not None:
                copy = Path(tmp) / f"in{i}" / Path(path).name  # the name kept: error lines still make sense
                copy.parent.mkdir()
                copy.write_bytes(blob)
                local[Path(path)] = copy
        with staging(local):
            outcome = call(job)
        if outcome.error is not None:  # name the files as given, as the same failure does locally
            error = outcome.error
            for path, copy in local.items():
                error = error.replace(str(copy), str(path))
            outcome = Outcome(job.label, error)
        files = sorted((p.name, p.read_bytes()) for p in out.iterdir()
                       if p.is_file() and not p.name.startswith(".")) if out.is_dir() else []
    return outcome, files


def write_results(job: Job, files: list[tuple[str, bytes]]) -> None:
    """Leave ``job.output`` as the job would have left it here: each file replaced atomically, ``job.last``
    (the files that mark it finished) after the others, and a file the run no longer makes (a stale
    timeline.parquet) removed before them, as an overwriting local run does."""
    out = Path(job.output)
    out.mkdir(parents=True, exist_ok=True)
    data = dict(files)
    for name in sorted(set(data) - set(job.last)):
        _write(out / name, data[name])
    for old in out.iterdir():
        if old.is_file() and not old.name.startswith(".") and old.name not in data:
            old.unlink()
    for name in job.last:
        if name in data:
            _write(out / name, data[name])


def _write(path: Path, blob: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(blob)


class RayExecutor:
    """One Ray task (one CPU) per job, on the cluster at ``address`` or on a Ray instance started here with
    every local CPU. An instance it started is shut down when the jobs end; one already running (a caller's
    ``ray.init``) is used and left running."""

    def __init__(self, address: str | None = None) -> None:
        self.ray = ray = import_ray()
        self.started = not ray.is_initialized()
        if self.started:
            if address is not None:
                _check_listening(address)
            try:
                ray.init(address=address, include_dashboard=False, logging_level=logging.ERROR)
            except Exception as exc:  # noqa: BLE001 - Ray raises ConnectionError, RuntimeError, ValueError...
                what = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                if address is None:
                    raise fail(f"--executor ray: cannot start a local Ray instance ({what})") from None
                raise fail(f"--address {address}: cannot connect to a Ray cluster there ({what}); check that "
                           f"`ray start --head` runs there with this Ray version, and for a cluster with token "
                           f"authentication set RAY_AUTH_MODE=token and its token here") from None
        self.task = ray.remote(num_cpus=1, max_retries=0)(run_on_node)
        self.pending: dict[Any, Job] = {}

    def outcomes(self, jobs: Sequence[Job]) -> Iterator[Outcome]:
        ray = self.ray
        shared: dict[Path, Any] = {}
        for path in dict.fromkeys(Path(p) for job in jobs for p in job.inputs):
            try:
                shared[path] = ray.put(path.read_bytes())
            except OSError:
                shared[path] = None
        self.pending = {self.task.remote(job, *(shared[Path(p)] for p in job.inputs)): job for job in jobs}
        while self.pending:
            [ref], _ = ray.wait(list(self.pending), num_returns=1)
            yield self._collect(self.pending.pop(ref), ref)

    def _collect(self, job: Job, ref: Any) -> Outcome:
        try:
            outcome, files = self.ray.get(ref)
        except self.ray.exceptions.RayError as exc:  # the worker or its node died, or the task was cancelled
            what = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            return Outcome(job.label, f"Ray task failed ({type(exc).__name__}{': ' + what if what else ''})")
        if outcome.error is None:
            try:
                write_results(job, files)
            except KvbenchError as exc:
                return Outcome(job.label, str(exc))
            except OSError as exc:
                return Outcome(job.label, f"{exc.filename or job.output}: {exc.strerror or exc}")
        return outcome

    def stop(self) -> None:
        for ref in self.pending:  # queued tasks never start; running ones are interrupted
            with contextlib.suppress(Exception):
                self.ray.cancel(ref)
        self.pending = {}
        self.close()

    def close(self) -> None:
        if self.started:
            self.started = False
            self.ray.shutdown()


EXECUTORS = ("local", "ray")


@dataclass(frozen=True)
class Placement:
    """Where the user asked jobs to run: ``--executor`` and ``--address``, checked once by :func:`placement`."""

    executor: str = "local"
    address: str | None = None  # a Ray cluster's head (None: a Ray instance started here)

    @property
    def ray(self) -> bool:
        return self.executor == "ray"


LOCAL = Placement()


def placement(executor: str, address: str | None) -> Placement:
    """The flags as a Placement, or one line saying what is wrong with them (before any work starts)."""
    if executor not in EXECUTORS:
        raise fail(f"--executor {executor}: unknown executor; use {' or '.join(EXECUTORS)}")
    if address is not None and executor != "ray":
        raise fail(f"--address {address}: names a Ray cluster; pass it with --executor ray")
    if executor == "ray":  # a missing Ray or a dead address fails now, not after the traces are generated
        import_ray()
        if address is not None:
            _check_listening(address)
    return Placement(executor, address)


def refuse_real_target(where: Placement, target: str | None) -> None:
    """Ray runs simulator replays only: a real target is measured from this machine, one replay at a time
    (two at once would reset each other's caches), so spreading its runs over a cluster gains nothing and
    would change the client side of every latency."""
    if where.ray and target not in (None, "sim"):
        raise fail(f"--executor ray: runs simulator replays only; replay against --target {target} from this "
                   f"machine (drop --executor ray)")


def executor_for(processes: int, where: Placement = LOCAL) -> Executor:
    if where.ray:
        return RayExecutor(where.address)
    return ProcessPool(processes) if processes > 1 else InProcess()


def run_jobs(jobs: Sequence[Job], processes: int = 1, *, check: Callable[[Job], None] | None = None,
             keep_going: bool = True, progress: bool = True, bar: Any = None,
             name: str = "jobs", where: Placement = LOCAL) -> dict[str, Any]:
    """Run ``jobs`` and return ``{label: value}`` of those that finished.

    ``check`` runs on every job before any output directory is made. ``keep_going``: the other jobs finish
    when one fails (a sweep); otherwise the first failure stops the rest (an experiment, which resumes). Then
    the first error is raised as one line naming its job, after partial directories are removed; on Ctrl-C
    likewise, re-raising KeyboardInterrupt. ``bar``: a rich Progress to add this run's task to (else one is
    shown when ``progress``). ``where``: the executor (local processes, or Ray).
    """
    from kvbench.progress import progress_bar

    for job in jobs:
        if check is not None:
            check(job)
    # before any folder is made: a Ray cluster that cannot be reached leaves nothing behind
    executor = executor_for(min(processes, len(jobs)), where)
    results: dict[str, Any] = {}
    errors: list[str] = []
    own = bar is None
    if own:
        bar = progress_bar(enabled=progress)
    try:
        _make_outputs(jobs)
        with bar if own else contextlib.nullcontext():
            task = bar.add_task(f"{name} of {len(jobs)} runs", total=len(jobs))
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
    except BaseException as exc:
        executor.stop()  # also on an unexpected error: no pool or Ray instance outlives the run
        if isinstance(exc, KeyboardInterrupt):
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
