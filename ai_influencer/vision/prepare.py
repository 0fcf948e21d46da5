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

from ai_influencer.imaging import DEFAULT_MAX_PIXELS, BadImageError, list_images, load_rgb
from ai_influencer.io import atomic_write_bytes, file_sha256
from ai_influencer.options.prepare import PREPARE_DEFAULTS
from ai_influencer.vision.background import BackgroundRemover
from ai_influencer.vision.faces import Face, FaceEngine, largest


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


MULTI_FACE_HINT = "use a photo of the persona alone, or --allow-multi-face to keep the largest face"


def the_face(faces: list[Face], *, allow_multi_face: bool = PREPARE_DEFAULTS.allow_multi_face) -> Face:
    """The one face a reference photo must show; the largest of several only when the user allows it.

    Why refuse several: the largest face is not always the persona's (a friend closer to the camera),
    and a wrong reference silently skews every identity score of the run.
    """
    face = largest(faces)
    if face is None:
        raise ValueError("no face found")
    if len(faces) > 1 and not allow_multi_face:
        raise ValueError(f"{len(faces)} faces found: {MULTI_FACE_HINT}")
    return face


def inspect_reference(
    src: Path,
    engine: FaceEngine,
    *,
    allow_multi_face: bool = PREPARE_DEFAULTS.allow_multi_face,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> PrepareItem:
    """Whether ``prepare`` will use a photo: it decodes, and shows one face (status "ok"), else why not.

    What ``influencer run`` checks before it starts and ``doctor`` reports: the same rule prepare applies.
    """
    faces: list[Face] = []
    try:
        faces = engine.detect(load_rgb(src, max_pixels=max_pixels))
        the_face(faces, allow_multi_face=allow_multi_face)
    except BadImageError as exc:
        return PrepareItem(src, None, "error", exc.reason)
    except ValueError as exc:
        return PrepareItem(src, None, "error", str(exc), faces=len(faces))
    return PrepareItem(src, None, "ok", faces=len(faces))


def _recipe(
    src: Path,
    *,
    do_facecrop: bool,
    crop_scale: float,
    out_size: int,
    remover: BackgroundRemover | None,
    allow_multi_face: bool = PREPARE_DEFAULTS.allow_multi_face,
) -> dict[str, object]:
    """What an output depends on: the source's bytes and the options, not its name or mtime."""
    return {
        "source_sha256": file_sha256(src),
        "facecrop": do_facecrop,
        # Outputs made before photos with several faces were refused are checked again once.
        "multi_face": allow_multi_face if do_facecrop else None,
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
    do_facecrop: bool = PREPARE_DEFAULTS.do_facecrop,
    crop_scale: float = 2.2,
    out_size: int = PREPARE_DEFAULTS.size,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    overwrite: bool = False,
    allow_multi_face: bool = PREPARE_DEFAULTS.allow_multi_face,
) -> list[PrepareItem]:
    if do_facecrop and engine is None:
        raise ValueError("face cropping needs a face engine")
    items: list[PrepareItem] = []
    for src in list_images(in_dir):
        target = out_dir / f"{src.stem}.png"
        try:
            recipe = _recipe(
                src, do_facecrop=do_facecrop, crop_scale=crop_scale, out_size=out_size, remover=remover,
                allow_multi_face=allow_multi_face,
            )  # fmt: skip
        except OSError as exc:
            items.append(PrepareItem(src, None, "error", f"cannot be read: {exc.strerror or exc}"))
            continue
        # Skipped only when the output was made from these exact bytes with these options: a photo
        # replaced under the same name, or a changed crop/size/background model, is prepared again.
        if not overwrite and target.exists() and _recipe_of(target) == recipe:
            items.append(PrepareItem(src, target, "skipped", "already prepared"))
            continue
        n_faces = 0
        try:
            rgb = load_rgb(src, max_pixels=max_pixels)
            if do_facecrop:
                assert engine is not None
                faces = engine.detect(rgb)
                n_faces = len(faces)
                try:
                    face = the_face(faces, allow_multi_face=allow_multi_face)
                except ValueError as exc:
                    raise BadImageError(src, str(exc)) from None
                rgb = square_face_crop(rgb, face.box, scale=crop_scale, out_size=out_size)
            if remover is not None:
                rgb = remover.remove(rgb)
            atomic_write_bytes(target, encode_png(rgb, recipe))
            items.append(PrepareItem(src, target, "ok", faces=n_faces))
        except BadImageError as exc:
            items.append(PrepareItem(src, None, "error", exc.reason, faces=n_faces))
            _drop_output_of(src, target, recipe)
    return items


def _drop_output_of(src: Path, target: Path, recipe: dict[str, object]) -> None:
    """Remove a reference made earlier from this very photo, now refused (say it shows two faces):
    left in place, QC would go on using it. A crop is derived and made again in seconds."""
    made = _recipe_of(target) if target.exists() else None
    if made is not None and made.get("source_sha256") == recipe["source_sha256"]:
        target.unlink(missing_ok=True)
