"""The package's floors: a module imports only from its own floor or the floors below.

Bottom up: the kernel (errors, version, registry, config schema and loader, core types) ->
storage, llm, tracing -> targets, evaluation -> society -> engine -> reporting -> api (``optimize()``) -> cli.
``python tests/test_layers.py`` prints every import that runs back up, by file.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "convergence"

FLOORS: list[tuple[str, ...]] = [
    ("errors", "_version", "registry", "config", "core"),
    ("storage", "llm", "tracing"),
    ("targets", "evaluation"),
    ("society",),
    ("engine",),
    ("reporting",),
    ("api",),
    ("cli", "__main__"),
]
"""Top-level parts of ``convergence`` per floor, bottom first."""

SHIMS = {"plugins"}
"""Old import paths kept for users (``convergence.plugins.learning.rlp``, ``.registry``): re-exports only."""

MAX_UPWARD = 0


def floor_of(module: str) -> int | None:
    parts = module.split(".")
    if parts[0] != "convergence" or len(parts) == 1:
        return None  # the package root re-exports lazily from every floor
    for i, names in enumerate(FLOORS):
        if parts[1] in names:
            return i
    return None


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST, package: str) -> list[tuple[int, str, bool]]:
    """(line, imported module, at module level) for every runtime import (not under ``TYPE_CHECKING``)."""
    out: list[tuple[int, str, bool]] = []

    def visit(node: ast.AST, top: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for sub in child.orelse:
                    visit(sub, top)
                continue
            if isinstance(child, ast.Import):
                out.extend((child.lineno, a.name, top) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - child.level + 1] + [base])
                out.append((child.lineno, base.rstrip("."), top))
            nested = isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            visit(child, top and not nested)

    visit(tree, True)
    return out


def upward_imports() -> list[str]:
    """``file:line imports module (floor a -> b)`` for each import that runs back up the floors."""
    found = []
    for path in sorted(ROOT.rglob("*.py")):
        name = _module_name(path)
        if name.split(".")[1:2] and name.split(".")[1] in SHIMS:
            continue
        mine = floor_of(name)
        if mine is None:
            continue
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        for line, target, _ in _imports(ast.parse(path.read_text()), package):
            theirs = floor_of(target)
            if theirs is not None and theirs > mine:
                found.append(f"{path.relative_to(ROOT.parent)}:{line} imports {target} (floor {mine} -> {theirs})")
    return found


def import_cycles() -> list[list[str]]:
    """Cycles among module-level imports (what Python runs when a module is first imported)."""
    graph: dict[str, set[str]] = {}
    modules = {_module_name(p): p for p in ROOT.rglob("*.py")}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        deps = graph.setdefault(name, set())
        for _, target, top in _imports(ast.parse(path.read_text()), package):
            if top and target in modules and target != name and not target.startswith(name + "."):
                deps.add(target)
    # Tarjan's strongly connected components
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    cycles: list[list[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    sys.setrecursionlimit(10_000)
    for v in sorted(graph):
        if v not in index:
            strong(v)
    return cycles


def test_no_module_imports_from_a_floor_above_its_own() -> None:
    found = upward_imports()
    assert len(found) <= MAX_UPWARD, "imports that run back up the floors:\n" + "\n".join(found)


def test_the_package_has_no_import_cycle() -> None:
    assert import_cycles() == []


@pytest.mark.parametrize(
    ("module", "floor"),
    [("convergence.config.models", 0), ("convergence.core.space", 0), ("convergence.registry", 0),
     ("convergence.storage.store", 1), ("convergence.tracing", 1), ("convergence.llm.agent_client", 1),
     ("convergence.targets.factory", 2), ("convergence.evaluation.scorer", 2),
     ("convergence.society.society", 3), ("convergence.engine.loop", 4)],
)
def test_importing_a_floor_loads_nothing_from_the_floors_above(module: str, floor: int) -> None:
    """In a fresh interpreter: what a user imports pulls in only its own floor and those below."""
    code = (
        f"import sys, {module}\n"
        "print('\\n'.join(m for m in sys.modules if m.startswith('convergence.')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    above = [m for m in out.split() if (f := floor_of(m)) is not None and f > floor]
    assert above == [], f"importing {module} loaded modules of higher floors: {above}"


if __name__ == "__main__":
    ups = upward_imports()
    print(f"{len(ups)} import(s) run back up the floors")
    for line in ups:
        print("  " + line)
    cycles = import_cycles()
    print(f"{len(cycles)} import cycle(s) among module-level imports")
    for c in cycles:
        print("  " + " <-> ".join(c))
