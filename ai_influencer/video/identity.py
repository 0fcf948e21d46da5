"""Identity on video: is the persona the one person in a clip?

Frames are sampled at a fixed rate (two per second by default, ``frames.sample_frames``) and every face
on them is scored with the image QC's face engine and rule (``qc.decision``): the calibrated score
against the centroid of the references must reach ``minsim`` and the references must agree on their own
(``references_needed``, floor ``minsim - agreement_slack``). A face below ``minsim - impostor_gap`` is
someone else, the same line QC draws for its impostors; a face between the two is "unsure" and counts
neither way (a profile, a blink, motion blur).

A clip passes when the persona is on at least ``min_persona_fraction`` of the frames that show a face and
no frame shows anyone else. Frames without a face (a cut-away, the back of the head) are counted and
reported, not held against the clip; a clip with no face at all fails. Face sharpness (``minblur``) is not
applied: video frames carry motion blur that a still would not, and the identity score already drops on a
face too soft to recognise. Faces narrower than ``min_face_px`` are too small to identify and are ignored.
"""

from __future__ import annotations

import io
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from ai_influencer.dataset.contact_sheet import Tile, render_contact_sheet
from ai_influencer.options.video import VIDEO_DEFAULTS
from ai_influencer.qc.analysis import EngineSpec, analyze
from ai_influencer.qc.decision import QCThresholds, reference_centroid, references_needed
from ai_influencer.video.frames import SAMPLE_FPS, SampledFrame, sample_frames
from ai_influencer.vision.faces import FaceEngine

MIN_PERSONA_FRACTION = VIDEO_DEFAULTS.min_persona_fraction  # the video options' (options.video)
MIN_FACE_PX = VIDEO_DEFAULTS.min_face_px
PERSONA, OTHER, UNSURE = "persona", "other", "unsure"
PASSED, FAILED = "passed", "failed"
_BOX_COLOURS = {PERSONA: (30, 180, 60), OTHER: (220, 40, 40), UNSURE: (230, 170, 20)}


@dataclass(frozen=True)
class ClipIdentityRules:
    """The thresholds of image QC plus what a clip adds; ``validate`` gives the one-line error a user sees."""

    thresholds: QCThresholds = field(default_factory=QCThresholds)
    min_persona_fraction: float = MIN_PERSONA_FRACTION
    sample_fps: float = SAMPLE_FPS
    min_face_px: int = MIN_FACE_PX

    def validate(self) -> ClipIdentityRules:
        if not 0.0 < self.min_persona_fraction <= 1.0:
            raise ValueError(f"min_persona_fraction must be in (0, 1], got {self.min_persona_fraction}")
        if not 0.0 < self.sample_fps <= 60.0:
            raise ValueError(f"sample_fps must be in (0, 60] frames per second, got {self.sample_fps}")
        if self.min_face_px < 0:
            raise ValueError(f"min_face_px must be >= 0, got {self.min_face_px}")
        return self


@dataclass
class FaceOnFrame:
    box: tuple[int, int, int, int]
    score: float
    ref_scores: list[float]
    kind: str  # persona | other | unsure


@dataclass
class FrameResult:
    t: float
    faces: list[FaceOnFrame]
    ignored_small: int = 0

    @property
    def shows_face(self) -> bool:
        return bool(self.faces)

    @property
    def has_persona(self) -> bool:
        return any(f.kind == PERSONA for f in self.faces)

    @property
    def has_other(self) -> bool:
        return any(f.kind == OTHER for f in self.faces)

    @property
    def best_score(self) -> float | None:
        return max((f.score for f in self.faces), default=None)


@dataclass
class ClipIdentity:
    """One clip's verdict and the evidence behind it (what the sidecar and the hub show)."""

    verdict: str  # passed | failed
    reason: str
    frames: int
    frames_with_face: int
    frames_without_face: int
    persona_frames: int
    other_person_frames: int
    median_score: float | None
    min_score: float | None
    sample_fps: float
    minsim: float
    filmstrip: str | None = None
    per_frame: list[dict[str, Any]] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.verdict == PASSED

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


class ClipIdentityChecker:
    """Built once per run from the references (their faces analysed once); ``check`` is one clip."""

    def __init__(self, engine: FaceEngine, references: Sequence[Path], rules: ClipIdentityRules | None = None):
        self.engine = engine
        self.rules = (rules or ClipIdentityRules()).validate()
        refs = sorted((analyze(engine, Path(p)) for p in references), key=lambda a: a.path.name)
        self.centroid, self.count = reference_centroid(engine, refs)  # ValueError: no usable reference face
        self.embeddings = [a.embedding for a in refs if a.embedding is not None]
        self.need = references_needed(self.count)
        th = self.rules.thresholds
        self.floor = th.minsim - th.agreement_slack
        self.clearly_other = th.minsim - th.impostor_gap

    @classmethod
    def from_spec(
        cls, spec: EngineSpec, references: Sequence[Path], rules: ClipIdentityRules | None = None
    ) -> ClipIdentityChecker:
        """With the face engine the settings name (``EngineSpec.from_settings``): the one QC uses."""
        return cls(spec.build(), references, rules)

    def judge(self, embedding: np.ndarray) -> tuple[float, list[float], str]:
        """A face's centroid score, its score against each reference, and what it is."""
        score = self.engine.identity_score(embedding, self.centroid)
        per_ref = [self.engine.identity_score(embedding, r) for r in self.embeddings]
        agree = sum(s >= self.floor for s in per_ref)
        if score >= self.rules.thresholds.minsim and agree >= self.need:
            return score, per_ref, PERSONA
        return score, per_ref, OTHER if score < self.clearly_other else UNSURE

    def frame(self, sampled: SampledFrame) -> FrameResult:
        result = FrameResult(sampled.t, [])
        for face in self.engine.detect(sampled.rgb):
            if face.box[2] - face.box[0] < self.rules.min_face_px:
                result.ignored_small += 1
                continue
            score, per_ref, kind = self.judge(face.embedding)
            result.faces.append(FaceOnFrame(face.box, round(score, 4), [round(s, 4) for s in per_ref], kind))
        return result

    def check(self, clip: Path, *, filmstrip: Path | None = None) -> ClipIdentity:
        """Sample, score and judge one clip; with ``filmstrip``, also write its contact sheet there (PNG)."""
        frames = sample_frames(clip, self.rules.sample_fps)
        results = [self.frame(f) for f in frames]
        identity = self.verdict(results)
        if filmstrip is not None:
            render_filmstrip(Path(clip).name, frames, results, identity, filmstrip)
            identity.filmstrip = str(filmstrip)
        return identity

    def verdict(self, results: Sequence[FrameResult]) -> ClipIdentity:
        with_face = [r for r in results if r.shows_face]
        persona = [r for r in with_face if r.has_persona]
        others = [r for r in with_face if r.has_other]
        scores = [r.best_score for r in with_face if r.best_score is not None]
        need = self.rules.min_persona_fraction
        if not with_face:
            verdict, reason = FAILED, f"no face on any of the {len(results)} sampled frames"
        elif others:
            first = others[0]
            worst = min(f.score for f in first.faces if f.kind == OTHER)
            verdict, reason = (
                FAILED,
                (
                    f"another person on {len(others)} of {len(with_face)} frames with a face "
                    f"(first at {first.t:.1f} s, identity {worst:.2f} < {self.clearly_other:.2f})"
                ),
            )
        elif len(persona) < need * len(with_face) - 1e-9:
            verdict, reason = (
                FAILED,
                (
                    f"persona on {len(persona)} of {len(with_face)} frames with a face "
                    f"({len(persona) / len(with_face):.0%} < {need:.0%}; minsim {self.rules.thresholds.minsim:g})"
                ),
            )
        else:
            verdict, reason = PASSED, f"persona on {len(persona)} of {len(with_face)} frames with a face"
        return ClipIdentity(
            verdict=verdict,
            reason=reason,
            frames=len(results),
            frames_with_face=len(with_face),
            frames_without_face=len(results) - len(with_face),
            persona_frames=len(persona),
            other_person_frames=len(others),
            median_score=_round(statistics.median(scores)) if scores else None,
            min_score=_round(min(scores)) if scores else None,
            sample_fps=self.rules.sample_fps,
            minsim=self.rules.thresholds.minsim,
            per_frame=[
                {
                    "t": r.t,
                    "faces": [{"box": list(f.box), "score": f.score, "kind": f.kind} for f in r.faces],
                    "ignored_small": r.ignored_small,
                }
                for r in results
            ],
        )


def _tile_image(frame: SampledFrame, result: FrameResult, side: int) -> bytes:
    im = Image.fromarray(frame.rgb)
    draw = ImageDraw.Draw(im)
    width = max(2, round(max(im.size) / 160))
    for f in result.faces:
        draw.rectangle(f.box, outline=_BOX_COLOURS[f.kind], width=width)
    im.thumbnail((side, side), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def _tile_label(result: FrameResult) -> str:
    if not result.faces:
        return f"{result.t:.1f} s\nno face"
    kinds = sorted({f.kind for f in result.faces}, key=[PERSONA, UNSURE, OTHER].index)
    return f"{result.t:.1f} s id {result.best_score:.2f}\n{' + '.join(kinds)}"


def render_filmstrip(
    name: str,
    frames: Sequence[SampledFrame],
    results: Sequence[FrameResult],
    identity: ClipIdentity,
    out: Path,
    *,
    thumb: int = 160,
) -> Path:
    """One PNG: every sampled frame with its faces boxed (green persona, red someone else, amber unsure)."""
    tiles = [
        Tile(Path(f"{name}@{f.t:.1f}s"), _tile_label(r), r.has_persona and not r.has_other, _tile_image(f, r, thumb))
        for f, r in zip(frames, results, strict=True)
    ]
    median = "-" if identity.median_score is None else f"{identity.median_score:.2f}"
    low = "-" if identity.min_score is None else f"{identity.min_score:.2f}"
    title = f"{name} {identity.verdict.upper()} (median {median}, min {low}); frames"
    return render_contact_sheet(
        [(title, tiles)], out, thumb=thumb, columns=max(1, min(10, len(tiles))), max_per_section=len(tiles)
    )
