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


def test_the_docker_image_gets_every_package_the_project_ships() -> None:
    """The image installs from a copy of the sources, not from the wheel's file list: a package left out of
    its COPY lines installs fine and fails only when a container imports it (the hub image once did)."""
    import tomllib

    patterns = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    packages = {p.rstrip("*") for p in patterns["include"]}
    assert packages == set(LAYERS), "pyproject ships other packages than the layers know"
    copied = {
        line.split()[1]
        for line in (REPO / "docker" / "Dockerfile").read_text().splitlines()
        if line.startswith("COPY ") and not line.split()[1].startswith("$")
    }
    assert packages <= copied, f"docker/Dockerfile copies no {sorted(packages - copied)}"
