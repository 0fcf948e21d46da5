"""Identity on video with the real dlib face engine and real photos: H.264 clips made of the persona's
photos pass, a clip with another person fails, frames are sampled by time, the filmstrip is written."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from ai_influencer.video.frames import BadVideoError, probe_video, sample_frames
from ai_influencer.video.identity import ClipIdentityChecker, ClipIdentityRules
from ai_influencer.vision.faces import DlibEngine
from tests.support.assets import face
from tests.support.video_stub import OTHER_PHOTOS, PERSONA_PHOTOS, cover, encode_mp4, face_crop

SIZE = (270, 480)
FPS = 6


@pytest.fixture(scope="module")
def checker() -> Iterator[ClipIdentityChecker]:
    # References: two photos of the persona that are NOT the picture the persona clips are made from.
    yield ClipIdentityChecker(DlibEngine(), [face("obama2.jpg"), face("obama3.jpg")])


def _frames(source: Image.Image | None, n: int) -> list[Image.Image]:
    if source is None:
        return [Image.new("RGB", SIZE, (40 + 10 * i, 90, 140)) for i in range(n)]
    return [cover(source, SIZE, 1.0 + 0.02 * i, 0.0) for i in range(n)]


def _clip(path: Path, *parts: tuple[Image.Image | None, int]) -> Path:
    frames = [f for source, n in parts for f in _frames(source, n)]
    path.write_bytes(encode_mp4(frames, FPS))
    return path


PERSONA = face_crop("obama.jpg", PERSONA_PHOTOS["obama.jpg"])
OTHER = face_crop("biden.jpg", OTHER_PHOTOS["biden.jpg"])


def test_frames_are_sampled_by_time(tmp_path: Path) -> None:
    clip = _clip(tmp_path / "c.mp4", (None, 18))  # 3 s at 6 fps
    assert [f.t for f in sample_frames(clip)] == [0.0, 0.5, 1.0, 1.5, 2.0, 2.5]
    assert [f.t for f in sample_frames(clip, 1.0)] == [0.0, 1.0, 2.0]
    assert sample_frames(clip)[0].rgb.shape == (480, 270, 3)
    probe = probe_video(clip)
    assert (probe.frames, probe.fps, probe.duration_s, probe.has_audio) == (18, 6.0, 3.0, False)


def test_a_cut_or_corrupt_clip_is_refused_with_its_name(tmp_path: Path) -> None:
    data = _clip(tmp_path / "whole.mp4", (None, 12)).read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) // 2])
    (tmp_path / "junk.mp4").write_bytes(b"\x00" * 4096)
    for name in ("cut.mp4", "junk.mp4"):
        with pytest.raises(BadVideoError, match=name):
            probe_video(tmp_path / name)


def test_the_persona_passes(checker: ClipIdentityChecker, tmp_path: Path) -> None:
    result = checker.check(_clip(tmp_path / "p.mp4", (PERSONA, 18)), filmstrip=tmp_path / "p.png")
    assert result.verdict == "passed", result.reason
    assert (result.frames, result.frames_with_face, result.persona_frames, result.other_person_frames) == (6, 6, 6, 0)
    assert result.min_score is not None and result.min_score >= checker.rules.thresholds.minsim
    assert result.median_score is not None and result.median_score >= result.min_score
    with Image.open(tmp_path / "p.png") as sheet:
        assert sheet.width == 6 * (160 + 6) + 6
    assert result.filmstrip == str(tmp_path / "p.png")


def test_another_persons_clip_fails(checker: ClipIdentityChecker, tmp_path: Path) -> None:
    result = checker.check(_clip(tmp_path / "o.mp4", (OTHER, 18)))
    assert result.verdict == "failed"
    assert result.reason.startswith("another person on 6 of 6 frames with a face (first at 0.0 s")
    assert result.persona_frames == 0
    assert all(f["score"] < checker.clearly_other for fr in result.per_frame for f in fr["faces"])


def test_one_other_person_fails_a_clip_the_persona_is_in(checker: ClipIdentityChecker, tmp_path: Path) -> None:
    result = checker.check(_clip(tmp_path / "m.mp4", (PERSONA, 12), (OTHER, 6)))
    assert result.verdict == "failed" and result.persona_frames == 4 and result.other_person_frames == 2
    assert "first at 2.0 s" in result.reason


def test_frames_without_a_face_are_counted_not_held_against_the_clip(
    checker: ClipIdentityChecker, tmp_path: Path
) -> None:
    result = checker.check(_clip(tmp_path / "b.mp4", (None, 9), (PERSONA, 9)))
    assert result.verdict == "passed" and result.frames_without_face == 3 and result.persona_frames == 3
    empty = checker.check(_clip(tmp_path / "n.mp4", (None, 12)))
    assert empty.verdict == "failed" and empty.reason == "no face on any of the 4 sampled frames"
    assert empty.median_score is None and empty.min_score is None


def test_bad_rules_fail_at_once() -> None:
    with pytest.raises(ValueError, match="min_persona_fraction must be in"):
        ClipIdentityRules(min_persona_fraction=0).validate()
    with pytest.raises(ValueError, match="sample_fps"):
        ClipIdentityRules(sample_fps=0).validate()
