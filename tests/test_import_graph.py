"""kvbench's modules import one another without cycles, counting imports inside functions too.

A cycle hidden in a function-level import still ties two modules together (neither can be understood or
moved without the other) and breaks as soon as someone hoists the import, so the check walks every import
statement, not only the module-level ones. Such a cycle is what once let kvbench.replay and its backends
import each other; the data path (spec -> resolve -> plan -> backend -> record) now only flows one way."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "kvbench"


def module_name(path: Path, package: Path = PACKAGE) -> str:
    parts = path.relative_to(package.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """module -> the kvbench modules it imports anywhere in its text."""
    paths = {module_name(p, package): p for p in package.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in paths}
    for name, path in paths.items():
        here = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                graph[name].update(a.name for a in node.names if a.name in paths)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = here.split(".")[: len(here.split(".")) - node.level + 1]
                    base = ".".join(up + ([node.module] if node.module else []))
                for alias in node.names:
                    target = f"{base}.{alias.name}"
                    if target in paths:
                        graph[name].add(target)
                    elif base in paths:
                        graph[name].add(base)
    for name in graph:
        graph[name].discard(name)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (iterative Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    top = stack.pop()
                    on_stack.discard(top)
                    component.append(top)
                    if top == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_no_import_cycles():
    found = cycles(import_graph())
    assert not found, "import cycles (break each by moving the shared piece to a module both can import): " + \
        "; ".join(" <-> ".join(c) for c in found)


def reaches(graph: dict[str, set[str]], start: str, goal: str) -> bool:
    seen: set[str] = set()
    todo = list(graph.get(start, ()))
    while todo:
        m = todo.pop()
        if m == goal:
            return True
        if m not in seen:
            seen.add(m)
            todo.extend(graph.get(m, ()))
    return False


def test_backends_do_not_import_the_command():
    # the command chains the data path; anything it calls reaching back into it is the old cycle returning
    graph = import_graph()
    for module in ("kvbench.sim.run", "kvbench.http.replay", "kvbench.record", "kvbench.plan", "kvbench.resolve",
                   "kvbench.spec", "kvbench.jobs", "kvbench.progress"):
        assert module in graph, f"{module} moved: update this test"
        assert not reaches(graph, module, "kvbench.replay"), f"{module} imports kvbench.replay (directly or not)"


def test_the_check_finds_a_cycle_hidden_in_a_function(tmp_path):
    pkg = tmp_path / "kvbench"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from kvbench.sub.b import thing\n")
    (pkg / "sub" / "b.py").write_text("def thing():\n    from ..a import x\n    return x\n")
    (pkg / "c.py").write_text("import kvbench.a\n")
    assert cycles(import_graph(pkg)) == [["kvbench.a", "kvbench.sub.b"]]
