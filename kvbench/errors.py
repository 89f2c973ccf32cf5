"""The one exception type the CLI turns into a single actionable line (exit status 2)."""


class KvbenchError(Exception):
    """A problem the user can fix: the message names the file, field, flag or URL and what to do."""


def fail(message: str) -> "KvbenchError":
    """Build the error so call sites read ``raise fail(...)``."""
    return KvbenchError(message)
