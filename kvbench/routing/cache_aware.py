"""``cache_aware``: the SGLang router's policy over an approximate per-worker radix tree.

For each request, with ``load`` = the router's outstanding requests per live worker:

1. imbalanced if ``max - min > balance_abs_threshold`` AND ``max > balance_rel_threshold * min``:
   route to the least loaded worker (the prompt is still inserted into that worker's tree);
2. otherwise match the prompt against every worker's tree; if ``matched / prompt_length > cache_threshold``
   route to the best-matching worker (its matched path counts as used for LRU pruning, as SGLang's
   ``prefix_match`` refreshes it);
3. otherwise route to the least loaded worker (``fallback=least_load``, current SGLang) or to the worker
   with the smallest tree (``fallback=smallest_tree``, older SGLang: ``Tree::get_smallest_tenant``, the
   fewest symbols stored for the worker, which is :attr:`RadixTree.size` of its tree).

The prompt unit is characters when the request carries text (SGLang's unit), else token ids (else block
hashes); ``max_tree_size`` counts the same unit. ``defaults=`` picks a complete set of values, and explicit
parameters override single values of it:

- ``cli`` (default): the Python launcher's CLI, cache_threshold 0.3, balance_abs_threshold 64,
  balance_rel_threshold 1.5, eviction every 60 s to 2**26 symbols, least-loaded fallback;
- ``library``: the thresholds of the Rust library config (0.5, 32, 1.1) with the CLI's eviction;
- ``sglang-0.4.6``: exactly the router the RLT paper's baseline ran (fzwark/KVRouting, the patched
  SGLang 0.4.6 whose scripts start ``sglang_router.launch_router`` with only ``--policy``, so every value is
  ``RouterArgs``' default): cache_threshold 0.5, balance_abs_threshold 32, balance_rel_threshold 1.0001,
  eviction every 60 s to 2**24 characters per worker, smallest-tree fallback.

Every ``eviction_interval_s`` of the caller's clock each tree is pruned (LRU leaves first) to
``max_tree_size`` symbols.
"""

from __future__ import annotations

from typing import Any

from kvbench.errors import fail
from kvbench.routing.base import Router, RouterConfig, RouteRequest, resolve_params
from kvbench.routing.radix import WorkerTrees, symbols

# Every value each set fixes; a set must name all of them so that choosing it says what ran.
DEFAULT_SETS = {
    "cli": {"cache_threshold": 0.3, "balance_abs_threshold": 64, "balance_rel_threshold": 1.5,
            "fallback": "least_load", "max_tree_size": 2**26, "eviction_interval_s": 60.0},
    "library": {"cache_threshold": 0.5, "balance_abs_threshold": 32, "balance_rel_threshold": 1.1,
                "fallback": "least_load", "max_tree_size": 2**26, "eviction_interval_s": 60.0},
    # fzwark/KVRouting sglang-0.4.6/sgl-router/py_src/sglang_router/launch_router.py RouterArgs defaults
    # (the same in router.py and src/lib.rs); gsp.sh, long.sh and multi_conv.sh pass only --policy.
    # router.rs falls back to tree.get_smallest_tenant() below the cache threshold.
    "sglang-0.4.6": {"cache_threshold": 0.5, "balance_abs_threshold": 32, "balance_rel_threshold": 1.0001,
                     "fallback": "smallest_tree", "max_tree_size": 2**24, "eviction_interval_s": 60.0},
}


def apply_preset(router: Router, presets: dict[str, dict[str, Any]], key: str) -> dict[str, Any]:
    """Fill ``router.params`` with the values of the preset named by ``router.params[key]``; values the
    caller gave explicitly win and are converted to the preset's types."""
    which = router.params[key]
    if which not in presets:
        raise fail(f"--router-param {key}={which}: {router.name} knows {key}="
                   f"{' | '.join(presets)}")
    chosen = presets[which]
    given = {k: v for k, v in router.config.params.items() if k in chosen}
    typed = resolve_params(router.name, chosen, given)  # the preset's values, overridden and typed
    for k in chosen:
        router.params[k] = typed[k]
    return chosen


class CacheAwareRouter(Router):
    name = "cache_aware"
    defaults = {
        "defaults": "cli",
        "cache_threshold": None,
        "balance_abs_threshold": None,
        "balance_rel_threshold": None,
        "fallback": None,
        "max_tree_size": None,
        "eviction_interval_s": None,
    }

    def __init__(self, config: RouterConfig):
        super().__init__(config)
        apply_preset(self, DEFAULT_SETS, "defaults")
        if self.params["fallback"] not in ("least_load", "smallest_tree"):
            raise fail(f"--router-param fallback={self.params['fallback']}: cache_aware falls back to "
                       f"'least_load' or 'smallest_tree'")
        self.cache_threshold = float(self.params["cache_threshold"])
        self.abs_threshold = float(self.params["balance_abs_threshold"])
        self.rel_threshold = float(self.params["balance_rel_threshold"])
        self.max_tree_size = int(self.params["max_tree_size"])
        self.trees = WorkerTrees(self.n, float(self.params["eviction_interval_s"]))
        self.last_decision = ""  # "imbalanced" | "cache_hit" | "fallback", for tests and debugging

    def is_imbalanced(self, live: list[int]) -> bool:
        loads = [self.outstanding[w] for w in live]
        hi, lo = max(loads), min(loads)
        return (hi - lo) > self.abs_threshold and hi > self.rel_threshold * lo

    def least_loaded(self, live: list[int]) -> int:
        return min(live, key=lambda w: (self.outstanding[w], w))

    def choose(self, req: RouteRequest, now: float) -> int:
        self.trees.maybe_prune(now, self.max_tree_size)
        live = self.live_workers()
        seq = symbols(req.prompt, req.prompt_token_ids, req.hash_ids)
        if self.is_imbalanced(live):
            self.last_decision = "imbalanced"
            w = self.least_loaded(live)
        else:
            best, best_len = live[0], -1
            for w in live:
                m = self.trees[w].match(seq)
                if m > best_len or (m == best_len and self.outstanding[w] < self.outstanding[best]):
                    best, best_len = w, m
            if best_len > 0:
                self.trees[best].match(seq, now)  # SGLang's prefix_match refreshes the matched path
            ratio = best_len / len(seq) if len(seq) else 0.0
            if ratio > self.cache_threshold:
                self.last_decision = "cache_hit"
                w = best
            else:
                self.last_decision = "fallback"
                if self.params["fallback"] == "smallest_tree":
                    w = min(live, key=lambda x: (self.trees[x].size, x))
                else:
                    w = self.least_loaded(live)
        self.trees[w].insert(seq, now)
        return w
