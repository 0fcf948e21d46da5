"""Augment + caption (manual step 5: ``--num_aug``).

Originals are kept; each gets ``num_aug`` light variants (random crop, flip,
brightness/contrast, a little noise) written as ``<stem>_augN.jpg`` at JPEG
quality 95. The albumentations pipeline has a fixed seed, so a re-run with the
same inputs writes the same files.

Captions describe what *varies* (outfit, scene, light, pose, from the
generation manifest) plus the trigger token and class word, and leave identity
traits out: the LoRA should bind those to the trigger token. Missing metadata
falls back to neutral defaults. The optional kohya layout puts images and
``.txt`` captions in ``<repeats>_<token> <class>/`` for sd-scripts.
"""

from __future__ import annotations

import io
import json
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import albumentations as A
import numpy as np
from PIL import Image

from ai_influencer.dataset.manifest import ImageRecord, load_manifest
from ai_influencer.dataset.workspace import KOHYA_SUBDIR
from ai_influencer.imaging import BadImageError, list_images, load_rgb
from ai_influencer.io import atomic_write_bytes, atomic_write_text
from ai_influencer.options.augment import AUGMENT_DEFAULTS
from ai_influencer.prompt_bank import PromptBank

CAPTION_DEFAULTS = {"scene": "candid lifestyle setting", "lighting": "natural light", "outfit": "casual outfit"}


def build_pipeline(size: int, seed: int) -> A.Compose:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # albumentations silently ignores misspelt args with a warning
        return A.Compose(
            [
                A.RandomResizedCrop(size=(size, size), scale=(0.8, 1.0), ratio=(0.9, 1.1), p=1.0),
                A.HorizontalFlip(p=0.5),
                A.RandomBrightnessContrast(brightness_limit=0.15, contrast_limit=0.15, p=0.7),
                A.GaussNoise(std_range=(0.01, 0.04), p=0.4),
            ],
            seed=seed,
        )


def _readable(value: str | None, bank: PromptBank | None, category: str) -> str | None:
    """The prompt text for a bank value name (``golden_hour`` -> ``golden hour sunlight``)."""
    if not value:
        return None
    if bank is not None:
        for opt in getattr(bank, category):
            if opt.name == value:
                return opt.prompt
    return value.replace("_", " ")


def make_caption(record: ImageRecord | None, *, trigger: str, class_word: str, bank: PromptBank | None = None) -> str:
    scene = _readable(record.scene if record else None, bank, "scenes") or CAPTION_DEFAULTS["scene"]
    light = _readable(record.lighting if record else None, bank, "lighting") or CAPTION_DEFAULTS["lighting"]
    outfit = _readable(record.outfit if record else None, bank, "outfits") or CAPTION_DEFAULTS["outfit"]
    pose = _readable(record.pose if record else None, bank, "poses")
    parts = [f"{trigger} {class_word}", f"wearing {outfit}", scene, light]
    if pose:
        parts.insert(1, pose)
    return ", ".join(parts)


@dataclass
class AugmentResult:
    images: list[Path]
    captions: list[Path]
    errors: list[str]
    kohya_dir: Path | None = None


def _jpeg(rgb: np.ndarray, quality: int = 95) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=quality, subsampling=0)
    return buf.getvalue()


def augment_and_caption(
    in_dir: Path,
    out_dir: Path,
    captions_dir: Path,
    *,
    manifest: Path | None = None,
    num_aug: int = AUGMENT_DEFAULTS.num_aug,
    seed: int = AUGMENT_DEFAULTS.seed,
    size: int = AUGMENT_DEFAULTS.size,
    trigger: str | None = None,
    class_word: str | None = None,
    bank: PromptBank | None = None,
    kohya_repeats: int | None = None,
    caption_for: Callable[[Path, str], str] | None = None,
) -> AugmentResult:
    """``trigger``/``class_word`` default to the prompt bank's persona (else ``ohwx woman``).

    ``caption_for(source_image, manifest_caption)`` may replace the manifest caption (VLM captions);
    every variant of one source image shares its caption.
    """
    trigger = trigger or (bank.persona.trigger_token if bank else "ohwx")
    class_word = class_word or (bank.persona.class_word if bank else "woman")
    if num_aug < 0:
        raise ValueError("num_aug must be >= 0")
    records: dict[str, ImageRecord] = {}
    if manifest is not None:
        try:
            records = load_manifest(manifest)
        except (OSError, ValueError) as exc:
            raise ValueError(f"{manifest}: cannot read manifest ({exc})") from None
    pipeline = build_pipeline(size, seed)
    images: list[Path] = []
    captions: list[Path] = []
    errors: list[str] = []
    for src in list_images(in_dir):
        try:
            rgb = load_rgb(src)
        except BadImageError as exc:
            errors.append(str(exc))
            continue
        record = records.get(src.name)
        if record is None:  # qc_passed keeps the generation sidecar next to the image
            side = src.with_suffix(".json")
            if side.is_file():
                try:
                    record = ImageRecord.model_validate(json.loads(side.read_text()))
                except ValueError:
                    record = None
        caption = make_caption(record, trigger=trigger, class_word=class_word, bank=bank)
        if caption_for is not None:
            caption = caption_for(src, caption)
        original = out_dir / src.name
        atomic_write_bytes(original, src.read_bytes())
        outputs = [original]
        for i in range(1, num_aug + 1):
            aug = pipeline(image=rgb)["image"]
            target = out_dir / f"{src.stem}_aug{i}.jpg"
            atomic_write_bytes(target, _jpeg(aug))
            outputs.append(target)
        for img in outputs:
            captions.append(atomic_write_text(captions_dir / f"{img.stem}.txt", caption + "\n"))
        images += outputs
    kohya = None
    if kohya_repeats:
        kohya = write_kohya_layout(images, captions_dir, out_dir / KOHYA_SUBDIR, kohya_repeats, trigger, class_word)
    return AugmentResult(images, captions, errors, kohya)


def write_kohya_layout(
    images: list[Path], captions_dir: Path, root: Path, repeats: int, trigger: str, class_word: str
) -> Path:
    """``<root>/<repeats>_<trigger> <class>/`` with each image and its ``.txt`` caption (sd-scripts layout)."""
    folder = root / f"{repeats}_{trigger} {class_word}"
    folder.mkdir(parents=True, exist_ok=True)
    for img in images:
        atomic_write_bytes(folder / img.name, img.read_bytes())
        cap = captions_dir / f"{img.stem}.txt"
        if cap.is_file():
            atomic_write_bytes(folder / cap.name, cap.read_bytes())
    return folder
