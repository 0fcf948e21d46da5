"""Sharpness and near-duplicate measures.

Sharpness: the variance of the Laplacian depends on resolution (downscaling
raises it, upscaling lowers it), so the manual's ``--minblur 80`` only means
something at a fixed scale. It is measured on the face crop converted to gray
and resized to ``FACE_SIZE`` x ``FACE_SIZE``: sharp portraits score ~130-350
there, a sigma-2 blur ~5, an upsampled 130-px face ~50.

Duplicates: two images are near-duplicates when their perceptual hashes are
close (the same picture re-encoded, resized or slightly recoloured) *and* their
faces are nearly identical, so two different shots with a similar layout are
not thrown away.
"""

from __future__ import annotations

import cv2
import numpy as np

FACE_SIZE = 256


def face_crop(rgb: np.ndarray, box: tuple[int, int, int, int], pad: float = 0.0) -> np.ndarray:
    h, w = rgb.shape[:2]
    x0, y0, x1, y1 = box
    px, py = int((x1 - x0) * pad), int((y1 - y0) * pad)
    x0, y0, x1, y1 = max(0, x0 - px), max(0, y0 - py), min(w, x1 + px), min(h, y1 + py)
    return rgb[y0:y1, x0:x1]


def laplacian_variance(gray: np.ndarray) -> float:
    return float(cv2.Laplacian(gray, cv2.CV_64F).var())


def face_sharpness(rgb: np.ndarray, box: tuple[int, int, int, int], size: int = FACE_SIZE) -> float:
    """Laplacian variance of the face crop at a fixed size (comparable across image resolutions)."""
    crop = face_crop(rgb, box)
    if crop.size == 0:
        return 0.0
    gray = cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY)
    interp = cv2.INTER_AREA if min(gray.shape[:2]) >= size else cv2.INTER_CUBIC
    return laplacian_variance(cv2.resize(gray, (size, size), interpolation=interp))
