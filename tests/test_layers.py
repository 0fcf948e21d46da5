"""The layers of docs/architecture.md: imports point downwards only."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import REPO

LAYERS = {"ai_influencer": 0, "blocks": 1, "tasks": 1, "flows": 1, "interfaces": 2}
FORBIDDEN_IN_DOMAIN = {"prefect", "flows", "tasks", "blocks", "interfaces"}


def imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            roots |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def test_imports_point_downwards_only() -> None:
    wrong = []
    for package, level in LAYERS.items():
        for path in sorted((REPO / package).rglob("*.py")):
            roots = imported_roots(path)
            if package == "ai_influencer":
                bad = roots & FORBIDDEN_IN_DOMAIN
            else:
                bad = {r for r in roots if LAYERS.get(r, -1) > level}
            wrong += [f"{path.relative_to(REPO)} imports {b}" for b in sorted(bad)]
    assert not wrong, "\n".join(wrong)
