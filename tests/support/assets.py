"""Offline test photos.

Identity tests need several photos of one person and photos of others. The
``face_recognition`` 1.3.0 sdist on PyPI ships exactly that (obama x3, biden);
the ``insightface`` wheel ships ``t1.jpg`` (six people) and a Tom Hanks crop.
``python -m tests.support.assets fetch`` (run by ``.ci/run`` at install time,
from the package registry) unpacks them into ``.assets/faces``; tests never
download anything.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ASSETS = Path(os.environ.get("INFLUENCER_TEST_ASSETS", ROOT / ".assets" / "faces"))
PERSONA = ("obama.jpg", "obama2.jpg", "obama3.jpg")
OTHERS = ("biden.jpg", "t1.jpg")
REQUIRED = (*PERSONA, *OTHERS, "Tom_Hanks_54745.png", "obama_partial_face.jpg")


class MissingAssetsError(RuntimeError):
    pass


def faces_dir() -> Path:
    missing = [n for n in REQUIRED if not (ASSETS / n).is_file()]
    if missing:
        raise MissingAssetsError(
            f"test photos missing in {ASSETS}: {', '.join(missing)}. "
            "Run `python -m tests.support.assets fetch` (done by .ci/run)."
        )
    return ASSETS


def face(name: str) -> Path:
    return faces_dir() / name


def fetch() -> Path:
    ASSETS.mkdir(parents=True, exist_ok=True)
    import insightface

    images = Path(insightface.__file__).parent / "data" / "images"
    for name in ("t1.jpg", "Tom_Hanks_54745.png"):
        shutil.copy2(images / name, ASSETS / name)
    if all((ASSETS / n).is_file() for n in REQUIRED):
        return ASSETS
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "-q",
                "--no-deps",
                "--no-binary",
                ":all:",
                "face_recognition==1.3.0",
                "-d",
                tmp,
            ],
            check=True,
        )
        sdist = next(Path(tmp).glob("face_recognition-1.3.0.tar.gz"))
        with tarfile.open(sdist) as tar:
            for member in tar.getmembers():
                if "/tests/test_images/" in member.name and member.isfile():
                    src = tar.extractfile(member)
                    assert src is not None
                    (ASSETS / Path(member.name).name).write_bytes(src.read())
    return faces_dir()


if __name__ == "__main__":
    if sys.argv[1:] == ["fetch"]:
        print(fetch())
    else:
        print("usage: python -m tests.support.assets fetch", file=sys.stderr)
        sys.exit(2)
