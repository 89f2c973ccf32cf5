"""Which eviction policy a vLLM worker runs, read from its environment (set by `kvbench cluster up`).

Environment variables, so that one plugin serves every worker and each worker can differ:
``KVBENCH_EVICTION`` (a ``kvbench.cache`` policy name; unset, empty or ``vllm`` = vLLM untouched),
``KVBENCH_EVICTION_SEED`` (int, default 0) and ``KVBENCH_EVICTION_PARAMS`` (a JSON object of policy
parameters, default none).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from kvbench.errors import fail

ENV_NAME = "KVBENCH_EVICTION"
ENV_SEED = "KVBENCH_EVICTION_SEED"
ENV_PARAMS = "KVBENCH_EVICTION_PARAMS"
NATIVE = "vllm"  # vLLM's own eviction (its LRU free queue), no plugin
# logged once by the plugin's block pool when it starts; `kvbench cluster up` looks for it in the server log
POLICY_MARKER = "kvbench eviction policy"


@dataclass(frozen=True)
class PolicyConfig:
    name: str
    seed: int = 0
    params: dict[str, Any] = field(default_factory=dict)

    def to_env(self) -> dict[str, str]:
        return {ENV_NAME: self.name, ENV_SEED: str(self.seed), ENV_PARAMS: json.dumps(self.params, sort_keys=True)}


def config_from_env(env: Mapping[str, str] | None = None) -> PolicyConfig | None:
    """The configured policy, or None when vLLM should keep its own eviction."""
    env = os.environ if env is None else env
    name = env.get(ENV_NAME, "").strip()
    if not name or name == NATIVE:
        return None
    raw_seed = env.get(ENV_SEED, "0").strip() or "0"
    try:
        seed = int(raw_seed)
    except ValueError:
        raise fail(f"{ENV_SEED}={raw_seed!r}: expected an integer seed") from None
    raw_params = env.get(ENV_PARAMS, "").strip()
    try:
        params = json.loads(raw_params) if raw_params else {}
    except json.JSONDecodeError as exc:
        raise fail(f"{ENV_PARAMS}: invalid JSON ({exc.msg}); give an object such as '{{\"k\": 1}}'") from None
    if not isinstance(params, dict):
        raise fail(f"{ENV_PARAMS}: expected a JSON object of policy parameters, got {type(params).__name__}")
    return PolicyConfig(name=name, seed=seed, params=params)


def check_policy(config: PolicyConfig) -> None:
    """Fail early (before any server starts) on an unknown policy name or bad parameters."""
    from kvbench.cache import make_policy

    make_policy(config.name, seed=config.seed, **config.params)
