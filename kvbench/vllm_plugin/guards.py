"""Start-up refusals: vLLM set-ups a kvbench policy cannot govern soundly stop the server with one line.

Each refusal raises :class:`~kvbench.errors.KvbenchError` while vLLM builds its scheduler, so the engine
exits before serving and ``kvbench cluster up`` reports the line from the server log.

- A model whose KV cache is not exactly one full-attention group (hybrid models with several groups,
  sliding-window, chunked-local, Mamba, cross-attention...). kvbench policies model one prefix tree in
  which a request pins every block of its prefix until it finishes. Other groups break that: sliding
  windows free a request's early blocks while it still pins later ones, Mamba caches sparse
  checkpoints, partial blocks and copy-on-write moves, and a hit needs every group at once, which
  per-block policies cannot see. The simulator has none of these either.
- vLLM's SimpleCPUOffloadConnector with ``lazy_offload``: it walks the free queue in eviction order
  (``iter_blocks_after``), which a kvbench policy does not have (see ``free_queue.NO_EVICTION_ORDER``).
  Eager offload is not refused: loads come back through ``allocate_slots`` and ``cache_blocks`` like any
  other admission. Its copies pin blocks through ``touch``, though, which the policy hears as hits, and a
  copy that outlives its request pins a block whose parent is free (see docs/vllm-plugin.md).
"""

from __future__ import annotations

from collections.abc import Callable

from kvbench.errors import fail
from kvbench.vllm_plugin.free_queue import NO_EVICTION_ORDER

_ADVICE = "unset KVBENCH_EVICTION (or set it to 'vllm') to keep vLLM's own eviction"


def _feature(spec) -> str:
    from vllm.v1.kv_cache_interface import KVCacheSpecKind, get_kv_cache_spec_kind

    kind = get_kv_cache_spec_kind(spec)
    if kind is KVCacheSpecKind.UNKNOWN:
        return type(spec).__name__
    return kind.value.replace("_", " ")


def refuse_unsupported_model(kv_cache_config, policy_name: str) -> None:
    """Raise unless the model's KV cache is a single group that vLLM serves as plain full attention."""
    from vllm.v1.core.single_type_kv_cache_manager import FullAttentionManager
    from vllm.v1.kv_cache_spec_registry import KVCacheSpecRegistry

    groups = kv_cache_config.kv_cache_groups
    head = f"kvbench plugin: cannot run eviction policy {policy_name!r} on this model"
    if len(groups) > 1:
        features = ", ".join(_feature(g.kv_cache_spec) for g in groups)
        raise fail(
            f"{head}: it is a hybrid model with {len(groups)} KV-cache groups ({features}), and a kvbench "
            f"policy governs one full-attention group only; {_ADVICE}"
        )
    for group in groups:
        manager = KVCacheSpecRegistry.get_manager_class(group.kv_cache_spec, group.role)
        # Exactly this manager, which keeps every block of a request until it finishes; not its subclasses
        # (R-SWA frees blocks mid-request, HiSparse splits the cache in roles).
        if manager is not FullAttentionManager:
            raise fail(
                f"{head}: its KV cache uses {_feature(group.kv_cache_spec)} (vLLM's "
                f"{getattr(manager, '__name__', manager)}), and a kvbench policy governs full attention "
                f"only; {_ADVICE}"
            )


def _lazy_offload_connectors(connector) -> list:
    from vllm.distributed.kv_transfer.kv_connector.v1.simple_cpu_offload_connector import (
        SimpleCPUOffloadConnector,
    )

    found, pending = [], [connector]
    while pending:
        c = pending.pop()
        pending.extend(getattr(c, "sub_connectors", None) or ())  # MultiConnector's children
        manager = getattr(c, "scheduler_manager", None)
        if isinstance(c, SimpleCPUOffloadConnector) and getattr(manager, "_lazy_mode", False):
            found.append(c)
    return found


def refuse_unsupported_connector(connector, vllm_config, policy_name: str) -> None:
    """Raise if the scheduler's KV connector would walk the free queue in eviction order."""
    if not vllm_config.cache_config.enable_prefix_caching:
        return  # no prefix cache, no policy: the plugin is idle
    if _lazy_offload_connectors(connector):
        raise fail(
            f"kvbench plugin: cannot run eviction policy {policy_name!r} with SimpleCPUOffloadConnector "
            f"lazy_offload: it walks the free-block queue in eviction order, and {NO_EVICTION_ORDER}; "
            f"set lazy_offload to false (eager offload works) or {_ADVICE}"
        )


def checked_connector_factory(factory, policy_name: Callable[[], str | None]):
    """``factory`` (vLLM's KVConnectorFactory), refusing connectors the policy cannot work with.

    ``policy_name`` says which policy the block pool runs when a connector is made (None: none), which is
    known only then: the pool's module installs this factory, so it passes the question in."""
    if getattr(factory, "_kvbench_checked", False):
        return factory

    class KvbenchCheckedConnectorFactory(factory):
        _kvbench_checked = True

        @classmethod
        def create_connector(cls, config, role, kv_cache_config):
            connector = super().create_connector(config, role, kv_cache_config)
            name = policy_name()
            if name is not None:
                refuse_unsupported_connector(connector, config, name)
            return connector

    return KvbenchCheckedConnectorFactory
