"""Streamed QC on real photos: images checked as they arrive give exactly batch QC's verdicts and outputs.

Real faces (the calibration set: the persona, other people, a group photo) with the held-out protocol's
copies (blurred, byte copies, half-size re-encodes), arriving one by one in shuffled order while the
stream runs: some handed over directly (as the generation's outcomes are), the rest found by the
folder watcher (as from a generator in another process). Batch QC then runs over the same folders.
"""

from __future__ import annotations

import random
import shutil
import threading
import time
from pathlib import Path

import pytest

from ai_influencer.io import atomic_write_bytes
from ai_influencer.qc.analysis import EngineSpec
from ai_influencer.qc.decision import QCThresholds
from ai_influencer.qc.report import read_report
from ai_influencer.qc.stage import run_qc
from ai_influencer.qc.stream import StreamingQC
from ai_influencer.vision.faces import DlibEngine
from tests.support.calibration import PHOTOS, LabelledPhoto, calibration_photos, make_variants

PERSONA_REFS = ("obama_1.jpg", "obama_2.jpg")
OTHERS = ("biden_1.jpg", "kit_harington_1.jpg", "kit_harington_2.jpg", "rose_leslie_1.jpg")


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    """References (two pictures of the persona) and the candidate files, made once (not yet in place)."""
    root = tmp_path_factory.mktemp("stream")
    refs = root / "refs"
    refs.mkdir()
    for name in PERSONA_REFS:
        shutil.copy(PHOTOS / name, refs / name)
    photos: list[LabelledPhoto] = [
        p
        for p in calibration_photos()
        if (p.identity == "obama" and p.name not in PERSONA_REFS) or p.name in OTHERS or p.group
    ][:12]
    variants = make_variants(photos, root / "made", kinds=("blur10", "dup", "near"))
    return refs, [v.path for v in variants]


def arrive(files: list[Path], cand: Path, stream: StreamingQC | None, seed: int) -> None:
    """Write the files into ``cand`` one by one, as a generator does (atomic renames), in shuffled order;
    every other one is handed to the stream at once, the rest are left to its watcher."""
    order = list(files)
    random.Random(seed).shuffle(order)
    for i, src in enumerate(order):
        target = atomic_write_bytes(cand / src.name, src.read_bytes())
        if stream is not None and i % 2 == 0:
            stream.feed(target)
        time.sleep(0.02)


def test_streamed_qc_equals_batch_qc_image_by_image(folders: tuple[Path, list[Path]], tmp_path: Path) -> None:
    refs, files = folders
    th = QCThresholds()
    cand, out_stream, out_batch = tmp_path / "cand", tmp_path / "passed-stream", tmp_path / "passed-batch"
    cand.mkdir()
    cache = tmp_path / "cache"
    # Two images are on disk before the stream starts (a resumed run): they are checked too.
    for src in files[:2]:
        shutil.copy(src, cand / src.name)
    with StreamingQC(refs, cand, out_stream, thresholds=th, spec=EngineSpec("dlib"), workers=2,
                     cache_dir=cache, poll_s=0.1) as stream:  # fmt: skip
        feeder = threading.Thread(target=arrive, args=(files[2:], cand, stream, 7))
        feeder.start()
        feeder.join()
        stream.close()
        streamed = stream.result()
        assert stream.pool.analysed == len(files) + len(PERSONA_REFS) and stream.pool.from_cache == 0

    batch = run_qc(refs, cand, out_batch, spec=EngineSpec("dlib"), workers=2)  # no cache: its own analyses
    assert len(streamed.rows) == len(files)
    assert [vars(r) for r in streamed.rows] == [vars(r) for r in batch.rows]
    # The same report, byte for byte, and the same images kept.
    assert streamed.report.read_text() == batch.report.read_text()
    assert sorted(p.name for p in out_stream.iterdir() if p.is_file()) == sorted(
        p.name for p in out_batch.iterdir() if p.is_file()
    )
    assert streamed.contact_sheet.is_file()
    verdicts = read_report(streamed.report)
    # The set exercises every kind of decision: accepted, blurred, someone else, duplicate copies.
    reasons = " ".join(r.reason for r in verdicts.values())
    # The persona's two other pictures (obama_3 at 720p and 240p is one picture) are the ones kept.
    assert {n for n, r in verdicts.items() if r.verdict == "accepted"} == {"obama_3_720p.jpg", "obama_4_small.jpg"}
    assert "sharpness" in reasons and "duplicate" in reasons and ("identity" in reasons or "impostor" in reasons)

    # Checked once: a second stream over the same images (a resumed run) analyses nothing.
    with StreamingQC(refs, cand, tmp_path / "again", thresholds=th, spec=EngineSpec("dlib"), cache_dir=cache) as again:
        again.close()
        assert [vars(r) for r in again.result().rows] == [vars(r) for r in batch.rows]
        assert again.pool.analysed == 0 and again.pool.from_cache == len(files) + len(PERSONA_REFS)


def test_accepted_so_far_is_the_decision_over_what_arrived(folders: tuple[Path, list[Path]], tmp_path: Path) -> None:
    """Provisional counts during the run are batch QC over the images checked so far."""
    refs, files = folders
    cand = tmp_path / "cand"
    cand.mkdir()
    engine = DlibEngine()  # an engine object: analysed in a thread of this process
    with StreamingQC(refs, cand, tmp_path / "out", thresholds=QCThresholds(), engine=engine, poll_s=60) as stream:
        assert stream.accepted() == 0 and stream.checked == 0
        first = files[:6]
        for src in first:
            stream.feed(atomic_write_bytes(cand / src.name, src.read_bytes()))
        assert stream.wait_idle(120)
        part = tmp_path / "part"
        part.mkdir()
        for src in first:
            shutil.copy(src, part / src.name)
        expected = run_qc(refs, part, tmp_path / "part-out", engine=engine).counts["accepted"]
        assert stream.checked == 6 and stream.accepted() == expected
        stream.close()
        stream.result()


def test_a_persona_without_a_usable_reference_fails_before_anything_arrives(tmp_path: Path) -> None:
    refs, cand = tmp_path / "refs", tmp_path / "cand"
    refs.mkdir()
    cand.mkdir()
    shutil.copy(PHOTOS / "obama_1.jpg", refs / "obama_1.jpg")
    (refs / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    from PIL import Image

    Image.new("RGB", (64, 64), "white").save(refs / "blank.png")
    shutil.move(refs / "obama_1.jpg", tmp_path / "moved.jpg")  # only unusable references are left
    with pytest.raises(ValueError, match=r"no usable reference face .*broken\.png.*blank\.png|blank\.png.*broken"):
        StreamingQC(refs, cand, tmp_path / "out", thresholds=QCThresholds(), engine=DlibEngine()).__enter__()


def test_overshoot_is_counted_on_the_final_verdicts_as_the_files_show(tmp_path: Path) -> None:
    """Target 1: a half-size copy passes first, then its original arrives and becomes the kept copy. The files
    show 0 paid beyond the first accepted image (the original, the last one); the count taken at the moment
    the provisional verdicts first reached the target said 1."""
    from concurrent.futures import Future

    from PIL import Image

    from ai_influencer.qc.stream import UntilAccepted
    from tests.support.assets import face

    refs, cand = tmp_path / "refs", tmp_path / "cand"
    refs.mkdir()
    cand.mkdir()
    for name in ("obama.jpg", "obama3.jpg"):
        shutil.copy(face(name), refs / name)
    original = Image.open(face("obama2.jpg")).convert("RGB")
    with StreamingQC(refs, cand, tmp_path / "out", thresholds=QCThresholds(), engine=DlibEngine()) as stream:
        until = UntilAccepted(stream, target=1, window=4, image_of=lambda produced: produced)  # type: ignore[arg-type,return-value]
        for name, image in (("a_half.jpg", original.resize((313, 600))), ("b_full.jpg", original)):
            image.save(cand / name, quality=95)
            done: Future = Future()
            done.set_result((cand / name, True))
            until.on_done(done)
            assert stream.wait_idle(60)
        rows = stream.verdicts()
        assert rows["a_half.jpg"].duplicate_of == "b_full.jpg" and rows["b_full.jpg"].verdict == "accepted"
        assert until.paid_at_target == 1  # the half-size copy reached the target first, provisionally
        assert until.overshoot == 0
