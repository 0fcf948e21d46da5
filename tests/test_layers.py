"""The layers of docs/architecture.md: imports point downwards only, inside the domain too, and never in circles.

The import graph is read with ``ast`` (tests/support/code_scan.py): every import counts, function-level ones
included; one under ``if TYPE_CHECKING:`` is no runtime edge but must respect the levels all the same, and
it counts for the cycle check too (a module pair that names each other is a circle for its readers).
"""

from __future__ import annotations

import ast
import tomllib

from tests.support.code_scan import REPO, SHIPPED, cycles, external_roots, import_graph, imports_of, modules

# One level per layer, from the top down (a layer imports only from the layers below it).
LAYERS = {"interfaces": 5, "flows": 4, "tasks": 3, "shared_limits": 2, "blocks": 1, "ai_influencer": 0}
FORBIDDEN_IN_DOMAIN = {"prefect", "prefect_docker", "fastapi", "typer", "tkinter"}

# The domain's own levels, from the bottom up. A unit is a module or subpackage right under ai_influencer/
# ("" is the package itself). A unit imports only from its own level or the levels below, and the units
# never import each other in a circle (checked below, like the modules). docs/architecture.md draws these.
DOMAIN_LEVELS: list[tuple[str, set[str]]] = [
    ("base", {"", "settings", "io", "imaging", "costs", "pacing", "adaptive_pacing", "prompt_bank", "options"}),
    ("services", {"openrouter", "vision", "storyboard"}),
    ("data", {"dataset"}),
    ("stages", {"qc", "generation", "training"}),
    ("on stages", {"review", "video", "analytics", "insights"}),
    ("use cases", {"usecases", "diagnostics"}),
]
DOMAIN_LEVEL = {unit: n for n, (_, units) in enumerate(DOMAIN_LEVELS) for unit in units}

# What a flow may use of the domain: the use cases (and their options and results), the settings and the
# workspace layout. The rules live behind the use cases; a flow only orchestrates them.
FLOW_DOMAIN_IMPORTS = ("ai_influencer.usecases", "ai_influencer.options", "ai_influencer.settings",
                       "ai_influencer.dataset.workspace")  # fmt: skip


def level_name(level: int) -> str:
    return repr(DOMAIN_LEVELS[level][0]) if level >= 0 else "'none'"


def layer(module: str) -> str:
    return module.split(".")[0]


def unit(module: str) -> str:
    """The domain unit of an ``ai_influencer`` module."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_every_domain_unit_has_a_level() -> None:
    units = {unit(m) for m in modules() if layer(m) == "ai_influencer"}
    assert units <= set(DOMAIN_LEVEL), f"give these domain units a level: {sorted(units - set(DOMAIN_LEVEL))}"
    assert set(DOMAIN_LEVEL) <= units, f"levels name units that do not exist: {sorted(set(DOMAIN_LEVEL) - units)}"


def test_imports_point_downwards_only() -> None:
    """Between layers, and between the domain's levels; typing-only imports included."""
    wrong: set[str] = set()
    known = modules()
    for module in sorted(known):
        for imp in imports_of(module, known):
            where = f"{known[module].relative_to(REPO)}:{imp.line} imports {imp.target}"
            if LAYERS[layer(imp.target)] > LAYERS[layer(module)]:
                wrong.add(f"{where} (layer {layer(imp.target)} is above {layer(module)})")
            elif layer(module) == layer(imp.target) == "ai_influencer":
                high, low = DOMAIN_LEVEL.get(unit(imp.target), -1), DOMAIN_LEVEL.get(unit(module), -1)
                if high > low:
                    wrong.add(f"{where} (domain level {level_name(high)} is above {level_name(low)})")
    assert not wrong, "\n".join(sorted(wrong))


def test_the_domain_imports_no_orchestration_and_no_interface_library() -> None:
    wrong = []
    for path in sorted((REPO / "ai_influencer").rglob("*.py")):
        bad = external_roots(path) & (FORBIDDEN_IN_DOMAIN | set(LAYERS) - {"ai_influencer"})
        wrong += [f"{path.relative_to(REPO)} imports {b}" for b in sorted(bad)]
    assert not wrong, "\n".join(wrong)


def test_no_import_cycles_between_modules() -> None:
    found = cycles(import_graph())
    assert not found, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_no_cycles_between_domain_units_or_packages() -> None:
    """Folder loops (qc -> dataset -> openrouter -> vision -> qc) hide behind acyclic modules: check the units."""
    graph: dict[str, set[str]] = {}
    for module, targets in import_graph().items():
        if layer(module) != "ai_influencer":
            continue
        src = unit(module)
        graph.setdefault(src, set()).update(unit(t) for t in targets if layer(t) == "ai_influencer" and unit(t) != src)
    found = cycles(graph)
    assert not found, "loops between domain units:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_flows_reach_the_domain_through_its_use_cases() -> None:
    wrong: set[str] = set()
    known = modules()
    for module in sorted(m for m in known if layer(m) == "flows"):
        for imp in imports_of(module, known):
            if layer(imp.target) == "ai_influencer" and not imp.target.startswith(FLOW_DOMAIN_IMPORTS):
                wrong.add(f"{known[module].relative_to(REPO)}:{imp.line} imports {imp.target}")
    assert not wrong, "a flow orchestrates use cases; move the rule behind one:\n" + "\n".join(sorted(wrong))


def test_the_docker_image_gets_every_package_the_project_ships() -> None:
    """The image installs from a copy of the sources, not from the wheel's file list: a package left out of
    its COPY lines installs fine and fails only when a container imports it (the hub image once did)."""
    patterns = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    packages = {p.rstrip("*") for p in patterns["include"]}
    assert packages == set(LAYERS) == set(SHIPPED), "pyproject ships other packages than the layers know"
    copied = {
        line.split()[1]
        for line in (REPO / "docker" / "Dockerfile").read_text().splitlines()
        if line.startswith("COPY ") and not line.split()[1].startswith("$")
    }
    assert packages <= copied, f"docker/Dockerfile copies no {sorted(packages - copied)}"


def test_every_folder_of_a_shipped_package_is_a_package() -> None:
    """setuptools ships only folders with an ``__init__.py``: a new folder without one imports here (a namespace
    package) and is missing from the wheel and the Docker image."""
    missing = sorted(
        str(folder.relative_to(REPO))
        for package in SHIPPED
        for folder in [REPO / package, *(REPO / package).rglob("*")]
        if folder.is_dir() and any(folder.glob("*.py")) and not (folder / "__init__.py").is_file()
    )
    assert not missing, f"add an __init__.py to {missing}"


def test_bench_imports_its_helpers_as_modules() -> None:
    """``bench`` is a package run as ``python -m bench.x``: its helpers (``tests.support``, ``bench.*``) import as
    modules; a ``sys.path`` edit made a bench work only from one folder and hid a missing package."""
    bench = REPO / "bench"
    assert (bench / "__init__.py").is_file()
    edits = [
        f"{path.relative_to(REPO)}:{node.lineno}"
        for path in sorted(bench.glob("*.py"))
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.Attribute) and node.attr == "path" and ast.unparse(node.value) == "sys"
    ]
    assert not edits, f"no sys.path edits in bench/ (run it as python -m bench.x): {edits}"
