"""The contracts between the layers, read from the code with ``ast``: one home per setting, typed results,
calls that name their arguments (issue 25).

Each check reads the tree as it is (nothing is imported but the options models), so a default written out
again, a use case, flow or task that returns a bare dict, or a long positional call fails here with its file and
line.
"""

from __future__ import annotations

import ast
import itertools
import re
from collections.abc import Iterator
from pathlib import Path

from pydantic import BaseModel

from ai_influencer.options import STAGE_OPTIONS, ImageOptions
from ai_influencer.options.fields import default_of
from tests.support.code_scan import REPO, SHIPPED, python_files

OPTIONS_HOME = REPO / "ai_influencer" / "options"
SCANNED = (*SHIPPED, "bench")  # the project's code; tests write values on purpose


def option_defaults() -> dict[str, list[object]]:
    """option field name -> the defaults it has in the options models (None left out: "not given")."""
    found: dict[str, list[object]] = {}
    models: list[type[BaseModel]] = [*STAGE_OPTIONS.values(), ImageOptions]
    for model in models:
        for name in model.model_fields:
            value = default_of(model, name)
            if value is not None and not isinstance(value, BaseModel | list | dict):
                found.setdefault(name, []).append(value)
    return found


DEFAULTS = option_defaults()


def same(value: object, default: object) -> bool:
    """A literal equal to a default: 80 and 80.0 alike, but True is not 1."""
    if isinstance(value, bool) or isinstance(default, bool):
        return type(value) is type(default) and value == default
    if isinstance(value, int | float) and isinstance(default, int | float):
        return float(value) == float(default)
    return type(value) is type(default) and value == default


def literal(node: ast.AST | None) -> tuple[bool, object]:
    if isinstance(node, ast.Constant):
        return True, node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub) and isinstance(node.operand, ast.Constant):
        return True, -node.operand.value  # type: ignore[operator]
    return False, None


def option_name(name: str) -> str:
    """``MINSIM_DEFAULT`` / ``DEFAULT_ASPECT_RATIO`` / ``per_scene`` -> the option field name they stand for."""
    low = name.lower()
    return low.removeprefix("default_").removesuffix("_default")


def shown(path: Path) -> str:
    return str(path.relative_to(REPO)) if REPO in path.parents else str(path)


def scopes(tree: ast.Module) -> Iterator[ast.AST]:
    """The statements of the module and of its classes (not of functions: a local ``n = 1`` is no setting)."""
    todo: list[ast.AST] = [tree]
    while todo:
        node = todo.pop()
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef):
                todo.append(child)
            elif isinstance(child, ast.Assign | ast.AnnAssign):
                yield child


def written_defaults(path: Path) -> Iterator[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))

    def hit(name: str, node: ast.AST | None, what: str) -> Iterator[str]:
        field = option_name(name)
        ok, value = literal(node)
        if ok and field in DEFAULTS and any(same(value, d) for d in DEFAULTS[field]):
            yield f"{shown(path)}:{getattr(node, 'lineno', 0)}: {what} {name}={value!r}"

    for node in scopes(tree):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            yield from hit(node.target.id, node.value, "field")
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    yield from hit(target.id, node.value, "constant")
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            for kw in node.keywords:
                if kw.arg:
                    yield from hit(kw.arg, kw.value, "keyword")
            args = node.args
            for a, b in itertools.pairwise(args):  # a form variable made with its default: var("minsim", 0.34)
                if isinstance(a, ast.Constant) and isinstance(a.value, str):
                    yield from hit(a.value, b, "widget default")
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            a = node.args
            positional = [*a.posonlyargs, *a.args]
            for arg, default in zip(positional[len(positional) - len(a.defaults) :], a.defaults, strict=True):
                yield from hit(arg.arg, default, "parameter default")
            for arg, default in zip(a.kwonlyargs, a.kw_defaults, strict=True):
                if default is not None:
                    yield from hit(arg.arg, default, "parameter default")
        elif isinstance(node, ast.Dict):
            for k, v in zip(node.keys, node.values, strict=True):
                if isinstance(k, ast.Constant) and isinstance(k.value, str):
                    yield from hit(k.value, v, "dict entry")


INPUT = re.compile(r"<input\b[^>]*>", re.I | re.S)
ATTR = re.compile(r'([\w-]+)\s*=\s*"([^"]*)"')


def html_defaults(path: Path) -> Iterator[str]:
    """A hub form field of an option with a value or bound of its own (they come from GET /api/options)."""
    text = path.read_text(encoding="utf-8")
    for m in INPUT.finditer(text):
        attrs = dict(ATTR.findall(m.group(0)))
        field = (attrs.get("data-option", "").partition(".")[2]) or attrs.get("id", "").replace("-", "_")
        if field not in DEFAULTS and "data-option" not in attrs:
            continue
        line = text.count("\n", 0, m.start()) + 1
        written = [k for k in ("value", "min", "max") if k in attrs]
        if written:
            yield f"{shown(path)}:{line}: <input> {field} writes {', '.join(written)}"


def test_the_scan_finds_what_it_is_meant_to_find(tmp_path: Path) -> None:
    probe = REPO / "bench" / "_probe_contracts.py"
    probe.write_text(
        "def f(per_scene: int = 12, *, minblur=80): ...\n"
        "f(minsim=0.34)\nopts = {'num_aug': 1}\nvar('minsim', 0.34)\nMINSIM_DEFAULT = 0.34\n"
        "ok = f(per_scene=4, minsim=0.5, flag=True)\n"
    )
    try:
        found = list(written_defaults(probe))
    finally:
        probe.unlink()
    assert len(found) == 6, found  # per_scene, minblur, minsim keyword, num_aug, widget default, constant
    page = tmp_path / "p.html"
    page.write_text('<input id="per-scene" type="number" value="12">\n<input id="token" value="x">')
    assert len(list(html_defaults(page))) == 1


def test_every_option_default_is_written_once() -> None:
    """Outside ``ai_influencer/options/`` no code writes an option's default: it reads the options model."""
    found = [
        line for path in python_files(*SCANNED) if OPTIONS_HOME not in path.parents for line in written_defaults(path)
    ]
    found += [
        line for path in sorted((REPO / "interfaces" / "hub" / "static").glob("*.html")) for line in html_defaults(path)
    ]
    assert not found, "read these from the options model (ai_influencer.options):\n" + "\n".join(found)


# ---- typed results, named arguments (issue 25 §2) ------------------------------------------------------
ORCHESTRATION = ("flows", "tasks")  # where stage results and calls cross the layers
USECASES = "ai_influencer/usecases"  # what every entry point calls: its results are the stages' results
USECASES_MODULE = USECASES.replace("/", ".")
# Functions whose dict is JSON by nature, not a stage result: Prefect's own parameters and REST answers.
DICT_ALLOWED = {
    ("flows/params.py", "current_params"),
    ("flows/api.py", "trigger_deployment"),
    ("flows/api.py", "wait_for_run"),
}
RESULT_MODELS = {"results.py"}  # the typed results themselves (their ``shown``: a dict for a log line)
MAX_POSITIONAL = 4
LOG_CALLS = {"debug", "info", "warning", "error", "exception"}  # printf-style: the arguments follow the format


DICT_ROWS = re.compile(r"^(?:list|tuple|Sequence|Iterator|Iterable)\[(?:dict|Dict)\b")  # rows read by key


def returns_dict(node: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    ann = node.returns
    if isinstance(ann, ast.Constant) and isinstance(ann.value, str):  # a string annotation
        ann = ast.parse(ann.value, mode="eval").body
    if ann is not None and DICT_ROWS.match(ast.unparse(ann)):
        return True
    if isinstance(ann, ast.Subscript):
        ann = ann.value
    return isinstance(ann, ast.Name) and ann.id in {"dict", "Dict"}


def dict_returns(path: Path) -> Iterator[str]:
    rel = shown(path)
    if path.name in RESULT_MODELS:
        return
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and (rel, node.name) not in DICT_ALLOWED:
            if returns_dict(node):
                yield f"{rel}:{node.lineno}: {node.name} returns a dict"
            for ret in ast.walk(node):
                if isinstance(ret, ast.Return) and isinstance(ret.value, ast.Dict | ast.DictComp):
                    yield f"{rel}:{ret.lineno}: {node.name} returns a dict literal"


def long_positional_calls(path: Path) -> Iterator[str]:
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Call) and not (isinstance(node.func, ast.Attribute) and node.func.attr in LOG_CALLS):
            positional = [a for a in node.args if not isinstance(a, ast.Starred)]
            if len(positional) > MAX_POSITIONAL:
                name = ast.unparse(node.func)
                yield f"{shown(path)}:{node.lineno}: {name} with {len(positional)} positional arguments"


def usecase_names(tree: ast.Module) -> set[str]:
    """The local names a module binds to ``ai_influencer.usecases`` or anything imported from it."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "ai_influencer":
                names.update(a.asname or a.name for a in node.names if a.name == "usecases")
            elif node.module == USECASES_MODULE or node.module.startswith(USECASES_MODULE + "."):
                names.update(a.asname or a.name for a in node.names)
        elif isinstance(node, ast.Import):
            names.update(a.asname for a in node.names if a.asname and a.name.startswith(USECASES_MODULE))
    return names


def long_positional_usecase_calls(path: Path) -> Iterator[str]:
    """Calls into a use case (``usecases.x(...)``, ``usecase.x(...)``, an imported use-case name) with more than
    four positional arguments, wherever they are made."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = usecase_names(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            root = node.func
            while isinstance(root, ast.Attribute):
                root = root.value
            positional = [a for a in node.args if not isinstance(a, ast.Starred)]
            name = ast.unparse(node.func)
            into = (isinstance(root, ast.Name) and root.id in names) or name.startswith(USECASES_MODULE + ".")
            if into and len(positional) > MAX_POSITIONAL:
                yield f"{shown(path)}:{node.lineno}: {name} with {len(positional)} positional arguments"


def test_the_result_scans_find_what_they_are_meant_to_find(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text(
        "def a() -> dict: ...\ndef b() -> 'dict[str, int]': ...\ndef c():\n    return {'k': 1}\n"
        "def rows() -> list[dict[str, Any]]: ...\ndef lines() -> list[Line]: ...\n"
        "def d() -> Result: ...\nf(1, 2, 3, 4, 5)\nf(1, 2, 3, 4, e=5)\nf(*xs)\nlog.info('%s %s %s %s', 1, 2, 3, 4)\n"
    )
    assert len(list(dict_returns(probe))) == 4
    assert len(list(long_positional_calls(probe))) == 1
    caller = tmp_path / "caller.py"
    caller.write_text(
        "from ai_influencer import usecases\nfrom ai_influencer.usecases import video as uc\n"
        "from ai_influencer.usecases.evaluate import best_among as pick\nfrom other import thing\n"
        "usecases.train(1, 2, 3, 4, 5)\nuc.summary(1, 2, 3, 4, 5, 6)\npick(1, 2, 3, 4, 5)\n"
        "thing(1, 2, 3, 4, 5)\nusecases.train(1, 2, 3, 4, e=5)\n"
        "import ai_influencer.usecases.train\nai_influencer.usecases.train.train(1, 2, 3, 4, 5)\n"
    )
    assert len(list(long_positional_usecase_calls(caller))) == 4


def test_use_cases_flows_and_tasks_return_typed_results() -> None:
    """A use case, flow or task returns a model (``usecases.results``, ``tasks.results``, ``flows.results``),
    never a dict read by key: the CLI, the hub and the tasks read the same use-case result."""
    found = [line for path in python_files(*ORCHESTRATION, USECASES) for line in dict_returns(path)]
    assert not found, (
        "return a typed result (ai_influencer/usecases/results.py, tasks/results.py, flows/results.py):\n"
        + "\n".join(found)
    )


def test_long_calls_name_their_arguments() -> None:
    """More than four arguments are passed by keyword (in flows, tasks and use cases, and in every call into a
    use case): nine positional ones were swapped unnoticed."""
    found = [line for path in python_files(*ORCHESTRATION, USECASES) for line in long_positional_calls(path)]
    found += [line for path in python_files(*SHIPPED, "bench") for line in long_positional_usecase_calls(path)]
    assert not found, "pass these by keyword:\n" + "\n".join(found)
