"""Per-image sidecars and the manifest derived from them.

Why sidecars: a manifest rewritten after every image is a single point of
loss (a kill during the rewrite) and a contention point for parallel workers.
Each generated image gets its own ``<key>.json`` written atomically right after
the image, and ``manifest.json`` is only ever *rebuilt* from the sidecars, so a
killed run loses nothing it paid for and a re-run can always reconstruct it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, ValidationError

from ai_influencer.io import atomic_write_json

MANIFEST_NAME = "manifest.json"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


class ImageRecord(BaseModel):
    """What we know about one generated image; the sidecar's schema."""

    key: str
    file: str
    model: str
    prompt: str
    negative_prompt: str = ""
    size: str = ""
    variant: int = 0
    scene: str | None = None
    lighting: str | None = None
    pose: str | None = None
    outfit: str | None = None
    mime: str = "image/png"
    bytes: int | None = None  # size of the fully decoded image as written; vouches for the file on disk
    cost_usd: float | None = None  # as the provider reported it (None: not reported; the ledger used an estimate)
    usage: dict[str, Any] = Field(default_factory=dict)
    generation_id: str | None = None
    created_at: str = ""
    elapsed_s: float | None = None
    recovered: bool = False  # sidecar rebuilt after a kill; cost unknown
    run_id: str | None = None  # the flow run (or CLI run) that paid for it


def sidecar_path(image_dir: Path, key: str) -> Path:
    return image_dir / f"{key}.json"


def write_sidecar(image_dir: Path, record: ImageRecord) -> Path:
    return atomic_write_json(sidecar_path(image_dir, record.key), record.model_dump(mode="json"))


def read_sidecars(image_dir: Path) -> tuple[list[ImageRecord], list[str]]:
    """All valid sidecars whose image exists, plus one error line per broken sidecar."""
    records: list[ImageRecord] = []
    problems: list[str] = []
    if not image_dir.is_dir():
        return records, problems
    for path in sorted(image_dir.glob("*.json")):
        if path.name == MANIFEST_NAME:
            continue
        try:
            record = ImageRecord.model_validate(json.loads(path.read_text(encoding="utf-8")))
        except (ValueError, ValidationError) as exc:
            problems.append(f"{path}: unreadable sidecar ({str(exc).splitlines()[0]})")
            continue
        if not (image_dir / record.file).is_file():
            problems.append(f"{path}: image {record.file} is missing")
            continue
        records.append(record)
    return records, problems


def rebuild_manifest(image_dir: Path) -> dict[str, Any]:
    """Write ``manifest.json`` from the sidecars and return it."""
    records, problems = read_sidecars(image_dir)
    manifest = {
        "count": len(records),
        "total_cost_usd": round(sum(r.cost_usd or 0.0 for r in records), 6),
        "images": [r.model_dump(mode="json") for r in records],
        "problems": problems,
    }
    atomic_write_json(image_dir / MANIFEST_NAME, manifest)
    return manifest


def load_manifest(path: Path) -> dict[str, ImageRecord]:
    """Manifest entries by image file name (the augment/caption stage's lookup)."""
    data = json.loads(path.read_text(encoding="utf-8"))
    items = data.get("images", data) if isinstance(data, dict) else data
    out: dict[str, ImageRecord] = {}
    for item in items or []:
        try:
            record = ImageRecord.model_validate(item)
        except ValidationError:
            continue
        out[record.file] = record
    return out
