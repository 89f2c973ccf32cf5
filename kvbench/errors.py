"""The one exception type the CLI turns into a single actionable line (exit status 2)."""


class KvbenchError(Exception):
    """A problem the user can fix: the message names the file, field, flag or URL and what to do."""


def fail(message: str) -> "KvbenchError":
    """Build the error so call sites read ``raise fail(...)``."""
    return KvbenchError(message)


_announced = False


def interrupted(what_was_kept: str) -> KeyboardInterrupt:
    """Say once, on stderr, what an interrupted command kept; the caller raises what this returns.

    The CLI exits 130 for every interrupt and prints a bare "interrupted" line only when no command said more.
    """
    global _announced
    import sys

    print(f"kvbench: interrupted: {what_was_kept}", file=sys.stderr)
    _announced = True
    return KeyboardInterrupt(what_was_kept)


def interrupt_announced() -> bool:
    return _announced


def forget_interrupt() -> None:
    """A new command starts (tests run several in one process)."""
    global _announced
    _announced = False
