"""An approximate radix tree over prompt symbols (characters or token ids), as in SGLang's router.

Edges hold numpy arrays so long prompts cost a few vectorised comparisons instead of one Python step per
symbol. Each node carries the time it was last matched or inserted; :meth:`prune` drops least recently
used leaves until the tree holds at most ``max_size`` symbols (SGLang's periodic eviction).
"""

from __future__ import annotations

import heapq

import numpy as np


class _Node:
    __slots__ = ("label", "children", "parent", "last")

    def __init__(self, label: np.ndarray, parent: "_Node | None", last: float):
        self.label = label
        self.children: dict[int, _Node] = {}
        self.parent = parent
        self.last = last


def common_prefix(a: np.ndarray, b: np.ndarray) -> int:
    n = min(len(a), len(b))
    if n == 0:
        return 0
    diff = a[:n] != b[:n]
    i = int(diff.argmax())
    return n if not diff[i] else i


def symbols(prompt: str | None, token_ids, hash_ids: np.ndarray) -> np.ndarray:
    """Characters when there is prompt text (SGLang's unit), else token ids, else block hashes.

    The unit follows what the trace row holds, never what a client made up to send it (synthetic ids for a
    hash-only row, text decoded for chat), so a router matches the same symbols in the simulator and over
    HTTP (kvbench.http.prompts.PromptSource.route_units)."""
    if prompt:
        return np.frombuffer(prompt.encode("utf-32-le"), dtype=np.uint32).astype(np.int64)
    if token_ids is not None and len(token_ids):
        return np.asarray(token_ids, dtype=np.int64)
    return np.asarray(hash_ids, dtype=np.int64)


class RadixTree:
    def __init__(self) -> None:
        self.root = _Node(np.empty(0, dtype=np.int64), None, 0.0)
        self.size = 0  # symbols stored

    def match(self, seq: np.ndarray, now: float | None = None) -> int:
        """Length of the longest stored prefix of ``seq``; touches the matched path when ``now`` is given."""
        node, i, n = self.root, 0, len(seq)
        while i < n:
            child = node.children.get(int(seq[i]))
            if child is None:
                break
            k = common_prefix(child.label, seq[i:])
            i += k
            if now is not None:
                child.last = now
            if k < len(child.label):
                break
            node = child
        return i

    def insert(self, seq: np.ndarray, now: float) -> None:
        node, i, n = self.root, 0, len(seq)
        seq = np.asarray(seq, dtype=np.int64)
        while i < n:
            key = int(seq[i])
            child = node.children.get(key)
            if child is None:
                leaf = _Node(seq[i:].copy(), node, now)
                node.children[key] = leaf
                self.size += n - i
                return
            k = common_prefix(child.label, seq[i:])
            if k < len(child.label):  # split the edge at k; the unmatched tail keeps its age
                mid = _Node(child.label[:k], node, now)
                node.children[key] = mid
                child.label = child.label[k:]
                child.parent = mid
                mid.children[int(child.label[0])] = child
                child = mid
            child.last = now
            i += k
            node = child

    def prune(self, max_size: int) -> int:
        """Evict least recently used leaves until ``size <= max_size``; returns symbols removed."""
        if self.size <= max_size:
            return 0
        heap: list[tuple[float, int, _Node]] = []
        stack = [self.root]
        tie = 0
        while stack:
            node = stack.pop()
            if node.children:
                stack.extend(node.children.values())
            elif node is not self.root:
                heap.append((node.last, tie, node))
                tie += 1
        heapq.heapify(heap)
        removed = 0
        while self.size > max_size and heap:
            _, _, leaf = heapq.heappop(heap)
            parent = leaf.parent
            del parent.children[int(leaf.label[0])]
            self.size -= len(leaf.label)
            removed += len(leaf.label)
            if parent is not self.root and not parent.children:
                heapq.heappush(heap, (parent.last, tie, parent))
                tie += 1
        return removed


class WorkerTrees:
    """One tree per worker, pruned least-recently-used first every ``interval_s`` of the caller's clock.

    SGLang's router (and the RLT paper's fork of it) prunes from a background thread on a timer; driving the
    same pruning from the routing calls' ``now`` makes it happen at the same points in simulated time.
    """

    def __init__(self, workers: int, interval_s: float):
        self.trees = [RadixTree() for _ in range(workers)]
        self.interval = interval_s
        self.last_prune: float | None = None

    def __getitem__(self, worker: int) -> RadixTree:
        return self.trees[worker]

    def maybe_prune(self, now: float, max_size: int) -> None:
        if self.last_prune is None:
            self.last_prune = now
        elif now - self.last_prune >= self.interval:
            self.last_prune = now
            for tree in self.trees:
                tree.prune(max_size)
