"""Vision stages on real photos with the real dlib face model."""

from __future__ import annotations

import contextlib
import csv
import io
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image, ImageFilter

from ai_influencer.imaging import BadImageError, load_rgb
from ai_influencer.qc.analysis import EngineSpec
from ai_influencer.qc.decision import QCThresholds
from ai_influencer.qc.report import REPORT_FIELDS
from ai_influencer.qc.stage import run_qc
from ai_influencer.settings import Settings
from ai_influencer.vision.background import BackgroundModelMissingError, BackgroundRemover
from ai_influencer.vision.faces import (
    LICENCES,
    DlibEngine,
    FaceModelMissingError,
    InsightFaceEngine,
    create_face_engine,
    insightface_pack_dir,
    largest,
    resolve_backend,
)
from ai_influencer.vision.prepare import prepare_references
from ai_influencer.vision.quality import face_sharpness, laplacian_variance
from tests.support.assets import face
from tests.support.tiny_models import tiny_segmenter_onnx


@pytest.fixture(scope="module")
def engine() -> DlibEngine:
    return DlibEngine()


def embed(engine: DlibEngine, name: str) -> np.ndarray:
    f = largest(engine.detect(load_rgb(face(name))))
    assert f is not None, name
    return f.embedding


def test_identity_score_separates_same_person_from_others(engine: DlibEngine) -> None:
    centroid = engine.centroid([embed(engine, "obama.jpg"), embed(engine, "obama3.jpg")])
    same = engine.identity_score(embed(engine, "obama2.jpg"), centroid)
    partial = engine.identity_score(embed(engine, "obama_partial_face.jpg"), centroid)
    other = engine.identity_score(embed(engine, "biden.jpg"), centroid)
    assert same > 0.45 and partial > 0.45, (same, partial)
    assert other < 0.2
    crowd = engine.detect(load_rgb(face("t1.jpg")))
    assert len(crowd) == 6
    assert max(engine.identity_score(f.embedding, centroid) for f in crowd) < 0.34


def test_sharpness_is_measured_at_a_fixed_face_scale(engine: DlibEngine) -> None:
    rgb = load_rgb(face("obama.jpg"))
    f = largest(engine.detect(rgb))
    assert f is not None
    sharp = face_sharpness(rgb, f.box)
    blurred = np.asarray(Image.fromarray(rgb).filter(ImageFilter.GaussianBlur(4)))
    assert sharp > 80 > face_sharpness(blurred, f.box)
    # The same face stored at twice the resolution: whole-image Laplacian variance drops a lot,
    # the fixed-scale face measure stays close.
    double = np.asarray(Image.fromarray(rgb).resize((rgb.shape[1] * 2, rgb.shape[0] * 2), Image.Resampling.LANCZOS))
    box2 = (f.box[0] * 2, f.box[1] * 2, f.box[2] * 2, f.box[3] * 2)
    gray, gray2 = (cv2.cvtColor(x, cv2.COLOR_RGB2GRAY) for x in (rgb, double))
    whole_ratio = laplacian_variance(gray2) / laplacian_variance(gray)
    face_ratio = face_sharpness(double, box2) / sharp
    assert whole_ratio < 0.15 and face_ratio > 0.5, (whole_ratio, face_ratio)
    assert face_sharpness(double, box2) > 80


def _variant(tmp: Path, name: str, convert) -> Path:
    im = Image.open(face("obama.jpg"))
    out = tmp / name
    convert(im, out)
    return out


def test_robust_decode_of_awkward_inputs(tmp_path: Path) -> None:
    rotated = tmp_path / "rotated.jpg"
    src = Image.open(face("obama.jpg"))
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways, display rotated 90 degrees clockwise
    src.rotate(90, expand=True).save(rotated, exif=exif)
    assert load_rgb(rotated).shape[:2] == (src.height, src.width)

    cmyk = _variant(tmp_path, "cmyk.jpg", lambda im, p: im.convert("CMYK").save(p))
    assert load_rgb(cmyk).shape[2] == 3

    sixteen = tmp_path / "16bit.png"
    gray16 = (np.asarray(src.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
    Image.fromarray(gray16).save(sixteen)
    decoded = load_rgb(sixteen)
    assert decoded.dtype == np.uint8 and decoded.shape[2] == 3
    assert abs(int(decoded.mean()) - int(np.asarray(src.convert("L")).mean())) <= 2

    rgba = tmp_path / "alpha.png"
    arr = np.dstack([np.asarray(src), np.zeros(src.size[::-1], dtype=np.uint8)])
    Image.fromarray(arr, "RGBA").save(rgba)
    assert (load_rgb(rgba) == 255).all()  # fully transparent -> white, not black

    gray = _variant(tmp_path, "gray.png", lambda im, p: im.convert("L").save(p))
    assert load_rgb(gray).shape[2] == 3


def test_bad_inputs_give_specific_errors(tmp_path: Path) -> None:
    huge = tmp_path / "huge.png"
    Image.new("1", (20000, 20000)).save(huge)  # 400 MP, a few KB on disk: refused before decoding
    with pytest.raises(BadImageError, match=r"huge\.png: image too large"):
        load_rgb(huge)
    big = tmp_path / "big.png"
    Image.new("RGB", (4000, 3000)).save(big)
    with pytest.raises(BadImageError, match=r"big\.png: image too large \(4000x3000 = 12 MP > 10 MP limit\)"):
        load_rgb(big, max_pixels=10_000_000)
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"this is not a jpeg at all")
    with pytest.raises(BadImageError, match=r"garbage\.jpg: not a readable image"):
        load_rgb(garbage)
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(face("obama.jpg").read_bytes()[:5000])
    with pytest.raises(BadImageError, match=r"truncated\.jpg: corrupt or truncated"):
        load_rgb(truncated)
    with pytest.raises(BadImageError, match="file not found"):
        load_rgb(tmp_path / "missing.png")


def test_prepare_crops_faces_and_continues_past_bad_files(engine: DlibEngine, tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    for n in ("obama.jpg", "obama3.jpg"):
        shutil.copy(face(n), raw / n)
    (raw / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    Image.new("RGB", (400, 300), (90, 140, 200)).save(raw / "sky.png")
    items = {i.source.name: i for i in prepare_references(raw, tmp_path / "cleaned", engine=engine, out_size=512)}
    assert items["obama.jpg"].status == items["obama3.jpg"].status == "ok"
    assert items["broken.jpg"].status == "error" and "not a readable image" in items["broken.jpg"].reason
    assert items["sky.png"].status == "error" and items["sky.png"].reason == "no face found"
    out = Image.open(tmp_path / "cleaned" / "obama.png")
    assert out.size == (512, 512) and out.format == "PNG"
    f = largest(engine.detect(np.asarray(out.convert("RGB"))))
    assert f is not None
    cx = (f.box[0] + f.box[2]) / 2
    assert abs(cx - 256) < 60  # face-centred
    again = prepare_references(raw, tmp_path / "cleaned", engine=engine, out_size=512)
    assert {i.source.name for i in again if i.status == "skipped"} == {"obama.jpg", "obama3.jpg"}


def test_prepare_redoes_a_reference_whose_photo_or_options_changed(engine: DlibEngine, tmp_path: Path) -> None:
    raw, cleaned = tmp_path / "raw", tmp_path / "cleaned"
    raw.mkdir()
    shutil.copy(face("obama.jpg"), raw / "a.jpg")
    shutil.copy(face("obama3.jpg"), raw / "b.jpg")
    assert [i.status for i in prepare_references(raw, cleaned, engine=engine, out_size=256)] == ["ok", "ok"]
    before = (cleaned / "a.png").read_bytes()
    shutil.copy(face("obama2.jpg"), raw / "a.jpg")  # another photo under the same name
    status = {i.source.name: i.status for i in prepare_references(raw, cleaned, engine=engine, out_size=256)}
    assert status == {"a.jpg": "ok", "b.jpg": "skipped"}
    assert (cleaned / "a.png").read_bytes() != before
    resized = prepare_references(raw, cleaned, engine=engine, out_size=320)  # another option: all again
    assert [i.status for i in resized] == ["ok", "ok"]
    with Image.open(cleaned / "b.png") as im:
        assert im.size == (320, 320)


def test_rembg_background_removal_with_a_reused_session(tmp_path: Path) -> None:
    model = tiny_segmenter_onnx(tmp_path / "rembg" / "tiny.onnx")
    remover = BackgroundRemover(str(model), tmp_path / "rembg")
    assert remover.session_name == "u2net_custom"
    rgb = np.zeros((200, 300, 3), dtype=np.uint8)
    rgb[:, 150:] = 250  # bright right half = "foreground" for this model
    mask = remover.mask(rgb)
    assert mask.shape == (200, 300)
    assert mask[:, 200:].mean() > mask[:, :100].mean() + 100
    session = remover._get_session()
    out = remover.remove(rgb, background=(0, 255, 0))
    assert remover._get_session() is session
    assert out[100, 20, 1] > 200 and out[100, 20, 0] < 50  # dark left half replaced by green


def test_missing_models_give_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(BackgroundModelMissingError, match=r"u2net_human_seg\.onnx"):
        BackgroundRemover("u2net_human_seg", tmp_path / "rembg")
    with pytest.raises(FaceModelMissingError, match=r"model pack not found at .*buffalo_l.*det_10g\.onnx"):
        InsightFaceEngine(tmp_path / "insightface" / "models" / "buffalo_l")
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "genderage.onnx").write_bytes(b"x")
    with pytest.raises(FaceModelMissingError, match="incomplete"):
        InsightFaceEngine(partial)
    assert create_face_engine("auto", insightface_root=tmp_path / "none").name == "dlib"
    with pytest.raises(ValueError, match="unknown face backend"):
        create_face_engine("nope")


def test_auto_never_picks_the_non_commercial_backend(tmp_path: Path) -> None:
    """A buffalo_l pack on disk must not switch anyone to models with a non-commercial licence."""
    pack = insightface_pack_dir(tmp_path)
    pack.mkdir(parents=True)
    for name in ("det_10g.onnx", "w600k_r50.onnx"):
        (pack / name).write_bytes(b"onnx")
    assert resolve_backend("auto") == "dlib" and resolve_backend("insightface") == "insightface"
    assert create_face_engine("auto", insightface_root=tmp_path).name == "dlib"
    assert Settings(_env_file=None).face_backend == "dlib"
    assert "NON-COMMERCIAL" in LICENCES["insightface"]


@pytest.fixture(scope="module")
def qc_data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path | dict[str, str]]:
    from ai_influencer.openrouter import OpenRouterClient
    from tests.support.openrouter_stub import StubOpenRouter

    root = tmp_path_factory.mktemp("qc")
    refs, cand = root / "cleaned", root / "synth"
    refs.mkdir()
    cand.mkdir()
    for n in ("obama.jpg", "obama3.jpg"):
        shutil.copy(face(n), refs / n)
    kinds: dict[str, str] = {}
    with StubOpenRouter(image_mix={"persona": 0.5, "other": 0.25, "blurred": 0.25}, image_size=640, seed=5) as s:
        c = OpenRouterClient("sk-or-test-key", base_url=s.base_url)
        for i in range(16):
            data = c.generate_image("google/gemini-2.5-flash-image", f"prompt {i}").images[0].data
            name = f"img{i:02d}.png"
            (cand / name).write_bytes(data)
            kinds[name] = s.requests[-1].served_kind or ""
    first_persona = next(n for n, k in kinds.items() if k == "persona")
    dup = Image.open(cand / first_persona).convert("RGB").resize((600, 600))
    buf = io.BytesIO()
    dup.save(buf, format="JPEG", quality=90)
    (cand / "zz_dup.jpg").write_bytes(buf.getvalue())
    (cand / "zz_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    return {"refs": refs, "cand": cand, "root": root, "kinds": kinds, "dup_of": {"zz_dup.jpg": first_persona}}


def test_qc_accepts_persona_rejects_others_blur_duplicates(qc_data: dict) -> None:
    out = qc_data["root"] / "qc_passed"
    result = run_qc(qc_data["refs"], qc_data["cand"], out, spec=EngineSpec("dlib"), workers=2)
    rows = {r.file: r for r in result.rows}
    kinds: dict[str, str] = qc_data["kinds"]
    assert set(kinds.values()) == {"persona", "other", "blurred"}
    for name, kind in kinds.items():
        row = rows[name]
        if kind == "persona" and row.duplicate_of and kinds.get(row.duplicate_of) == "persona":
            # the stub's photo pool can serve one persona crop twice: the worse copy goes, its twin stays
            assert row.verdict == "rejected" and row.reason.startswith("duplicate"), row
            assert rows[row.duplicate_of].verdict == "accepted", rows[row.duplicate_of]
        elif kind == "persona":
            assert row.verdict == "accepted", row
        elif kind == "other":
            # a soft face is rejected by the cheaper sharpness check, without paying for the descriptor
            blurred = "sharpness" in row.reason and row.score is None
            assert row.verdict == "rejected" and ("identity" in row.reason or blurred), row
        else:
            assert row.verdict == "rejected" and ("sharpness" in row.reason or row.reason == "no face detected"), row
    dup = rows["zz_dup.jpg"]
    assert dup.verdict == "rejected" and dup.duplicate_of == qc_data["dup_of"]["zz_dup.jpg"]
    assert rows["zz_broken.png"].verdict == "error" and "zz_broken" not in rows["zz_broken.png"].reason
    accepted = sorted(p.name for p in out.glob("*.png"))
    assert accepted == sorted(n for n, k in kinds.items() if k == "persona" and rows[n].verdict == "accepted")
    assert sum(k == "persona" and rows[n].verdict == "accepted" for n, k in kinds.items()) >= 3
    with result.report.open() as fh:
        table = list(csv.DictReader(fh))
    assert tuple(table[0].keys()) == REPORT_FIELDS  # the legacy seven first, then the evidence columns
    assert REPORT_FIELDS[:7] == ("file", "faces", "score", "sharpness", "duplicate_of", "verdict", "reason")
    assert len(table) == len(kinds) + 2
    assert result.contact_sheet == out / "reports" / "contact_sheet.png"
    sheet = Image.open(result.contact_sheet)
    assert sheet.format == "PNG" and sheet.width > 500


def test_qc_thresholds_are_parameters_and_rerun_mirrors_verdicts(qc_data: dict) -> None:
    out = qc_data["root"] / "qc_strict"
    refs, cand, dlib = qc_data["refs"], qc_data["cand"], EngineSpec("dlib")
    loose = run_qc(refs, cand, out, spec=dlib, thresholds=QCThresholds(minsim=0.0, minblur=0.0), workers=1)
    strict = run_qc(refs, cand, out, spec=dlib, thresholds=QCThresholds(minsim=0.99), workers=1)
    assert loose.counts["accepted"] > strict.counts["accepted"] == 0
    assert not list(out.glob("img*.png"))  # stale approvals from the loose run are gone


POOL_SCRIPT = """
import multiprocessing, os, sys, time
from concurrent.futures import ProcessPoolExecutor
from ai_influencer.qc.analysis import EngineSpec, init_worker
pool = ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn"), initializer=init_worker,
                           initargs=(EngineSpec("dlib"),))
print(" ".join(str(pool.submit(os.getpid).result()) for _ in range(4)), flush=True)
time.sleep(120)
"""


def test_qc_workers_outlive_a_stop_signal_and_not_their_parent() -> None:
    """A SIGTERM to the process group (Prefect's cancellation, a terminal's Ctrl-C) leaves the QC pool
    working while its owner drains; an owner killed outright takes its workers with it."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from tests.conftest import REPO

    proc = subprocess.Popen(
        [sys.executable, "-c", POOL_SCRIPT], cwd=REPO, stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        assert proc.stdout is not None
        workers = {int(p) for p in proc.stdout.readline().split()}
        assert workers and proc.pid not in workers

        def alive(pid: int) -> bool:
            """Running, not merely a zombie waiting for a reaper (PID 1 in a container may not reap)."""
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
            except FileNotFoundError:
                return False
            return stat.rsplit(")", 1)[1].split()[0] != "Z"

        for pid in workers:
            os.kill(pid, signal.SIGTERM)
            os.kill(pid, signal.SIGINT)
        time.sleep(1.0)
        assert all(alive(pid) for pid in workers), "a stop signal killed a QC worker (a broken pool)"
        proc.kill()  # SIGKILL to the owner only: nobody shuts the pool down
        proc.wait(10)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and any(alive(pid) for pid in workers):
            time.sleep(0.2)
        assert not any(alive(pid) for pid in workers), "QC workers outlived their owner"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


def test_qc_rejects_copies_of_a_reference_without_paying_for_the_descriptor(engine: DlibEngine, tmp_path: Path) -> None:
    """A generator that echoes its input (the photo as is, resized, re-encoded or mirrored) made no training image."""
    refs, cand = tmp_path / "refs", tmp_path / "cand"
    refs.mkdir()
    cand.mkdir()
    for n in ("obama.jpg", "obama3.jpg"):
        shutil.copy(face(n), refs / n)
    shutil.copy(face("obama.jpg"), cand / "echo.jpg")
    small = Image.open(face("obama.jpg")).convert("RGB")
    small.resize((small.width * 3 // 5, small.height * 3 // 5), Image.Resampling.LANCZOS).save(cand / "echo_small.png")
    flipped = Image.open(face("obama3.jpg")).convert("RGB").transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    flipped.thumbnail((1024, 1024))
    flipped.save(cand / "echo_flipped.jpg", quality=85)
    shutil.copy(face("obama2.jpg"), cand / "new_photo.jpg")  # another photo of the persona: a real candidate
    rows = {r.file: r for r in run_qc(refs, cand, tmp_path / "out", engine=engine, workers=1).rows}
    for name, ref in (("echo.jpg", "obama.jpg"), ("echo_small.png", "obama.jpg"), ("echo_flipped.jpg", "obama3.jpg")):
        assert rows[name].verdict == "rejected", rows[name]
        assert f"copy of reference {ref}" in rows[name].reason.split("; "), rows[name]
        assert rows[name].score is None  # judged on hashes: no descriptor computed
    assert rows["new_photo.jpg"].verdict == "accepted", rows["new_photo.jpg"]


def test_qc_face_scan_finds_what_the_full_scan_finds(engine: DlibEngine) -> None:
    """``locate`` (QC's coarse-to-fine scan) reports the full scan's boxes and scores, so descriptors are the same:
    a crowd of small faces (t1: the coarse pass finds none and goes down), two faces, one large face."""
    for name in ("t1.jpg", "obama3.jpg"):
        rgb = load_rgb(face(name))
        full, staged = engine.detect(rgb), engine.locate(rgb)
        assert [(f.box, f.score) for f in staged] == [(f.box, f.score) for f in full], name
        assert all(f.embedding is None for f in staged)
        chip = engine.face_chip(largest(staged))
        assert np.abs(engine.embed_chip(chip) - largest(full).embedding).max() < 1e-5, name  # ONNX Runtime vs dlib
    two = load_rgb(Path(__file__).parent / "assets" / "faces-calibration" / "photos" / "two_people.jpg")
    assert [f.box for f in engine.locate(two)] == [f.box for f in engine.detect(two)] and len(engine.locate(two)) == 2


def test_qc_face_scan_on_large_images_stays_within_a_hog_cell_of_the_full_scan(engine: DlibEngine) -> None:
    """From ~600 px up the coarse levels are one resize of the image, not dlib's chain (``_HogPyramid``): the
    same faces, each box within one HOG cell of the full scan's, the identity score within 0.01 (issue 27)."""
    import cv2

    refs = [load_rgb(face(n)) for n in ("obama.jpg", "obama3.jpg")]
    centroid = engine.centroid([largest(engine.detect(r)).embedding for r in refs])
    calibration = Path(__file__).parent / "assets" / "faces-calibration" / "photos"
    for path in (face("obama2.jpg"), calibration / "two_people.jpg", face("biden.jpg")):
        small = load_rgb(path)
        side = 1024 / max(small.shape[:2])
        rgb = cv2.resize(small, None, fx=side, fy=side, interpolation=cv2.INTER_CUBIC)
        full, staged = engine.detect(rgb), engine.locate(rgb)
        assert len(staged) == len(full) >= 1, path.name
        for f, s in zip(sorted(full, key=lambda f: f.box), sorted(staged, key=lambda f: f.box), strict=True):
            cell = 8 * (f.box[2] - f.box[0]) / 80  # a HOG cell at the level the face was found on
            assert max(abs(a - b) for a, b in zip(f.box, s.box, strict=True)) <= cell, (path.name, f.box, s.box)
        full_score = engine.identity_score(largest(full).embedding, centroid)
        staged_score = engine.identity_score(engine.embed_chip(engine.face_chip(largest(staged))), centroid)
        assert abs(full_score - staged_score) <= 0.01, (path.name, full_score, staged_score)


def test_a_stored_analysis_without_descriptor_is_redone_when_a_looser_gate_needs_it(tmp_path: Path) -> None:
    refs, cand, cache = tmp_path / "refs", tmp_path / "cand", tmp_path / "cache"
    refs.mkdir()
    cand.mkdir()
    for n in ("obama.jpg", "obama3.jpg"):
        shutil.copy(face(n), refs / n)
    soft = Image.open(face("obama2.jpg")).convert("RGB").filter(ImageFilter.GaussianBlur(6))
    soft.save(cand / "soft.jpg", quality=95)
    engine = DlibEngine()
    strict = run_qc(refs, cand, tmp_path / "a", engine=engine, workers=1, cache_dir=cache)
    assert strict.rows[0].score is None and "sharpness" in strict.rows[0].reason  # blurred: no descriptor
    loose = run_qc(
        refs, cand, tmp_path / "b", engine=engine, workers=1, cache_dir=cache, thresholds=QCThresholds(minblur=0)
    )
    assert loose.rows[0].score is not None and loose.rows[0].verdict == "accepted", loose.rows[0]


def test_dlib_descriptor_on_onnx_runtime_gives_dlibs_numbers(engine: DlibEngine, tmp_path: Path) -> None:
    """QC's descriptor is dlib's network rebuilt for ONNX Runtime from the same file: the same 128 numbers (to
    float rounding) on real faces; a model file it does not know is refused, and dlib's own code is kept."""
    import dlib

    from ai_influencer.vision.dlib_descriptor import DescriptorUnavailable, DlibDescriptor
    from ai_influencer.vision.faces import dlib_models_dir

    for name in ("obama.jpg", "biden.jpg", "t1.jpg"):
        for f in engine.locate(load_rgb(face(name))):
            chip = engine.face_chip(f)
            dlib_own = np.asarray(engine._encoder.compute_face_descriptor(chip), dtype=np.float32)
            assert np.abs(engine.embed_chip(chip) - dlib_own).max() < 1e-5, name
            assert engine._net is not None  # built (and checked against dlib) on the first descriptor
    model = dlib_models_dir() / "dlib_face_recognition_resnet_model_v1.dat"
    cut = tmp_path / "cut.dat"
    cut.write_bytes(model.read_bytes()[: model.stat().st_size // 2])  # no fully connected layer
    with pytest.raises(DescriptorUnavailable):
        DlibDescriptor.load(cut, dlib.face_recognition_model_v1(str(model)))
