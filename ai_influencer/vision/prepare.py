"""Prepare reference photos (manual step 1: ``--do_rembg --do_facecrop``).

Decode robustly (EXIF, CMYK, 16-bit, alpha, grayscale, size limit), optionally
remove the background, crop a square centred on the largest face with a
margin, and save PNGs. A bad file is reported with its reason and the batch
goes on; the caller decides whether too few references remain.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, PngImagePlugin

from ai_influencer.io import atomic_write_bytes, file_sha256
from ai_influencer.vision.background import BackgroundRemover
from ai_influencer.vision.faces import FaceEngine, largest
from ai_influencer.vision.image_io import DEFAULT_MAX_PIXELS, BadImageError, list_images, load_rgb


@dataclass
class PrepareItem:
    source: Path
    output: Path | None
    status: str  # "ok" | "skipped" | "error"
    reason: str = ""
    faces: int = 0


def square_face_crop(
    rgb: np.ndarray, box: tuple[int, int, int, int], *, scale: float = 2.2, out_size: int = 1024
) -> np.ndarray:
    """A square of ``scale`` x the face size centred on the face; out-of-frame parts are white."""
    x0, y0, x1, y1 = box
    side = int(max(x1 - x0, y1 - y0) * scale)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2 + 0.1 * (y1 - y0)  # a little below centre: keep chin and neck
    left, top = round(cx - side / 2), round(cy - side / 2)
    h, w = rgb.shape[:2]
    canvas = np.full((side, side, 3), 255, dtype=np.uint8)
    sx0, sy0, sx1, sy1 = max(0, left), max(0, top), min(w, left + side), min(h, top + side)
    canvas[sy0 - top : sy1 - top, sx0 - left : sx1 - left] = rgb[sy0:sy1, sx0:sx1]
    interp = cv2.INTER_AREA if side > out_size else cv2.INTER_CUBIC
    return cv2.resize(canvas, (out_size, out_size), interpolation=interp)


# PNG text chunk that records what a prepared reference was made from.
RECIPE_KEY = "ai-influencer:prepare"


def encode_png(rgb: np.ndarray, recipe: dict[str, object] | None = None) -> bytes:
    info = None
    if recipe is not None:
        info = PngImagePlugin.PngInfo()
        info.add_text(RECIPE_KEY, json.dumps(recipe, sort_keys=True))
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG", compress_level=3, pnginfo=info)
    return buf.getvalue()


def _recipe(
    src: Path, *, do_facecrop: bool, crop_scale: float, out_size: int, remover: BackgroundRemover | None
) -> dict[str, object]:
    """What an output depends on: the source's bytes and the options, not its name or mtime."""
    return {
        "source_sha256": file_sha256(src),
        "facecrop": do_facecrop,
        "crop_scale": crop_scale,
        "size": out_size,
        # The model's name, not its absolute path: the same models/ folder mounted elsewhere (a job
        # container) must not make every reference stale.
        "rembg": f"{remover.session_name}:{remover.model_path.name}" if remover is not None else None,
    }


def _recipe_of(target: Path) -> dict[str, object] | None:
    try:
        with Image.open(target) as im:
            raw = getattr(im, "text", {}).get(RECIPE_KEY)
        return json.loads(raw) if raw else None
    except (OSError, ValueError):
        return None


def prepare_references(
    in_dir: Path,
    out_dir: Path,
    *,
    engine: FaceEngine | None,
    remover: BackgroundRemover | None = None,
    do_facecrop: bool = True,
    crop_scale: float = 2.2,
    out_size: int = 1024,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    overwrite: bool = False,
) -> list[PrepareItem]:
    if do_facecrop and engine is None:
        raise ValueError("face cropping needs a face engine")
    items: list[PrepareItem] = []
    for src in list_images(in_dir):
        target = out_dir / f"{src.stem}.png"
        try:
            recipe = _recipe(src, do_facecrop=do_facecrop, crop_scale=crop_scale, out_size=out_size, remover=remover)
        except OSError as exc:
            items.append(PrepareItem(src, None, "error", f"cannot be read: {exc.strerror or exc}"))
            continue
        # Skipped only when the output was made from these exact bytes with these options: a photo
        # replaced under the same name, or a changed crop/size/background model, is prepared again.
        if not overwrite and target.exists() and _recipe_of(target) == recipe:
            items.append(PrepareItem(src, target, "skipped", "already prepared"))
            continue
        try:
            rgb = load_rgb(src, max_pixels=max_pixels)
            n_faces = 0
            if do_facecrop:
                assert engine is not None
                faces = engine.detect(rgb)
                n_faces = len(faces)
                face = largest(faces)
                if face is None:
                    raise BadImageError(src, "no face found")
                rgb = square_face_crop(rgb, face.box, scale=crop_scale, out_size=out_size)
            if remover is not None:
                rgb = remover.remove(rgb)
            atomic_write_bytes(target, encode_png(rgb, recipe))
            items.append(PrepareItem(src, target, "ok", faces=n_faces))
        except BadImageError as exc:
            items.append(PrepareItem(src, None, "error", exc.reason))
    return items
