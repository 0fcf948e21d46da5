"""From storyboard to clip requests: one clip per shot, its prompt, its line of the script, its duration,
its input images, its content key and its price, all decided before anything is paid.

* **Prompt**: the shot (description, scene, lighting, outfit, pose). For a model that generates audio the
  shot's line of the spoken script is added as what the persona says.
* **Script lines**: the spoken script is split into sentences and handed out to the shots in order, in
  contiguous runs of about equal word counts (a sentence is never cut).
* **Duration**: the line's spoken length (``WORDS_PER_SECOND``, plus a breath) and at least
  ``MIN_CLIP_SECONDS``; a shot without a line gets the script's average per shot. The result is snapped to
  the model's ``supported_durations``: the shortest one that fits, else the longest it has.
* **Mode** ``first-frame`` (image-to-video): the shot's scene's best QC-passed image is the first frame
  (accepted in ``qc_report.csv``, highest identity score, then sharpness, then name; the scene comes from
  the generation manifest or the image's sidecar). ``references`` (reference-to-video): the cleaned
  reference photos. A shot whose scene has no QC-passed image is reported and left out; the others go on.
* **Key**: a hash of everything that defines the paid request (model, prompt, duration, format, audio,
  seed, the input images' SHA-256, passthrough options), so a re-run finds its jobs and clips again and a
  changed shot never reuses an old clip.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ai_influencer.dataset.manifest import ImageRecord, load_manifest, sidecar_path
from ai_influencer.imaging import list_images
from ai_influencer.openrouter.videos import (
    PriceEstimate,
    VideoModel,
    VideoRequest,
    check_request,
    estimate_price,
)
from ai_influencer.options.video import FIRST_FRAME, MODES, REFERENCES, VIDEO_DEFAULTS
from ai_influencer.qc.report import QCRow, read_report
from ai_influencer.storyboard import Shot, Storyboard

DEFAULT_MODE = VIDEO_DEFAULTS.mode  # the video options' defaults (options.video)
DEFAULT_ASPECT_RATIO = VIDEO_DEFAULTS.aspect_ratio
WORDS_PER_SECOND = 2.5  # ~150 words a minute, an unhurried voice-over
BREATH_S = 1.0
MIN_CLIP_SECONDS = 4
DEFAULT_MAX_REFERENCES = VIDEO_DEFAULTS.max_references
KEY_VERSION = 1  # bump when the meaning of a key changes


@dataclass(frozen=True)
class ClipPlan:
    """One shot as a paid request, ready to submit."""

    index: int  # the shot's position in the storyboard (0-based)
    shot: Shot
    script_line: str  # the shot's part of the spoken script
    speaks: bool  # the line is in the prompt (the model generates audio)
    request: VideoRequest
    key: str
    estimate: PriceEstimate
    mode: str

    @property
    def scene(self) -> str:
        return self.shot.scene


@dataclass
class ClipPlanning:
    plans: list[ClipPlan] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # one line per shot left out

    @property
    def total_usd(self) -> float | None:
        """The sum of the clips' estimates; None when any clip has no price."""
        prices = [p.estimate.usd for p in self.plans]
        return None if any(p is None for p in prices) else round(sum(prices), 6)  # type: ignore[misc]

    def price_lines(self) -> list[str]:
        """What ``--dry-run`` prints: one line per clip, then the total."""
        lines = [
            f"shot {p.index + 1} [{p.scene}] {p.request.duration or '?'} s {p.mode}: {p.estimate.describe()}"
            for p in self.plans
        ]
        total = self.total_usd
        lines.append(f"total for {len(self.plans)} clips: " + (f"${total:.4f}" if total is not None else "unknown"))
        return lines


_SENTENCE = re.compile(r"(?<=[.!?…])\s+|\n+")


def split_script(script: str, shots: int) -> list[str]:
    """The spoken script as one line per shot (see the module doc); with fewer sentences than shots, one
    sentence a shot from the first, and the shots after them get ""."""
    if shots < 1:
        return []
    sentences = [s.strip() for s in _SENTENCE.split(script or "") if s and s.strip()]
    if len(sentences) <= shots:  # one sentence a shot, from the first; the shots after it are silent
        return sentences + [""] * (shots - len(sentences))
    words = [max(1, len(s.split())) for s in sentences]
    total = sum(words)
    lines: list[list[str]] = [[] for _ in range(shots)]
    before = 0
    for sentence, n in zip(sentences, words, strict=True):
        middle = before + n / 2
        lines[min(shots - 1, int(middle / total * shots))].append(sentence)
        before += n
    return [" ".join(parts) for parts in lines]


def spoken_seconds(line: str) -> float:
    n = len(line.split())
    return n / WORDS_PER_SECOND + BREATH_S if n else 0.0


def clip_seconds(line: str, *, supported: Sequence[int] | None = None, fallback: float = MIN_CLIP_SECONDS) -> int:
    """Seconds for a clip that speaks ``line`` (``fallback`` without one), snapped to ``supported``."""
    need = max(MIN_CLIP_SECONDS, math.ceil(spoken_seconds(line) if line.strip() else fallback))
    if supported:
        options = sorted(set(supported))
        return next((d for d in options if d >= need), options[-1])
    return need


def shot_prompt(shot: Shot, line: str, *, speaks: bool, persona: str = "") -> str:
    who = f"{persona.strip()}. " if persona.strip() else ""
    details = "; ".join(
        f"{name}: {value}"
        for name, value in (
            ("scene", shot.scene),
            ("lighting", shot.lighting),
            ("outfit", shot.outfit),
            ("pose", shot.pose),
        )
        if value
    )
    prompt = f"{who}{shot.description.strip()} ({details})." if details else f"{who}{shot.description.strip()}"
    if speaks and line.strip():
        prompt += f' The person looks into the camera and says: "{line.strip()}"'
    return prompt


def _better(row: QCRow) -> tuple[float, float, str]:
    return (-(row.score or 0.0), -(row.sharpness or 0.0), row.file)


def best_scene_images(qc_report: Path, qc_dir: Path, manifest: Path | None = None) -> dict[str, Path]:
    """Per scene, the best QC-accepted image: highest identity score, then sharpness, then file name.

    The scene of each image comes from the generation manifest when given, else from the image's sidecar
    that QC copies next to it. Images QC accepted but whose scene is unknown are left out.
    """
    rows = [r for r in read_report(qc_report).values() if r.verdict == "accepted"]
    scenes: dict[str, str | None] = {}
    records = load_manifest(manifest) if manifest is not None and manifest.is_file() else {}
    for row in rows:
        record = records.get(row.file)
        if record is None:
            side = sidecar_path(qc_dir, Path(row.file).stem)
            if side.is_file():
                try:
                    record = ImageRecord.model_validate_json(side.read_text(encoding="utf-8"))
                except ValueError:
                    record = None
        scenes[row.file] = record.scene if record is not None else None
    best: dict[str, Path] = {}
    for row in sorted(rows, key=_better):
        scene = scenes.get(row.file)
        if scene and scene not in best and (qc_dir / row.file).is_file():
            best[scene] = qc_dir / row.file
    return best


def clip_key(request: VideoRequest) -> str:
    params = request.parameters()
    for group in ("frame_images", "input_references"):
        for item in params.get(group, []):
            item.pop("source", None)  # the file's place does not change the clip; its bytes do
    payload = json.dumps({"v": KEY_VERSION, **params}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


def plan_clips(
    board: Storyboard,
    model: VideoModel,
    *,
    mode: str = DEFAULT_MODE,
    qc_report: Path | None = None,
    qc_dir: Path | None = None,
    manifest: Path | None = None,
    references_dir: Path | None = None,
    max_references: int = DEFAULT_MAX_REFERENCES,
    aspect_ratio: str | None = DEFAULT_ASPECT_RATIO,
    resolution: str | None = None,
    size: str | None = None,
    duration: int | None = None,
    generate_audio: bool | None = None,
    seed: int | None = None,
    persona: str = "",
    provider_options: Mapping[str, Mapping[str, Any]] | None = None,
    callback_url: str | None = None,
) -> ClipPlanning:
    """Every shot as a checked, priced request. Raises ``VideoParameterError`` (one line) when the model
    cannot take the requests at all, ``ValueError`` for a bad mode or missing inputs; a shot that alone
    cannot be made (no QC-passed image for its scene) is reported in ``problems``."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if size is not None:
        aspect_ratio = None  # an explicit size is the format; resolution/aspect_ratio would conflict
    shots = board.shots
    lines = split_script(board.spoken_script, len(shots))
    spoken_total = sum(spoken_seconds(line) for line in lines)
    fallback = max(MIN_CLIP_SECONDS, spoken_total / max(1, len(shots)))
    # generate_audio as asked, else on where the model makes audio (OpenRouter's default too, said out loud)
    audio = generate_audio if generate_audio is not None else (True if model.generate_audio else None)
    speaks = bool(audio)
    planning = ClipPlanning()
    firsts: dict[str, Path] = {}
    refs: tuple[Path, ...] = ()
    if mode == FIRST_FRAME:
        if qc_report is None or qc_dir is None or not qc_report.is_file():
            raise ValueError(
                f"mode {FIRST_FRAME} needs QC's report ({qc_report or 'qc_report.csv'} not found): "
                f"run generate and qc first, or use mode {REFERENCES}"
            )
        firsts = best_scene_images(qc_report, qc_dir, manifest)
    else:
        if references_dir is None:
            raise ValueError(f"mode {REFERENCES} needs the cleaned references folder")
        refs = tuple(list_images(references_dir)[: max(1, max_references)])
        if not refs:
            raise ValueError(f"{references_dir}: no reference photos for mode {REFERENCES}; run prepare first")
    for index, (shot, line) in enumerate(zip(shots, lines, strict=True)):
        first = firsts.get(shot.scene) if mode == FIRST_FRAME else None
        if mode == FIRST_FRAME and first is None:
            planning.problems.append(
                f"shot {index + 1} [{shot.scene}]: no QC-passed image of this scene in {qc_report}; left out "
                f"(generate more for it, or use mode {REFERENCES})"
            )
            continue
        request = VideoRequest(
            model=model.id,
            prompt=shot_prompt(shot, line, speaks=speaks, persona=persona),
            duration=duration or clip_seconds(line, supported=model.supported_durations, fallback=fallback),
            resolution=resolution,
            aspect_ratio=aspect_ratio,
            size=size,
            first_frame=first,
            references=refs,
            generate_audio=audio,
            seed=seed,
            callback_url=callback_url,
            provider_options=dict(provider_options or {}),
        )
        check_request(model, request)  # the same problem would hit every clip: fail before the first submit
        planning.plans.append(
            ClipPlan(index, shot, line, speaks, request, clip_key(request), estimate_price(model, request), mode)
        )
    return planning
