"""The ``vllm.general_plugins`` entry point that puts a kvbench eviction policy in vLLM's block pool.

vLLM calls :func:`register` in each of its processes before the engine builds its scheduler. With
``KVBENCH_EVICTION`` unset (or ``vllm``) it does nothing, so an installed kvbench never changes a plain
vLLM server. Otherwise the engine's block pool becomes :class:`~kvbench.vllm_plugin.block_pool.PolicyBlockPool`,
driven by ``kvbench.cache.make_policy(name, seed=...)``: the same policy objects the simulator uses.
"""

from __future__ import annotations

from kvbench.vllm_plugin.config import ENV_NAME, ENV_PARAMS, ENV_SEED, NATIVE, PolicyConfig, config_from_env

__all__ = ["ENV_NAME", "ENV_PARAMS", "ENV_SEED", "NATIVE", "PolicyConfig", "config_from_env", "register"]


def register() -> None:
    config = config_from_env()
    if config is None:
        return
    from kvbench.vllm_plugin.block_pool import install
    from kvbench.vllm_plugin.config import check_policy

    check_policy(config)  # an unknown name stops the server at start-up with one clear line in its log
    install(config)
