"""Block-tree prefix cache and eviction policies, shared by the simulator and the vLLM plugin."""

from __future__ import annotations

import inspect
import typing
from collections.abc import Mapping, Sequence
from typing import Any

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
from kvbench.params import resolve_params

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


# given by make_policy itself, not by --eviction-param
_SET_BY_KVBENCH = ("self", "seed", "future", "hittable")


def _typed_defaults(cls: type[EvictionPolicy]) -> dict[str, Any]:
    """A policy's tunable ``__init__`` parameters with a value of the type each expects: the default, or
    for a ``None`` default a zero of its annotated type (so ``capacity: int | None = None`` takes ints)."""
    hints = typing.get_type_hints(cls.__init__)
    out: dict[str, Any] = {}
    for name, p in inspect.signature(cls.__init__).parameters.items():
        if name in _SET_BY_KVBENCH or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        default = None if p.default is inspect.Parameter.empty else p.default
        if default is None:
            hint = hints.get(name)
            kinds = typing.get_args(hint) or (hint,)  # int | None -> (int, NoneType)
            default = next((k() for k in (bool, int, float) if k in kinds), None)
        out[name] = default
    return out


def policy_params(name: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """``--eviction-param`` values checked against policy ``name`` and converted to its defaults' types."""
    cls = POLICIES.get(name)
    if cls is None:
        raise KvbenchError(f"unknown eviction policy {name!r}; choose one of: {', '.join(POLICIES)}")
    return resolve_params(f"eviction policy '{name}'", _typed_defaults(cls), params, "--eviction-param",
                          fill_defaults=False)


def make_policy(
    name: str, seed: int = 0, future: Sequence[Sequence[int]] | None = None,
    hittable: Sequence[int] | None = None, typed: bool = False, **params
) -> EvictionPolicy:
    """Build a policy by name; ``future`` (per-request block keys in replay order) and ``hittable`` (how
    many of each request's first keys can hit; None: all) feed ``belady``.

    ``params`` may be strings (``--eviction-param k=v``): each is converted to the type of the matching
    ``__init__`` default, so every caller (simulator, vLLM plugin) builds the same policy from the same flags.
    """
    kwargs = dict(params) if typed else policy_params(name, params)  # typed: already from policy_params
    cls = POLICIES[name]
    accepted = inspect.signature(cls.__init__).parameters
    if "seed" in accepted:
        kwargs["seed"] = seed
    if "future" in accepted:
        if future is None:
            raise KvbenchError(
                f"eviction policy {name!r} is offline and needs the future request sequence; "
                "pass future= (the trace's per-request hash_ids in processing order)"
            )
        kwargs["future"] = future
        if hittable is not None:
            kwargs["hittable"] = hittable
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise KvbenchError(f"--eviction-param: bad parameters for eviction policy {name!r}: {exc}") from None


__all__ = ["POLICIES", "Admission", "CacheStats", "EvictionPolicy", "PrefixCache", "make_policy", "policy_params"]
