"""The review workspace of the review tests (domain, hub, browser, flow): a real workspace after QC.

Two reference photos of the persona (Obama) in ``cleaned/``; the candidates are other pictures: the
calibration set's other photos, mirrored, blurred and resized copies of the persona's non-reference
photos, and one generator "echo" of a reference (mirrored) that QC rejects as its copy. ``build`` runs the
real QC with dlib once (about 10 s on two busy cores); ``clone`` copies the result, analysis cache
included, so a QC run in the copy takes about a second.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps

from ai_influencer.dataset.workspace import Workspace
from ai_influencer.qc.analysis import EngineSpec
from ai_influencer.qc.stage import run_qc
from tests.support.assets import face
from tests.support.calibration import PHOTOS, _write_variant, calibration_photos

PERSONA = "obama"
# Two distinct pictures of the persona as references: obama_1, _3 and _4 are crops of one official portrait
# (faces.csv), the other candidates of the persona.
REFERENCES = ("obama_2.jpg", "obama3.jpg")  # the first from the calibration set, the second from tests/support/assets
VARIED = ("obama_1.jpg", "obama_3_720p.jpg", "obama_4_small.jpg")  # mirrored and blurred; obama_3_240p: resized
ECHO = "obama_2_echo.png"  # the generator returned a reference, mirrored


@dataclass
class Template:
    root: Path
    identity: dict[str, str]  # candidate file -> the person in it (labels.csv), MULTI for group photos
    blurred: set[str]


def workspace(root: Path) -> Workspace:
    return Workspace(root / "data", root / "models")


def build(root: Path) -> Template:
    """The workspace under ``root`` (``root/data``, ``root/models``), QC run on it."""
    ws = workspace(root)
    ws.cleaned.mkdir(parents=True)
    ws.synth.mkdir(parents=True)
    for name in REFERENCES:
        shutil.copy(PHOTOS / name if (PHOTOS / name).is_file() else face(name), ws.cleaned / name)
    identity = {}
    for p in calibration_photos():
        if p.name not in REFERENCES:
            shutil.copy(p.path, ws.synth / p.name)
            identity[p.name] = p.identity
    blurred = set()
    for name in VARIED:
        src, stem = PHOTOS / name, Path(name).stem
        im = Image.open(src).convert("RGB")
        ImageOps.mirror(im).save(ws.synth / f"{stem}_mirror.png")  # another picture of the persona to pHash
        identity[f"{stem}_mirror.png"] = PERSONA
        for kind, suffix in (("blur04", "_blur04.png"), ("blur10", "_blur10.jpg")):
            _write_variant(kind, im, src, ws.synth / f"{stem}{suffix}")
            identity[f"{stem}{suffix}"] = PERSONA
            blurred.add(f"{stem}{suffix}")
    ImageOps.mirror(Image.open(ws.cleaned / "obama_2.jpg").convert("RGB")).save(ws.synth / ECHO)
    identity[ECHO] = PERSONA
    run_qc(ws.cleaned, ws.synth, ws.qc_passed, spec=EngineSpec("dlib"), workers=2, cache_dir=ws.qc_cache)
    return Template(root, identity, blurred)


def clone(template: Template, tmp_path: Path) -> Workspace:
    shutil.copytree(template.root / "data", tmp_path / "data")
    return workspace(tmp_path)
