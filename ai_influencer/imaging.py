"""Robust image decoding for user-supplied photos.

Reference photos come from phones, cameras and editors: EXIF-rotated JPEGs,
CMYK exports, 16-bit TIFF/PNG, images with alpha, grayscale scans and the
occasional 100-megapixel panorama. Everything is normalised to 8-bit RGB
(alpha composited on white) with the EXIF orientation applied, and anything
that cannot be used fails with ``BadImageError`` naming the file and the
reason, so a batch can report it and continue.
"""

from __future__ import annotations

import io
import re
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

DEFAULT_MAX_PIXELS = 60_000_000  # ~ a 9500x6300 photo; decoding more costs GBs of RAM
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")


class BadImageError(ValueError):
    """An input image cannot be used; ``path`` and ``reason`` say which and why."""

    def __init__(self, path: Path | str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = Path(path)
        self.reason = reason


def list_images(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: folder not found")
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def _to_8bit_rgb(im: Image.Image) -> Image.Image:
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(im, dtype=np.float64)
        hi = 65535.0 if im.mode.startswith("I;16") or arr.max() > 255 else 255.0
        im = Image.fromarray(np.clip(arr / hi * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="L")
    elif im.mode == "F":
        arr = np.asarray(im, dtype=np.float64)
        scale = 255.0 if arr.max() <= 1.0 else 1.0
        im = Image.fromarray(np.clip(arr * scale, 0, 255).astype(np.uint8), mode="L")
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return im.convert("RGB")


def load_rgb(path: Path | str, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode ``path`` to an HxWx3 uint8 RGB array, EXIF orientation applied."""
    p = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(p) as im:
                w, h = im.size
                if w * h > max_pixels:
                    raise BadImageError(
                        p, f"image too large ({w}x{h} = {w * h / 1e6:.0f} MP > {max_pixels / 1e6:.0f} MP limit)"
                    )
                im.load()
                im = ImageOps.exif_transpose(im) or im
                rgb = _to_8bit_rgb(im)
    except BadImageError:
        raise
    except FileNotFoundError:
        raise BadImageError(p, "file not found") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # Pillow refuses huge images inside open(), before our own size check can run.
        raise BadImageError(p, f"image too large ({exc}; limit {max_pixels / 1e6:.0f} MP)") from None
    except UnidentifiedImageError as exc:
        raise BadImageError(p, f"not a readable image ({type(exc).__name__})") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise BadImageError(p, f"corrupt or truncated image ({exc})") from None
    if min(rgb.size) < 16:
        raise BadImageError(p, f"image too small ({rgb.size[0]}x{rgb.size[1]})")
    return np.asarray(rgb, dtype=np.uint8)


class IncompleteImageError(ValueError):
    """Bytes that do not decode to a complete image (truncated, not an image, or empty)."""


# What an image's first bytes say when they are really an error page or a JSON message.
_TEXT_STARTS = (b"<!doctype", b"<html", b"<?xml", b"<head", b"<body", b"{", b"[")


def verify_image_bytes(data: bytes) -> tuple[str, tuple[int, int]]:
    """(format, size) of bytes that decode *completely*; ``IncompleteImageError`` otherwise.

    Why a full decode: PIL's ``verify()`` checks PNG chunk CRCs but nothing of a JPEG's entropy
    data, so a JPEG cut anywhere (for instance base64 cut on a 4-character boundary, which still
    decodes as base64) passed as a finished image and every later run skipped it. ``load()``
    decodes every scanline and raises on a missing end.
    """
    head = data[:64].lstrip().lower()
    if not data:
        raise IncompleteImageError("empty image data")
    if head.startswith(_TEXT_STARTS):
        if head.startswith((b"<!doctype", b"<html", b"<head", b"<body")):
            title = re.search(rb"<title[^>]*>(.*?)</title>", data[:4096], re.I | re.S)
            what = title.group(1).decode("utf-8", "replace").strip()[:80] if title else "no title"
            raise IncompleteImageError(f"the image data is an HTML page, not an image (title: {what!r})")
        snippet = " ".join(data[:60].decode("utf-8", "replace").split())
        raise IncompleteImageError(f"the image data is text, not an image (starts {snippet!r})")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                fmt = im.format or "?"
                im.load()
                size = im.size
    except UnidentifiedImageError:
        raise IncompleteImageError(f"not a known image format ({len(data)} bytes, starts {data[:8]!r})") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise IncompleteImageError(f"{len(data)} bytes of incomplete or corrupt image data ({exc})") from None
    if min(size) < 1:
        raise IncompleteImageError(f"image has no pixels ({size[0]}x{size[1]})")
    return fmt, size


def verify_image_file(path: Path) -> tuple[str, tuple[int, int]]:
    """``verify_image_bytes`` on a file; the error names the file."""
    try:
        return verify_image_bytes(Path(path).read_bytes())
    except IncompleteImageError as exc:
        raise IncompleteImageError(f"{path}: {exc}") from None
