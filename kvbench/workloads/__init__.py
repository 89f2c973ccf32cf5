"""Workload sources: one validated config model per `kvbench generate` subcommand, and ``generate``,
the library entry point the command line and `kvbench run` share."""

from kvbench.workloads.configs import (
    CONFIGS,
    ConversationConfig,
    DocqaConfig,
    GenerateConfig,
    GspConfig,
    TraceConfig,
    parse_config,
)
from kvbench.workloads.pipeline import generate

__all__ = [
    "CONFIGS",
    "ConversationConfig",
    "DocqaConfig",
    "GenerateConfig",
    "GspConfig",
    "TraceConfig",
    "generate",
    "parse_config",
]
