"""Block-tree prefix cache and eviction policies, shared by the simulator and the vLLM plugin."""

from __future__ import annotations

import inspect
from collections.abc import Sequence

from kvbench.cache.arc import ARCPolicy, DBLPolicy
from kvbench.cache.belady import BeladyPolicy
from kvbench.cache.fifo import FIFOPolicy
from kvbench.cache.lfu import LFUPolicy
from kvbench.cache.lru import LRUPolicy
from kvbench.cache.policy import EvictionPolicy
from kvbench.cache.prefix import Admission, CacheStats, PrefixCache
from kvbench.cache.randomleaf import RandomPolicy
from kvbench.cache.rlt import RLTPolicy, RLTReusePolicy
from kvbench.cache.s3fifo import S3FIFOPolicy
from kvbench.errors import KvbenchError

POLICIES: dict[str, type[EvictionPolicy]] = {
    policy.name: policy
    for policy in (
        LRUPolicy,
        RLTPolicy,
        RLTReusePolicy,
        ARCPolicy,
        DBLPolicy,
        LFUPolicy,
        FIFOPolicy,
        RandomPolicy,
        S3FIFOPolicy,
        BeladyPolicy,
    )
}


def make_policy(
    name: str, seed: int = 0, future: Sequence[Sequence[int]] | None = None, **params
) -> EvictionPolicy:
    """Build a policy by name; ``future`` (per-request block keys in processing order) feeds ``belady``."""
    cls = POLICIES.get(name)
    if cls is None:
        raise KvbenchError(f"unknown eviction policy {name!r}; choose one of: {', '.join(POLICIES)}")
    accepted = inspect.signature(cls.__init__).parameters
    kwargs = dict(params)
    if "seed" in accepted:
        kwargs["seed"] = seed
    if "future" in accepted:
        if future is None:
            raise KvbenchError(
                f"eviction policy {name!r} is offline and needs the future request sequence; "
                "pass future= (the trace's per-request hash_ids in processing order)"
            )
        kwargs["future"] = future
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise KvbenchError(f"bad parameters for eviction policy {name!r}: {exc}") from None


__all__ = ["POLICIES", "Admission", "CacheStats", "EvictionPolicy", "PrefixCache", "make_policy"]
