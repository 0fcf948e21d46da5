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
    """What we know about one generated image; the sidecar's schema.

    ``variant`` is the image's slot index within its scene; ``slot_key`` the slot's identity (see
    ``generation``); ``request_key`` and ``answer_index`` the request that paid for it and its place
    in the answer (``asked`` images were asked, ``returned`` came back: fewer is a short answer).
    """

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
    bytes: int | None = None  # size of the fully decoded image as written
    sha256: str | None = None  # content hash of the image as written: vouches for the file on disk
    cost_usd: float | None = None  # its share of the reported cost (None: not reported; the ledger used an estimate)
    estimate_usd: float | None = None  # its share of the price lines' estimate for the request, before paying
    slot_key: str | None = None
    seed: int | None = None  # the plan's seed (prompt composition and request seeds); None: composition seed 0
    request_seed: int | None = None  # the seed the request sent (None: none sent)
    options: dict[str, Any] = Field(default_factory=dict)  # options that change the image (quality, format)
    route: str | None = None  # "images" (POST /images) or "chat" (chat completions); None: older sidecars
    params: dict[str, Any] = Field(default_factory=dict)  # what the request sent besides prompt, n, seed, references
    request_key: str | None = None
    answer_index: int | None = None
    asked: int | None = None
    returned: int | None = None
    references: list[str] = Field(default_factory=list)  # reference files sent with the request
    reference_set: str | None = None  # digest of the reference set of the run (the slot keeps its image across sets)
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
    routes: dict[str, int] = {}
    for r in records:
        routes[r.route or "unknown"] = routes.get(r.route or "unknown", 0) + 1
    manifest = {
        "count": len(records),
        "total_cost_usd": round(sum(r.cost_usd or 0.0 for r in records), 6),
        "estimated_cost_usd": round(sum(r.estimate_usd or 0.0 for r in records), 6),
        "routes": routes,
        "short_answers": len(
            {r.request_key for r in records if r.asked and r.returned is not None and r.returned < r.asked}
        ),
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
