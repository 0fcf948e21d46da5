"""The training set: images with .txt captions, kohya repeat folders, aspect-ratio buckets."""

from __future__ import annotations

import hashlib
import math
import random
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
from PIL import Image

from ai_influencer.imaging import BadImageError, list_images, load_rgb
from ai_influencer.io import file_sha256

KOHYA_DIR = re.compile(r"^(\d+)_(.+)$")


class DatasetError(ValueError):
    """The dataset folder cannot be used for training (message names the folder or file)."""


@dataclass(frozen=True)
class Item:
    path: Path
    caption: str
    repeats: int
    size: tuple[int, int]  # (width, height) of the source image

    @cached_property
    def digest(self) -> str:
        """Content hash; read once per item (the run key, the latent cache and the dataset version use it)."""
        return file_sha256(self.path)[:24]


def make_buckets(resolution: int, min_reso: int, max_reso: int, step: int) -> list[tuple[int, int]]:
    """(width, height) pairs of about resolution² pixels, both sides multiples of step within [min, max]."""
    area = resolution * resolution
    buckets = {(resolution, resolution)}
    w = min_reso
    while w <= max_reso:
        h = min(max_reso, (area // w) // step * step)
        if h >= min_reso:
            buckets.add((w, h))
            buckets.add((h, w))
        w += step
    return sorted(buckets)


def nearest_bucket(size: tuple[int, int], buckets: list[tuple[int, int]]) -> tuple[int, int]:
    ratio = math.log(size[0] / size[1])
    return min(buckets, key=lambda b: (abs(math.log(b[0] / b[1]) - ratio), -b[0] * b[1]))


def _caption(image: Path, fallback: str, captions_dir: Path | None = None) -> str:
    for txt in (image.with_suffix(".txt"), captions_dir / f"{image.stem}.txt" if captions_dir else None):
        if txt is not None and txt.is_file():
            text = txt.read_text(encoding="utf-8").strip()
            if text:
                return text
    return fallback


def discover(
    folder: Path, repeats: int = 1, default_caption: str = "", captions_dir: Path | None = None
) -> tuple[list[Item], list[str]]:
    """Images under ``folder``; kohya ``N_class`` sub-folders give repeats and a fallback caption.

    Captions are ``<image>.txt`` next to the image, else in ``captions_dir`` (the augment
    stage's ``data/captions``), else the folder's class tokens or ``default_caption``.

    Returns (items, problems). Unreadable images are reported, not fatal.
    """
    if not folder.is_dir():
        raise DatasetError(f"dataset folder {folder} does not exist (run the augment stage first)")
    groups: list[tuple[Path, int, str]] = []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        m = KOHYA_DIR.match(sub.name)
        if m:
            groups.append((sub, int(m.group(1)), m.group(2)))
    if not groups:
        groups = [(folder, repeats, default_caption)]
    items: list[Item] = []
    problems: list[str] = []
    for sub, reps, class_caption in groups:
        for image in list_images(sub):
            try:
                with Image.open(image) as im:
                    size = im.size
            except Exception as exc:  # PIL raises many types for broken files
                problems.append(f"{image}: unreadable image ({exc})")
                continue
            caption = _caption(image, class_caption or default_caption, captions_dir)
            if not caption:
                problems.append(f"{image}: no caption (.txt missing or empty) and no default caption")
                continue
            items.append(Item(image, caption, reps, size))
    if not items:
        detail = "; ".join(problems[:5]) or "no images found"
        raise DatasetError(f"no usable training images in {folder}: {detail}")
    return items, problems


@dataclass(frozen=True)
class Prepared:
    """An image resized and center-cropped to its bucket, with SDXL's size conditioning."""

    pixels: np.ndarray  # HxWx3 uint8
    original_size: tuple[int, int]  # (height, width)
    crop_top_left: tuple[int, int]  # (top, left)
    target_size: tuple[int, int]  # (height, width)


def prepare_image(path: Path, bucket: tuple[int, int]) -> Prepared:
    try:
        rgb = load_rgb(path)
    except BadImageError as exc:
        raise DatasetError(f"{path}: {exc.reason}") from None
    h, w = rgb.shape[:2]
    bw, bh = bucket
    scale = max(bw / w, bh / h)
    nw, nh = max(bw, round(w * scale)), max(bh, round(h * scale))
    im = Image.fromarray(rgb).resize((nw, nh), Image.Resampling.LANCZOS)
    left, top = (nw - bw) // 2, (nh - bh) // 2
    im = im.crop((left, top, left + bw, top + bh))
    return Prepared(np.asarray(im), (h, w), (top, left), (bh, bw))


def epoch_batches(
    item_buckets: list[tuple[int, tuple[int, int]]], batch_size: int, seed: int, epoch: int
) -> list[list[int]]:
    """One epoch's batches of item indices (each batch from one bucket), in a seeded, reproducible order.

    ``item_buckets`` holds (item index, bucket) with each item already repeated. The same
    (seed, epoch) always gives the same order, which is what lets a resumed run continue mid-epoch.
    """
    rng = random.Random(f"{seed}:{epoch}")
    by_bucket: dict[tuple[int, int], list[int]] = {}
    for idx, bucket in item_buckets:
        by_bucket.setdefault(bucket, []).append(idx)
    batches: list[list[int]] = []
    for bucket in sorted(by_bucket):
        members = by_bucket[bucket]
        rng.shuffle(members)
        batches += [members[i : i + batch_size] for i in range(0, len(members), batch_size)]
    rng.shuffle(batches)
    return batches


def dataset_version(items: list[Item]) -> str:
    """Content version of a training set (images + captions + repeats), for the identity history."""
    h = hashlib.sha256()
    for digest, caption, repeats in sorted((it.digest, it.caption, it.repeats) for it in items):
        h.update(f"{digest}:{repeats}:{caption}\n".encode())
    return h.hexdigest()[:16]
