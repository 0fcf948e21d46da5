"""Prefect artifacts the tasks publish: inline images, progress bars.

Why inline, scaled-down JPEGs: artifacts are stored in the Prefect database and shown in its UI,
which cannot read files on a worker's disk.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path

from PIL import Image
from prefect import get_run_logger
from prefect.artifacts import create_progress_artifact, update_progress_artifact


def inline_jpeg(path: Path, max_side: int) -> str:
    with Image.open(path) as im:
        im = im.convert("RGB")
        im.thumbnail((max_side, max_side))
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=70)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def sheet_markdown(sheet: Path, title: str) -> str:
    return f"### {title}\n\n![contact sheet]({inline_jpeg(sheet, 1200)})\n\nFull size: `{sheet}`"


def samples_markdown(images: list[Path], title: str) -> str:
    shown = " ".join(f"![{p.name}]({inline_jpeg(p, 256)})" for p in images)
    return f"### {title}\n\n{shown}\n\nFiles: " + ", ".join(f"`{p}`" for p in images)


class ProgressArtifact:
    """A progress artifact updated at most once per whole percent; a failed update never fails the task."""

    def __init__(self, key: str, description: str) -> None:
        self._artifact = create_progress_artifact(0.0, key=key, description=description)
        self._shown = 0

    def __call__(self, done: int, total: int, what: str = "") -> None:
        percent = int(100 * done / max(1, total))
        if percent > self._shown or done == total:
            try:
                update_progress_artifact(self._artifact, float(percent))
                self._shown = percent
            except Exception as exc:  # progress is informative
                get_run_logger().debug("progress update failed at %s: %s", what, exc)
