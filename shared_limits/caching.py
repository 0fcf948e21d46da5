"""Cache keys for the stage tasks, and cached results that are checked against their outputs.

Why content, not mtimes: copying or touching files must not invalidate a cache, while any
changed, added or removed input must. Why the code version in every key: a result computed by
older code (another QC rule, another caption format) must not come back after an upgrade. Why
outputs are checked: a cached summary says "QC done", but if ``data/qc_passed`` was deleted
since, returning it let augment run on a missing folder; such a result is recomputed.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ai_influencer
from ai_influencer.dataset.manifest import MANIFEST_NAME
from ai_influencer.dataset.workspace import REPORT_NAME
from ai_influencer.io import file_sha256

# Files every run rewrites (derived outputs): they must not change an input fingerprint.
DERIVED_FILES = frozenset({MANIFEST_NAME, REPORT_NAME})
ROOT = Path(__file__).resolve().parents[1]


@functools.cache
def code_version() -> str:
    """The package version plus a digest of the domain's, the tasks' and this package's sources (an editable
    install changes code without changing the version). ``tasks`` is read as files: this layer is below it."""
    h = hashlib.sha256(ai_influencer.__version__.encode())
    for folder in (Path(ai_influencer.__file__).parent, ROOT / "tasks", Path(__file__).parent):
        for src in sorted(folder.rglob("*.py")):
            h.update(src.relative_to(folder.parent).as_posix().encode())
            h.update(src.read_bytes())
    return h.hexdigest()[:16]


def fingerprint(*paths: Path | str | None, extra: Any = None) -> str:
    """Content fingerprint of input files/folders, parameters and the code version, for cache keys."""
    h = hashlib.sha256(repr((code_version(), extra)).encode())
    for p in paths:
        if p is None:
            continue
        path = Path(p)
        files = sorted(f for f in path.iterdir() if f.is_file()) if path.is_dir() else [path]
        for f in files:
            if f.name in DERIVED_FILES:
                continue
            if f.is_file():
                h.update(f"{f.name}:{f.stat().st_size}:{file_sha256(f)};".encode())
            else:
                h.update(f"missing:{f}".encode())
    return h.hexdigest()


def outputs_record(files: list[Path] | list[str]) -> dict[str, int]:
    """What a task produced, as ``{path: size}``: returned with its result, checked on a cache hit."""
    return {str(f): Path(f).stat().st_size for f in files}


def missing_outputs(result: Any) -> list[str]:
    """The outputs a (maybe cached) result lists that are gone or changed size."""
    recorded = result.get("outputs") if isinstance(result, dict) else getattr(result, "outputs", None)
    if not isinstance(recorded, dict):
        return []
    gone = []
    for name, size in recorded.items():
        path = Path(name)
        if not path.is_file() or path.stat().st_size != size:
            gone.append(name)
    return gone


def call_with_intact_outputs(task: Any, *args: Any, log: Callable[[str], None] | None = None, **kwargs: Any) -> Any:
    """Call a cached task; if the result it returns lists outputs that are gone, run it again for real."""
    result = task(*args, **kwargs)
    gone = missing_outputs(result)
    if gone:
        if log is not None:
            log(f"{task.name}: {len(gone)} output(s) of the cached result are gone (e.g. {gone[0]}); running it again")
        result = task.with_options(refresh_cache=True)(*args, **kwargs)
    return result
