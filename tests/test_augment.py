from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

from PIL import Image

from ai_influencer.dataset.augment import augment_and_caption
from ai_influencer.dataset.manifest import ImageRecord
from ai_influencer.prompt_bank import load_prompt_bank
from tests.conftest import REPO
from tests.support.assets import face


def _inputs(tmp: Path) -> tuple[Path, Path]:
    src = tmp / "qc_passed"
    src.mkdir()
    shutil.copy(face("obama.jpg"), src / "a.jpg")
    shutil.copy(face("obama3.jpg"), src / "b.jpg")
    manifest = tmp / "manifest.json"
    rec = ImageRecord(
        key="a",
        file="a.jpg",
        model="m",
        prompt="p",
        scene="beach_sunset",
        lighting="golden_hour",
        outfit="summer_dress",
        pose="candid_laugh",
    )
    manifest.write_text(json.dumps({"images": [rec.model_dump(mode="json")]}))
    return src, manifest


def test_augment_keeps_originals_writes_variants_and_captions(tmp_path: Path) -> None:
    src, manifest = _inputs(tmp_path)
    bank = load_prompt_bank(REPO / "prompt_bank" / "default.yaml")
    res = augment_and_caption(
        src,
        tmp_path / "aug",
        tmp_path / "cap",
        manifest=manifest,
        num_aug=2,
        size=256,
        trigger="ohwx",
        class_word="man",
        bank=bank,
    )
    names = sorted(p.name for p in res.images)
    assert names == ["a.jpg", "a_aug1.jpg", "a_aug2.jpg", "b.jpg", "b_aug1.jpg", "b_aug2.jpg"]
    assert (tmp_path / "aug" / "a.jpg").read_bytes() == (src / "a.jpg").read_bytes()
    with Image.open(tmp_path / "aug" / "a_aug1.jpg") as im:
        assert im.format == "JPEG" and im.size == (256, 256)
        ref = io.BytesIO()
        Image.new("RGB", (8, 8)).save(ref, format="JPEG", quality=95)
        assert im.quantization == Image.open(ref).quantization  # written at quality 95
    cap_a = (tmp_path / "cap" / "a_aug1.txt").read_text().strip()
    assert cap_a.startswith("ohwx man, candid moment, laughing, wearing a flowy floral summer dress")
    assert "golden hour sunlight" in cap_a and "beach" in cap_a
    cap_b = (tmp_path / "cap" / "b.txt").read_text().strip()
    assert cap_b == "ohwx man, wearing casual outfit, candid lifestyle setting, natural light"  # defaults


def test_augmentation_is_reproducible_for_a_seed(tmp_path: Path) -> None:
    src, _ = _inputs(tmp_path)
    a = augment_and_caption(src, tmp_path / "a", tmp_path / "ca", num_aug=1, size=128, seed=7)
    b = augment_and_caption(src, tmp_path / "b", tmp_path / "cb", num_aug=1, size=128, seed=7)
    c = augment_and_caption(src, tmp_path / "c", tmp_path / "cc", num_aug=1, size=128, seed=8)
    pick = lambda r: (next(p for p in r.images if p.name == "a_aug1.jpg")).read_bytes()  # noqa: E731
    assert pick(a) == pick(b) != pick(c)


def test_kohya_layout_and_sidecar_metadata(tmp_path: Path) -> None:
    src, _ = _inputs(tmp_path)
    side = ImageRecord(
        key="b", file="b.jpg", model="m", prompt="p", scene="gym", lighting="overcast", outfit="athleisure"
    )
    (src / "b.json").write_text(side.model_dump_json())
    res = augment_and_caption(src, tmp_path / "aug", tmp_path / "cap", num_aug=1, size=128, kohya_repeats=10)
    assert res.kohya_dir is not None and res.kohya_dir.name == "10_ohwx woman"
    files = sorted(p.name for p in res.kohya_dir.iterdir())
    assert files == sorted(
        [*(f"{s}.jpg" for s in ("a", "a_aug1", "b", "b_aug1")), *(f"{s}.txt" for s in ("a", "a_aug1", "b", "b_aug1"))]
    )
    assert "gym" in (res.kohya_dir / "b.txt").read_text()
    (src / "bad.png").write_bytes(b"nope")
    again = augment_and_caption(src, tmp_path / "aug2", tmp_path / "cap2", num_aug=0, size=128)
    assert len(again.errors) == 1 and "bad.png" in again.errors[0]
