#!/usr/bin/env python
"""A small mutation tester for kvbench: how many deliberately planted bugs do the fast tests catch?

Every mutant is one small change to one source file, made on the syntax tree and spliced into the file's
text (everything else stays byte for byte):

- comparisons: ``<`` <-> ``<=``, ``>`` <-> ``>=``, ``==`` <-> ``!=``, ``is`` <-> ``is not``, ``in`` <-> ``not in``
- arithmetic (also ``+=`` and friends): ``+`` <-> ``-``, ``*`` <-> ``/``, ``//`` -> ``/``, ``%`` -> ``*``,
  ``**`` -> ``*``, ``<<`` <-> ``>>``, ``&`` <-> ``|``, ``^`` -> ``|``
- boolean: ``and`` <-> ``or``; ``not x`` -> ``x``; ``-x`` -> ``x``; the condition of an ``if``, ``while`` or
  conditional expression negated
- constants: an integer n -> n + 1 and n - 1; a float x -> 2x (1.0 for 0.0); ``True`` <-> ``False``
- statements: an expression statement, assignment, ``del``, ``raise`` or ``return`` replaced by ``pass``
  (``return x`` also by ``return None``); ``break`` <-> ``continue``; ``min`` <-> ``max``

Strings, docstrings, annotations, imports and lines marked ``# pragma: no mutate`` are left alone.

The tree under test is never touched: the sources are copied to a temporary directory, each mutant is written
there, and the tests that cover the mutated file run there (``pytest -x``, stopping at the first failure)
with a timeout. A mutant is *killed* when a test fails or the run times out (the mutant loops), *survives*
otherwise. Survivors that cannot be told apart from the original by any test are judged *equivalent* in
``scripts/mutation_equivalent.txt`` (one ``key || reason`` a line); they are listed with their reasons and
left out of the score: killed / (mutants - equivalent).

Usage (from the repository root):

    python scripts/mutation.py --max-per-file 80        # the default files (default_files()), at most 80
                                                        # mutants each (seeded sample): ~1,000, 1-2 h on 2 cores
    python scripts/mutation.py                          # every mutant of the default files (~2,000)
    python scripts/mutation.py kvbench/routing/cache_aware.py   # some files, each with COVERING's tests
    python scripts/mutation.py --list kvbench/cache/lru.py      # print the mutants' keys, run nothing
    python scripts/mutation.py --source /tmp/snapshot   # mutate a copy of another tree, e.g. HEAD exported
                                                        # with `git archive HEAD | tar -x -C /tmp/snapshot`
                                                        # while the working tree is being edited

This is a benchmark of the test suite, run on demand; it is not part of the test run.
"""

from __future__ import annotations

import argparse
import ast
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EQUIVALENT_FILE = Path(__file__).resolve().parent / "mutation_equivalent.txt"

# Mutated by default: every eviction policy, every router and the simulator's scheduling.


def default_files(root: Path = ROOT) -> list[str]:
    files = [str(p.relative_to(root)) for pattern in ("kvbench/cache/*.py", "kvbench/routing/*.py")
             for p in sorted(root.glob(pattern))]
    return files + ["kvbench/sim/engine.py"]


# The fast tests that exercise each file (longest matching prefix wins). Folders are expanded to their test
# files, run with the precise fast ones first and the slow ones last, so that with -x a mutant usually dies
# in a second or two; only survivors pay for the whole set.
FIRST = ("test_policy_models.py", "test_rlt_phases.py", "test_policy_registry.py", "test_scheduling.py",
         "test_engine_fidelity.py", "test_routing_basics.py", "test_lbgr_ext_exact.py")
LAST = ("test_properties.py", "test_belady_bound.py", "test_prefix_growth.py")  # hypothesis, belady, vLLM
COVERING = {
    "kvbench/cache/": ["tests/cache", "tests/sim"],
    "kvbench/routing/": ["tests/routing", "tests/sim/test_simulator.py"],
    "kvbench/sim/engine.py": ["tests/sim"],
}
SKIP = ("test_calibrate.py",)  # wall-clock timing against a live server: not a fast test

# Imported once by the parent process, so each forked test run starts warm (kvbench itself is never
# imported by the parent: every child imports the mutated copy afresh).
WARM_IMPORTS = ("numpy", "pandas", "pyarrow", "pyarrow.parquet", "pytest", "hypothesis", "aiohttp", "typer",
                "rich", "pydantic", "scipy.optimize", "vllm")  # vllm: tests/cache/test_prefix_growth.py

COMPARE_SWAP = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Eq: ast.NotEq,
                ast.NotEq: ast.Eq, ast.Is: ast.IsNot, ast.IsNot: ast.Is, ast.In: ast.NotIn, ast.NotIn: ast.In}
ARITH_SWAP = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult, ast.FloorDiv: ast.Div,
              ast.Mod: ast.Mult, ast.Pow: ast.Mult, ast.LShift: ast.RShift, ast.RShift: ast.LShift,
              ast.BitAnd: ast.BitOr, ast.BitOr: ast.BitAnd, ast.BitXor: ast.BitOr}


@dataclass
class Mutant:
    path: str  # relative to the repository root
    line: int
    key: str  # stable across unrelated edits: path::function::before -> after[#n]
    text: bytes  # the whole mutated file


# ------------------------------------------------------------------------------------------ generation
class _Finder(ast.NodeVisitor):
    """Collects (node, replacement node or source text, label) for every mutation point."""

    def __init__(self, skip_lines: set[int]):
        self.points: list[tuple[ast.AST, ast.AST | str, str, str]] = []  # node, replacement, scope, label
        self.scope: list[str] = []
        self.skip_lines = skip_lines

    def _add(self, node: ast.AST, new: ast.AST | str, label: str = "") -> None:
        if getattr(node, "lineno", None) in self.skip_lines:
            return
        self.points.append((node, new, ".".join(self.scope) or "<module>", label))

    # scopes, and what is never mutated
    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        self.scope.append(node.name)
        for stmt in node.body:
            self.visit(stmt)
        self.scope.pop()

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        self.scope.append(node.name)
        for d in node.args.defaults + [d for d in node.args.kw_defaults if d is not None]:
            self.visit(d)
        for stmt in node.body:
            self.visit(stmt)
        self.scope.pop()

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_Import(self, node: ast.AST) -> None:
        pass

    visit_ImportFrom = visit_Import

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        if node.value is not None:
            self._delete(node)
            self.visit(node.value)

    def visit_JoinedStr(self, node: ast.JoinedStr) -> None:
        pass  # messages

    # statements
    def _delete(self, node: ast.stmt) -> None:
        self._add(node, "pass", "delete")

    def visit_Expr(self, node: ast.Expr) -> None:
        if isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            return  # docstring
        self._delete(node)
        self.generic_visit(node)

    def visit_Assign(self, node: ast.Assign) -> None:
        if any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
            return
        self._delete(node)
        self.visit(node.value)
        for t in node.targets:
            self.visit(t)

    def visit_AugAssign(self, node: ast.AugAssign) -> None:
        self._delete(node)
        swap = ARITH_SWAP.get(type(node.op))
        if swap is not None:
            self._add(node, ast.AugAssign(target=node.target, op=swap(), value=node.value))
        self.visit(node.value)

    def visit_Delete(self, node: ast.Delete) -> None:
        self._delete(node)

    def visit_Raise(self, node: ast.Raise) -> None:
        self._delete(node)  # the message is not mutated

    def visit_Return(self, node: ast.Return) -> None:
        self._delete(node)
        if node.value is not None and not (isinstance(node.value, ast.Constant) and node.value.value is None):
            self._add(node, ast.Return(value=ast.Constant(None)))
            self.visit(node.value)

    def visit_Break(self, node: ast.Break) -> None:
        self._add(node, "continue")

    def visit_Continue(self, node: ast.Continue) -> None:
        self._add(node, "break")

    def visit_If(self, node: ast.If) -> None:
        if isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            return
        self._add(node.test, ast.UnaryOp(op=ast.Not(), operand=node.test), "negate")
        self.generic_visit(node)

    def visit_While(self, node: ast.While) -> None:
        self._add(node.test, ast.UnaryOp(op=ast.Not(), operand=node.test), "negate")
        self.generic_visit(node)

    def visit_IfExp(self, node: ast.IfExp) -> None:
        self._add(node.test, ast.UnaryOp(op=ast.Not(), operand=node.test), "negate")
        self.generic_visit(node)

    # expressions
    def visit_Compare(self, node: ast.Compare) -> None:
        for i, op in enumerate(node.ops):
            swap = COMPARE_SWAP.get(type(op))
            if swap is not None:
                ops = list(node.ops)
                ops[i] = swap()
                self._add(node, ast.Compare(left=node.left, ops=ops, comparators=node.comparators))
        self.generic_visit(node)

    def visit_BinOp(self, node: ast.BinOp) -> None:
        swap = ARITH_SWAP.get(type(node.op))
        if swap is not None:
            self._add(node, ast.BinOp(left=node.left, op=swap(), right=node.right))
        self.generic_visit(node)

    def visit_BoolOp(self, node: ast.BoolOp) -> None:
        other = ast.Or() if isinstance(node.op, ast.And) else ast.And()
        self._add(node, ast.BoolOp(op=other, values=node.values))
        self.generic_visit(node)

    def visit_UnaryOp(self, node: ast.UnaryOp) -> None:
        if isinstance(node.op, (ast.Not, ast.USub)):
            self._add(node, node.operand)
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        if isinstance(node.func, ast.Name) and node.func.id in ("min", "max"):
            other = "max" if node.func.id == "min" else "min"
            self._add(node, ast.Call(func=ast.Name(id=other, ctx=ast.Load()), args=node.args,
                                     keywords=node.keywords))
        self.generic_visit(node)

    def visit_Constant(self, node: ast.Constant) -> None:
        v = node.value
        if isinstance(v, bool):
            self._add(node, ast.Constant(not v))
        elif isinstance(v, int):
            self._add(node, ast.Constant(v + 1))
            self._add(node, ast.Constant(v - 1))
        elif isinstance(v, float):
            self._add(node, ast.Constant(v * 2 if v else 1.0))

    def visit_arg(self, node: ast.arg) -> None:
        pass  # annotations

    def visit_Subscript(self, node: ast.Subscript) -> None:
        self.generic_visit(node)


def _offsets(source: bytes) -> list[int]:
    starts = [0]
    for m in re.finditer(rb"\n", source):
        starts.append(m.end())
    return starts


def _render(new: ast.AST | str) -> str:
    if isinstance(new, str):
        return new
    text = ast.unparse(new)
    if isinstance(new, ast.Constant) and isinstance(new.value, (int, float)) and new.value < 0:
        return f"({text})"
    if isinstance(new, (ast.BoolOp, ast.BinOp, ast.Compare, ast.UnaryOp, ast.IfExp)):
        return f"({text})"
    return text


def mutants_of(path: str, root: Path = ROOT) -> list[Mutant]:
    source = (root / path).read_bytes()
    tree = ast.parse(source)
    skip = {i + 1 for i, line in enumerate(source.splitlines()) if b"pragma: no mutate" in line}
    finder = _Finder(skip)
    finder.visit(tree)
    starts = _offsets(source)
    original = ast.dump(tree)
    out: list[Mutant] = []
    seen: dict[str, int] = defaultdict(int)
    for node, new, scope, label in finder.points:
        a = starts[node.lineno - 1] + node.col_offset
        b = starts[node.end_lineno - 1] + node.end_col_offset
        text = source[:a] + _render(new).encode() + source[b:]
        try:
            mutated = ast.parse(text)
        except SyntaxError:
            continue
        if ast.dump(mutated) == original:
            continue  # not a change
        before = " ".join(source[a:b].decode().split())
        after = " ".join(_render(new).split())
        if len(before) > 70:
            before = before[:67] + "..."
        base = f"{path}::{scope}::{before} -> {after}"
        seen[base] += 1
        key = base if seen[base] == 1 else f"{base}#{seen[base]}"
        out.append(Mutant(path, node.lineno, key, text))
    return out


# ------------------------------------------------------------------------------------------- running
def covering_tests(path: str, extra: dict[str, list[str]], root: Path = ROOT) -> list[str]:
    table = {**COVERING, **extra}
    best = max((p for p in table if path.startswith(p)), key=len, default=None)
    if best is None:
        raise SystemExit(f"{path}: no covering tests known; pass --tests-for {path}=TESTS")
    files: list[str] = []
    for item in table[best]:
        if (root / item).is_dir():
            files += [str(f.relative_to(root)) for f in sorted((root / item).glob("test_*.py"))
                      if f.name not in SKIP]
        else:
            files.append(item)
    files = list(dict.fromkeys(files))

    def rank(f: str) -> int:
        name = Path(f).name
        return 0 if name in FIRST else 2 if name in LAST else 1

    return sorted(files, key=rank)  # stable: the given order within each rank


def copy_tree(source: Path, dest: Path) -> None:
    """The files the tests need, without caches and results."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache", ".hypothesis", "*.egg-info")
    for name in ("kvbench", "tests"):
        shutil.copytree(source / name, dest / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        if (source / name).exists():
            shutil.copy2(source / name, dest / name)


class Runner:
    """Runs pytest in ``work``: forked from a warm parent (fast), or as a fresh subprocess."""

    def __init__(self, work: Path, fork: bool, verbose: bool):
        self.work = work
        self.fork = fork and hasattr(os, "fork")
        self.verbose = verbose
        self.args = ["-x", "-q", "-p", "no:cacheprovider", "--no-header", "-m", "not vllm and not browser"]
        try:
            import hypothesis  # noqa: F401

            self.args += ["--hypothesis-seed=0"]  # the same examples for every mutant
        except ImportError:
            pass
        if self.fork:
            for mod in WARM_IMPORTS:
                try:
                    __import__(mod)
                except ImportError:
                    pass

    def run(self, tests: list[str], timeout: float) -> str:
        """'pass', 'fail' or 'timeout'."""
        shutil.rmtree(self.work / ".hypothesis", ignore_errors=True)
        if not self.fork:
            try:
                r = subprocess.run([sys.executable, "-m", "pytest", *self.args, *tests], cwd=self.work,
                                   env={**os.environ, "PYTHONPATH": str(self.work), "PYTHONDONTWRITEBYTECODE": "1"},
                                   stdout=None if self.verbose else subprocess.DEVNULL,
                                   stderr=None if self.verbose else subprocess.DEVNULL, timeout=timeout,
                                   check=False)
            except subprocess.TimeoutExpired:
                return "timeout"
            return "pass" if r.returncode == 0 else "fail"
        pid = os.fork()
        if pid == 0:  # child: run the tests against the copy and exit with pytest's status
            code = 3
            try:
                for sig in (signal.SIGALRM, signal.SIGTERM, signal.SIGINT):
                    signal.signal(sig, signal.SIG_DFL)
                signal.alarm(max(1, int(timeout)))
                os.chdir(self.work)
                sys.path.insert(0, str(self.work))
                sys.dont_write_bytecode = True
                if not self.verbose:
                    devnull = os.open(os.devnull, os.O_WRONLY)
                    os.dup2(devnull, 1)
                    os.dup2(devnull, 2)
                import pytest

                code = int(pytest.main([*self.args, *tests]))
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        if os.WIFSIGNALED(status):
            return "timeout" if os.WTERMSIG(status) == signal.SIGALRM else "fail"
        return "pass" if os.WEXITSTATUS(status) == 0 else "fail"


def read_equivalent(path: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    if not path.exists():
        return out
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, reason = line.partition("||")
        if not sep or not reason.strip():
            raise SystemExit(f"{path}: every entry needs 'key || reason': {raw!r}")
        out[key.strip()] = reason.strip()
    return out


def package_of(path: str) -> str:
    return "kvbench/sim/engine.py" if path == "kvbench/sim/engine.py" else str(Path(path).parent)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="*", help="source files to mutate (default: default_files() in the script)")
    ap.add_argument("--max-per-file", type=int, default=None, help="test a seeded sample of each file's mutants")
    ap.add_argument("--seed", type=int, default=0, help="seed of the sample")
    ap.add_argument("--tests-for", action="append", default=[], metavar="PREFIX=TEST[,TEST]",
                    help="covering tests for files starting with PREFIX")
    ap.add_argument("--timeout-factor", type=float, default=4.0,
                    help="a mutant's run may take this many times the unmutated run (+10 s)")
    ap.add_argument("--equivalent", type=Path, default=EQUIVALENT_FILE)
    ap.add_argument("--source", type=Path, default=ROOT,
                    help="tree to copy and mutate (default: this repository's working tree); e.g. a snapshot "
                         "made with `git archive HEAD | tar -x -C DIR` while others edit the working tree")
    ap.add_argument("--list", action="store_true", help="print the mutants' keys and lines, run nothing")
    ap.add_argument("--no-fork", action="store_true", help="a fresh interpreter per mutant (slower)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary copy")
    ap.add_argument("-v", "--verbose", action="store_true", help="show pytest's output")
    args = ap.parse_args(argv)

    source = args.source.resolve()
    files = args.files or default_files(source)
    for f in files:
        if not (source / f).is_file():
            raise SystemExit(f"{f}: no such file under {source}")
    extra: dict[str, list[str]] = {}
    for item in args.tests_for:
        prefix, _, tests = item.partition("=")
        extra[prefix] = [t for t in tests.split(",") if t]
    equivalent = read_equivalent(args.equivalent)

    plan: list[tuple[str, list[Mutant], int]] = []
    for f in files:
        ms = mutants_of(f, source)
        total = len(ms)
        if args.max_per_file is not None and total > args.max_per_file:
            rng = random.Random(f"{args.seed}:{f}")
            ms = sorted(rng.sample(ms, args.max_per_file), key=lambda m: (m.line, m.key))
        plan.append((f, ms, total))
    if args.list:
        for f, ms, total in plan:
            print(f"# {f}: {len(ms)} of {total} mutants")
            for m in ms:
                print(f"{m.line:5d}  {m.key}")
        return 0

    work = Path(tempfile.mkdtemp(prefix="kvbench-mutation-"))
    print(f"copy of {source} under test: {work} (the source tree is never modified)")

    def stop(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)  # `kill PID` prints the score so far, like Ctrl-C
    signal.signal(signal.SIGINT, stop)  # even when started in the background, where SIGINT is ignored
    results: dict[str, list[tuple[Mutant, str]]] = defaultdict(list)
    started = time.monotonic()
    try:
        copy_tree(source, work)
        runner = Runner(work, fork=not args.no_fork, verbose=args.verbose)
        baseline: dict[tuple[str, ...], float] = {}
        for f, _, _ in plan:
            tests = tuple(covering_tests(f, extra, source))
            if tests in baseline:
                continue
            t0 = time.monotonic()
            if runner.run(list(tests), timeout=900) != "pass":
                print(f"the unmutated copy fails {' '.join(tests)}: fix that first (re-run with -v to see why)")
                return 2
            baseline[tests] = time.monotonic() - t0
            print(f"baseline ({len(tests)} test files, {tests[0]} first): {baseline[tests]:.1f} s", flush=True)
        started = time.monotonic()
        count = sum(len(ms) for _, ms, _ in plan)
        done = 0
        for f, ms, total in plan:
            tests = covering_tests(f, extra, source)
            timeout = args.timeout_factor * baseline[tuple(tests)] + 10
            target = work / f
            original = target.read_bytes()
            sample = f" (sample of {total}, seed {args.seed})" if len(ms) < total else ""
            print(f"\n{f}: {len(ms)} mutants{sample}; {len(tests)} test files", flush=True)
            try:
                for m in ms:
                    target.write_bytes(m.text)
                    outcome = runner.run(tests, timeout)
                    results[f].append((m, outcome))
                    done += 1
                    if outcome == "pass":
                        mark = "equivalent" if m.key in equivalent else "SURVIVED"
                        print(f"  [{done}/{count}] {mark}: line {m.line}: {m.key}", flush=True)
                    elif done % 50 == 0:
                        print(f"  [{done}/{count}] {(time.monotonic() - started) / 60:.1f} min", flush=True)
            finally:
                target.write_bytes(original)
    except KeyboardInterrupt:
        print("\ninterrupted: the score below counts the mutants tested so far")
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    report(results, equivalent, time.monotonic() - started, args)
    return 0


def report(results: dict[str, list[tuple[Mutant, str]]], equivalent: dict[str, str], seconds: float,
           args: argparse.Namespace) -> None:
    by_package: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0, 0])  # mutants killed timeouts equiv surv
    survivors: list[Mutant] = []
    judged: list[tuple[Mutant, str]] = []
    for f, rows in results.items():
        row = by_package[package_of(f)]
        for m, outcome in rows:
            row[0] += 1
            if outcome == "fail":
                row[1] += 1
            elif outcome == "timeout":
                row[1] += 1
                row[2] += 1
            elif m.key in equivalent:
                row[3] += 1
                judged.append((m, equivalent[m.key]))
            else:
                row[4] += 1
                survivors.append(m)
    if judged:
        print("\nsurvivors judged equivalent (scripts/mutation_equivalent.txt):")
        for m, why in judged:
            print(f"  line {m.line}: {m.key}\n      {why}")
    if survivors:
        print("\nsurvivors (tests to write, or equivalents to judge):")
        for m in survivors:
            print(f"  line {m.line}: {m.key}")
    print(f"\n{'package':<24} {'mutants':>8} {'killed':>8} {'timeouts':>9} {'equivalent':>11} {'survived':>9} "
          f"{'score':>7}")
    totals = [0, 0, 0, 0, 0]
    for pkg in sorted(by_package):
        row = by_package[pkg]
        totals = [a + b for a, b in zip(totals, row)]
        print(_score_line(pkg, row))
    print(_score_line("all", totals))
    sampled = f", at most {args.max_per_file} per file (seed {args.seed})" if args.max_per_file else ""
    print(f"\n{sum(len(r) for r in results.values())} mutants in {seconds / 60:.1f} min{sampled}; "
          f"score = killed (timeouts included) / (mutants - equivalent)")


def _score_line(name: str, row: list[int]) -> str:
    mutants, killed, timeouts, equiv, surv = row
    denom = mutants - equiv
    score = f"{100.0 * killed / denom:.1f}%" if denom else "-"
    return f"{name:<24} {mutants:>8} {killed:>8} {timeouts:>9} {equiv:>11} {surv:>9} {score:>7}"


if __name__ == "__main__":
    sys.exit(main())
