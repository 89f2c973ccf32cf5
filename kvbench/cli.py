"""The ``kvbench`` command line. Each area registers its own commands; this module only wires them up
and turns :class:`KvbenchError` into one line on stderr with exit status 2."""

from __future__ import annotations

import importlib
import sys

import typer

from kvbench.errors import KvbenchError

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
    "kvbench.http.commands",  # gateway, cluster up/down, model tiny
    "kvbench.report.commands",  # report
    "kvbench.experiment",  # run
)

for _name in COMMAND_MODULES:
    importlib.import_module(_name).register(app)


@app.callback()
def _root(version: bool = typer.Option(False, "--version", help="Print the version and exit.", is_eager=True)) -> None:
    if version:
        from kvbench import __version__

        typer.echo(__version__)
        raise typer.Exit()


def main() -> None:
    try:
        app()
    except KvbenchError as exc:
        print(f"kvbench: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("kvbench: interrupted", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
