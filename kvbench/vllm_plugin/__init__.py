"""vLLM plugin entry point (filled in by the real-cluster work)."""


def register() -> None:
    return None
