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
from dataclasses import dataclass
from pathlib import Path

from tests.support.assets import face

ROOT = Path(__file__).resolve().parents[2] / "tests" / "assets" / "faces-calibration"
PHOTOS = ROOT / "photos"


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
