"""kvbench: trace-replay benchmarking of KV-cache eviction and query routing for LLM serving."""

__version__ = "0.1.0"
