"""The ``kvbench`` command line. Each area registers its own commands; this module only wires them up
and turns :class:`KvbenchError` into one line on stderr with exit status 2."""

from __future__ import annotations

import importlib
import signal
import sys

import typer

from kvbench.errors import KvbenchError, forget_interrupt, interrupt_announced

app = typer.Typer(
    name="kvbench",
    help="Trace-replay benchmarking of KV-cache eviction and query routing for LLM serving.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

# Each module defines ``register(app)``; the order is the order of `kvbench --help`.
COMMAND_MODULES = (
    "kvbench.workloads.commands",  # generate ..., inspect
    "kvbench.replay",  # replay (sim and HTTP targets, sweeps)
    "kvbench.sim.commands",  # calibrate
    "kvbench.validate.commands",  # validate (simulator fidelity against a real cluster)
    "kvbench.http.commands",  # gateway, cluster up/down, model tiny
    "kvbench.report.commands",  # report
    "kvbench.experiment",  # run
)

for _name in COMMAND_MODULES:
    importlib.import_module(_name).register(app)


def _print_version(value: bool) -> None:
    if value:
        from kvbench import __version__

        typer.echo(__version__)
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", help="Print the version and exit.", is_eager=True,
                                 callback=_print_version),
) -> None:
    """Trace-replay benchmarking of KV-cache eviction and query routing for LLM serving."""


def main() -> None:
    # typer >= 0.29 vendors click; older typer uses click itself. Both expose the same exception types.
    try:
        from typer._click import exceptions as click_exc
    except ImportError:  # pragma: no cover - older typer
        from click import exceptions as click_exc

    # SIGTERM (a scheduler's stop, `kill`) ends a run like Ctrl-C: partial results kept, temp files removed
    signal.signal(signal.SIGTERM, _interrupt)
    forget_interrupt()
    try:
        code = app(standalone_mode=False)
    except click_exc.NoArgsIsHelpError as exc:  # `kvbench` alone: show help, as click would
        exc.show()
        sys.exit(0)
    except click_exc.UsageError as exc:
        # One line, like every other kvbench error: "where" and "what to do".
        hint = f" (see `{exc.ctx.command_path} --help`)" if exc.ctx is not None else ""
        print(f"kvbench: error: {exc.format_message()}{hint}", file=sys.stderr)
        sys.exit(2)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except click_exc.ClickException as exc:
        print(f"kvbench: error: {exc.format_message()}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        _exit_interrupted()
    except KvbenchError as exc:
        print(f"kvbench: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except OSError as exc:  # an output path that cannot be written, a file that vanished: one line, no traceback
        where = exc.filename
        reason = exc.strerror or str(exc)
        print(f"kvbench: error: {where}: {reason}" if where else f"kvbench: error: {reason}", file=sys.stderr)
        sys.exit(2)
    # Without standalone mode click hands back a command's `typer.Exit(code)` instead of exiting with it,
    # and typer turns an unhandled KeyboardInterrupt into Exit(130).
    if code == 130:
        _exit_interrupted()
    if isinstance(code, int) and code:
        sys.exit(code)


def _exit_interrupted() -> None:
    """Exit 130 with one line; a command that said what it kept has said it already."""
    if not interrupt_announced():
        print("kvbench: interrupted: stopped before finishing; no output was written half-way", file=sys.stderr)
    sys.exit(130)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    main()
