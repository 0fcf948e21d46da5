"""The project's own modules and their imports, read with ``ast`` (nothing is imported).

Shared by the structure tests (tests/test_layers.py, tests/test_contracts.py): one reading of the tree,
so the layer order, the cycle check and the contract scans cannot disagree about what a module imports.
"""

from __future__ import annotations

import ast
import functools
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# The packages the project ships (pyproject's packages), from the top layer down.
SHIPPED = ("interfaces", "flows", "tasks", "shared_limits", "blocks", "ai_influencer")


@dataclass(frozen=True)
class Import:
    """One import statement's target module, as the importing module names it."""

    target: str  # the project module it resolves to (the longest existing prefix of what it names)
    line: int
    typing_only: bool  # under ``if TYPE_CHECKING:``: no runtime edge, but it must respect the levels
    in_function: bool


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


@functools.cache
def modules(packages: tuple[str, ...] = SHIPPED) -> dict[str, Path]:
    """Every module of ``packages``: dotted name -> file."""
    found: dict[str, Path] = {}
    for package in packages:
        for path in sorted((REPO / package).rglob("*.py")):
            found[module_name(path)] = path
    return found


def python_files(*folders: str) -> list[Path]:
    """The project's Python files under ``folders`` (the whole tracked tree's code when none are given)."""
    roots = folders or (*SHIPPED, "bench", "tests")
    return [p for root in roots for p in sorted((REPO / root).rglob("*.py")) if ".venv" not in p.parts]


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _resolve(name: str, known: dict[str, Path]) -> str | None:
    while name:
        if name in known:
            return name
        name = name.rpartition(".")[0]
    return None


def imports_of(module: str, known: dict[str, Path] | None = None) -> list[Import]:
    """What ``module`` imports from the project, function-level imports included.

    ``from pkg import name`` counts as an import of ``pkg.name`` when that is a module, else of ``pkg``.
    A module's implicit import of its own parent packages is not counted (every submodule has it).
    """
    known = known if known is not None else modules()
    path = known[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: list[Import] = []

    def visit(node: ast.AST, typing_only: bool, in_function: bool) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                visit(child, True, in_function)
            for child in node.orelse:
                visit(child, typing_only, in_function)
            return
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            in_function = True
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                sub = _resolve(f"{source}.{alias.name}", known)
                targets.append(sub if sub == f"{source}.{alias.name}" else source)
        for target in targets:
            resolved = _resolve(target, known)
            if resolved is not None and resolved != module:
                found.append(Import(resolved, getattr(node, "lineno", 0), typing_only, in_function))
        for child in ast.iter_child_nodes(node):
            visit(child, typing_only, in_function)

    visit(ast.parse(path.read_text(encoding="utf-8")), False, False)
    return found


def external_roots(path: Path) -> set[str]:
    """The top-level names of every module ``path`` imports (absolute imports only)."""
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            roots |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def import_graph(known: dict[str, Path] | None = None) -> dict[str, set[str]]:
    """module -> the project modules it imports (every import: runtime, function-level and typing-only)."""
    known = known if known is not None else modules()
    return {m: {i.target for i in imports_of(m, known)} for m in known}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one member (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.get(root, ()))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            advanced = False
            for child in children:
                if child not in graph:
                    continue
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                    advanced = True
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            if advanced:
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found
