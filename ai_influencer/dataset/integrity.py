"""Find images on disk that do not decode, and move them aside.

Why: before full-decode checks, a truncated JPEG from the provider was saved as a finished
image, and every later run skipped it as done. Moving such a file to ``.quarantine/`` (with
its sidecar) makes the next ``generate`` produce it again; a damaged file in a derived
folder (qc_passed, augment) is rebuilt by its stage.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ai_influencer.dataset.manifest import IMAGE_SUFFIXES
from ai_influencer.imaging import IncompleteImageError, verify_image_file
from ai_influencer.io import quarantine


@dataclass(frozen=True)
class DamagedImage:
    path: Path
    reason: str
    moved_to: Path | None = None


def iter_images(folder: Path) -> Iterator[Path]:
    """Image files under ``folder`` (recursively), outside any quarantine folder."""
    if not folder.is_dir():
        return
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and ".quarantine" not in path.parts:
            yield path


def find_damaged(folders: Iterable[Path]) -> list[DamagedImage]:
    """Every image under ``folders`` that does not fully decode."""
    found = []
    for folder in folders:
        for path in iter_images(folder):
            try:
                verify_image_file(path)
            except IncompleteImageError as exc:
                found.append(DamagedImage(path, str(exc).removeprefix(f"{path}: ")))
    return found


def quarantine_damaged(folders: Iterable[Path]) -> list[DamagedImage]:
    """Move every damaged image (and a generation sidecar next to it) into ``.quarantine/``."""
    moved = []
    for item in find_damaged(folders):
        target = quarantine(item.path, item.reason)
        side = item.path.with_suffix(".json")
        if side.is_file():
            quarantine(side, f"sidecar of {item.path.name}: {item.reason}")
        moved.append(DamagedImage(item.path, item.reason, target))
    return moved
