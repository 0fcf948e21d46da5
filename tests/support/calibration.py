"""The faces calibration set (tests/assets/faces-calibration) with every face labelled.

``labels.csv`` (from the set's authors) names one identity per file, ``MULTI``
for group photos; ``faces.csv`` (ours) names the people in the group photos
from left to right and marks files that show the same photograph, so that a
benchmark never counts a resized copy as "another photo of the same person".

Three photos from the older test assets (``tests.support.assets``) extend it:
``obama3.jpg`` (a third distinct picture of Obama), ``t1.jpg`` (six people who
are in no other photo) and the Tom Hanks crop.
"""

from __future__ import annotations

import csv
import io
import itertools
import shutil
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageFilter

from ai_influencer.qc.analysis import Analysis, analyze
from ai_influencer.vision.faces import FaceEngine
from ai_influencer.vision.prepare import prepare_references
from tests.support.assets import face

ROOT = Path(__file__).resolve().parents[2] / "tests" / "assets" / "faces-calibration"
PHOTOS = ROOT / "photos"
# Judged by eye at 100 %: two video stills, an old scan and two soft LFW crops. They are not "ordinary sharp
# portraits", so sharp-photo pass rates leave them out (benchmarks still report them).
SOFT_ORIGINALS = frozenset(
    {"alex_lacamoire_3.png", "lin_manuel_miranda_1.png", "lennon_2.jpg", "hopkins_1.jpg", "hopkins_2.jpg"}
)
# Below this long side a Gaussian blur of 0.4 % of it is under one pixel: not a visible blur, not measurable.
MIN_BLUR_TEST_SIDE = 250


@dataclass(frozen=True)
class LabelledPhoto:
    path: Path
    identities: tuple[str, ...]  # one per face, left to right
    pictures: tuple[str, ...]  # the photograph each face comes from

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def group(self) -> bool:
        return len(self.identities) > 1

    @property
    def identity(self) -> str:
        """The identity of a one-face photo ("MULTI" for a group photo)."""
        return self.identities[0] if not self.group else "MULTI"

    @property
    def picture(self) -> str:
        return self.pictures[0]


def calibration_photos() -> list[LabelledPhoto]:
    with (ROOT / "labels.csv").open(newline="") as fh:
        labels = {r["file"]: r["identity"] for r in csv.DictReader(fh)}
    faces: dict[str, list[tuple[int, str, str]]] = {}
    with (ROOT / "faces.csv").open(newline="") as fh:
        for r in csv.DictReader(fh):
            faces.setdefault(r["file"], []).append((int(r["face"]), r["identity"], r["picture"]))
    out = []
    for file, identity in labels.items():
        listed = sorted(faces.get(file, []))
        if identity == "MULTI" and len(listed) < 2:
            raise ValueError(f"{file}: a group photo without its faces in faces.csv")
        ids = tuple(i for _, i, _ in listed) or (identity,)
        pics = tuple(p for _, _, p in listed) or (Path(file).stem,)
        out.append(LabelledPhoto(PHOTOS / file, ids, pics))
    return out


def extra_photos() -> list[LabelledPhoto]:
    """Older test photos: a third Obama picture and seven people found nowhere else."""
    t1 = tuple(f"t1_person{i}" for i in range(6))
    return [
        LabelledPhoto(face("obama3.jpg"), ("obama",), ("obama3",)),
        LabelledPhoto(face("t1.jpg"), t1, ("t1",) * 6),
        LabelledPhoto(face("Tom_Hanks_54745.png"), ("tom_hanks",), ("tom_hanks",)),
    ]


def representatives(photos: list[LabelledPhoto]) -> dict[str, LabelledPhoto]:
    """One one-face file per picture (the first by name): the reference photo a user would give."""
    reps: dict[str, LabelledPhoto] = {}
    for p in sorted(photos, key=lambda p: p.name):
        if not p.group and p.picture not in reps:
            reps[p.picture] = p
    return reps


def prepared_references(engine: FaceEngine, reps: dict[str, LabelledPhoto], folder: Path) -> dict[str, Analysis]:
    """Each picture's representative through the prepare stage (a face-centred 1024 px crop), analysed."""
    raw, cleaned = folder / "raw", folder / "cleaned"
    raw.mkdir(parents=True, exist_ok=True)
    for picture, p in reps.items():
        shutil.copy(p.path, raw / f"{picture}{p.path.suffix}")
    items = prepare_references(raw, cleaned, engine=engine)
    failed = [f"{i.source.name}: {i.reason}" for i in items if i.status == "error"]
    if failed:
        raise RuntimeError("prepare failed for " + "; ".join(failed))
    return {i.source.stem: analyze(engine, i.output) for i in items if i.output is not None}


def persona_runs(reps: dict[str, LabelledPhoto]) -> list[tuple[str, tuple[str, str]]]:
    """(persona, two pictures as references) for every person with two or more pictures, every pair."""
    by_person: dict[str, list[str]] = defaultdict(list)
    for picture, p in sorted(reps.items()):
        by_person[p.identity].append(picture)
    return [
        (person, pair) for person, pictures in sorted(by_person.items()) for pair in itertools.combinations(pictures, 2)
    ]


@dataclass
class Variant:
    path: Path
    source: LabelledPhoto
    kind: str  # original | blur04 | blur10 | dup | near | reenc


VARIANT_KINDS = ("blur04", "blur10", "dup", "near", "reenc")


def _jpeg_bytes(im: Image.Image, q: int) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=q)
    return buf.getvalue()


VARIANT_NAMES = {"blur04": "_blur04.png", "blur10": "_blur10.jpg", "near": "_near.jpg", "reenc": "_q80.jpg"}


def _write_variant(kind: str, im: Image.Image, source: Path, target: Path) -> None:
    long_side = max(im.size)
    if kind == "blur04":
        im.filter(ImageFilter.GaussianBlur(0.004 * long_side)).save(target)
    elif kind == "blur10":
        target.write_bytes(_jpeg_bytes(im.filter(ImageFilter.GaussianBlur(0.01 * long_side)), 90))
    elif kind == "dup":
        shutil.copy(source, target)
    elif kind == "near":
        half = im.resize((im.width // 2, im.height // 2), Image.Resampling.LANCZOS)
        target.write_bytes(_jpeg_bytes(half, 80))
    elif kind == "reenc":
        target.write_bytes(_jpeg_bytes(im, 80))
    else:
        raise ValueError(f"unknown variant {kind!r}")


def make_variants(photos: list[LabelledPhoto], folder: Path, kinds: tuple[str, ...] = VARIANT_KINDS) -> list[Variant]:
    """Every photo, and per one-face photo the copies of the held-out protocol.

    blur04 / blur10: Gaussian blur of 0.4 % / 1 % of the long side (PNG / JPEG q90); dup: a byte copy;
    near: half size, JPEG q80; reenc: same size, JPEG q80.
    """
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for p in photos:
        stem, suffix = p.path.stem, p.path.suffix.lower()
        orig = folder / f"{stem}{suffix}"
        shutil.copy(p.path, orig)
        out.append(Variant(orig, p, "original"))
        if p.group:
            continue
        im = Image.open(p.path).convert("RGB")
        for kind in kinds:
            target = folder / (stem + VARIANT_NAMES.get(kind, f"_{kind}{suffix}"))
            _write_variant(kind, im, p.path, target)
            out.append(Variant(target, p, kind))
    return out
