"""Face sharpness, detail and compression: the per-image quality measures QC decides on.

Sharpness. The variance of the Laplacian (the manual's measure) depends on
resolution and contrast: a sharp 240p photo scores 18 on a face crop upscaled
to 256 px, the same photo at 720p 163, and 12 of 66 ordinary photos of a
held-out set fell under 80. What ``--minblur 80`` should mean is "this face is
not blurred", whatever the photo's size. So we estimate the *blur radius*
instead: the face crop (padded 15 %, in gray) is shrunk to at most
``FACE_SIZE`` px (never enlarged: enlarging is itself a blur) and blurred once
more with a known Gaussian (``REBLUR_SIGMA``); how much gradient energy that
removes gives the blur already present. For edges blurred with sigma s the
energy goes as 1/s, so ``E(img) / E(reblurred) = sqrt(s^2 + r^2) / s`` and

    sigma = r / sqrt(ratio^2 - 1)            (pixels at the measuring scale)

It is contrast-free (a ratio), and on real photos (docs/identity-calibration.md,
``bench/identity.py``) ordinary sharp photos from 240p to 2333 px measure
sigma 0.39-0.92 while copies blurred with a Gaussian of 0.4 % or 1 % of the
long side measure >= 1.06 (photos of 250 px and more; below that a 0.4 % blur
is under one pixel). The score users set is ``80 * (SIGMA_AT_80 / sigma)^2``
with the boundary ``SIGMA_AT_80 = 0.95`` between the two, so the manual's 80
keeps its meaning: sharp photos score 86-450, blurred copies <= 64 (1 % blur
<= 46). Its range resembles the old Laplacian numbers on purpose. Caveat: a
blurred image with strong added noise looks sharp to any gradient measure.

Detail (for picking the best of duplicate copies): the face width in source
pixels divided by the blur radius measured at that native size. A downscaled
copy always measures less; an upscaled one carries no new detail but may
measure a little more (the radius estimate saturates near one pixel), which
is harmless: it is not worse to train on.

Compression: lossless files rank above JPEGs; a JPEG's quality is estimated
from its luminance quantisation table (IJG scaling), so a q80 re-encode ranks
below its q95 original.
"""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

FACE_SIZE = 256  # the face crop is measured at most this large
FACE_PAD = 0.15  # jaw line, hairline and ears carry the edges a blur removes
REBLUR_SIGMA = 1.0
SIGMA_AT_80 = 0.95  # blur radius (px at FACE_SIZE) that scores exactly 80
MAX_SHARPNESS = 1000.0
NATIVE_LIMIT = 1024  # detail is measured at native size up to this side (cost bound)
MIN_GRADIENT_ENERGY = 1.0  # mean squared Sobel response below this: a flat patch, not a face
LOSSLESS_QUALITY = 100


def face_crop(rgb: np.ndarray, box: tuple[int, int, int, int], pad: float = 0.0) -> np.ndarray:
    h, w = rgb.shape[:2]
    x0, y0, x1, y1 = box
    px, py = int((x1 - x0) * pad), int((y1 - y0) * pad)
    x0, y0, x1, y1 = max(0, x0 - px), max(0, y0 - py), min(w, x1 + px), min(h, y1 + py)
    return rgb[y0:y1, x0:x1]


def laplacian_variance(gray: np.ndarray) -> float:
    return float(cv2.Laplacian(gray, cv2.CV_64F).var())


def _gray_face(rgb: np.ndarray, box: tuple[int, int, int, int], max_side: int) -> np.ndarray:
    crop = face_crop(rgb, box, FACE_PAD)
    if crop.size == 0:
        return np.zeros((0, 0), np.float32)
    gray = cv2.cvtColor(np.ascontiguousarray(crop), cv2.COLOR_RGB2GRAY).astype(np.float32)
    side = max(gray.shape)
    if side > max_side:
        f = max_side / side
        size = (max(1, round(gray.shape[1] * f)), max(1, round(gray.shape[0] * f)))
        gray = cv2.resize(gray, size, interpolation=cv2.INTER_AREA)
    return gray


def _gradient_energy(gray: np.ndarray) -> float:
    gx = cv2.Sobel(gray, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(gray, cv2.CV_32F, 0, 1, ksize=3)
    return float(np.mean(gx * gx + gy * gy))


def blur_sigma(gray: np.ndarray, reblur: float = REBLUR_SIGMA) -> float:
    """Estimated Gaussian blur radius of ``gray`` in its own pixels (inf for a flat or tiny patch)."""
    if min(gray.shape[:2], default=0) < 8:
        return math.inf
    energy = _gradient_energy(gray)
    if energy < MIN_GRADIENT_ENERGY:
        return math.inf
    again = _gradient_energy(cv2.GaussianBlur(gray, (0, 0), reblur))
    ratio = energy / max(again, 1e-9)
    return reblur / math.sqrt(max(ratio * ratio - 1.0, 1e-12))


def sharpness_from_sigma(sigma: float) -> float:
    if not math.isfinite(sigma) or sigma <= 0:
        return 0.0 if not math.isfinite(sigma) else MAX_SHARPNESS
    return min(MAX_SHARPNESS, 80.0 * (SIGMA_AT_80 / sigma) ** 2)


def face_sharpness(rgb: np.ndarray, box: tuple[int, int, int, int], size: int = FACE_SIZE) -> float:
    """The ``--minblur`` score of one face: >= 80 sharp, below blurred (see the module doc)."""
    return sharpness_from_sigma(blur_sigma(_gray_face(rgb, box, size)))


def face_detail(rgb: np.ndarray, box: tuple[int, int, int, int]) -> float:
    """Face width in source pixels over the blur radius at that size: real detail, not pixel count."""
    width = max(1, box[2] - box[0])
    gray = _gray_face(rgb, box, NATIVE_LIMIT)
    sigma = blur_sigma(gray)
    if not math.isfinite(sigma):
        return 0.0
    scale = max(gray.shape[:2]) / max(1, max(face_crop(rgb, box, FACE_PAD).shape[:2]))
    # A crop shrunk for cost measures a smaller sigma: convert back to source pixels.
    return width / max(sigma / scale, 0.5)


# IJG's standard luminance table (JPEG Annex K), which libjpeg scales by the quality setting.
_IJG_LUMA = np.array(
    [16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
     14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
     49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99],
    dtype=np.float64,
)  # fmt: skip


def jpeg_quality(table: list[int] | tuple[int, ...]) -> int:
    """The IJG quality (1-100) whose scaled luminance table is closest to ``table``."""
    values = np.asarray(sorted(table), dtype=np.float64)
    ref = np.sort(_IJG_LUMA)
    best, best_err = 50, math.inf
    for q in range(1, 101):
        scale = 5000 / q if q < 50 else 200 - 2 * q
        scaled = np.clip(np.floor((ref * scale + 50) / 100), 1, 255)
        err = float(np.abs(scaled - values).sum())
        if err < best_err:
            best, best_err = q, err
    return best


def compression_quality(path: Path) -> tuple[int, str]:
    """(quality 1-100, format) of a file: 100 for lossless formats, estimated for JPEG, 90 for lossy WebP."""
    try:
        with Image.open(path) as im:
            fmt = (im.format or "").upper()
            if fmt in ("JPEG", "MPO"):
                tables = getattr(im, "quantization", None) or {}
                return (jpeg_quality(tables[0]) if 0 in tables else 75), "JPEG"
            if fmt == "WEBP":
                return (LOSSLESS_QUALITY if _webp_lossless(path) else 90), "WEBP"
            return LOSSLESS_QUALITY, fmt or "?"
    except (OSError, ValueError):
        return 0, "?"


def _webp_lossless(path: Path) -> bool:
    with Path(path).open("rb") as fh:
        head = fh.read(16)
    return head[12:16] == b"VP8L"
