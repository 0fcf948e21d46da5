"""The video stage's options: one clip per storyboard shot through OpenRouter's Video API, identity on frames.

One place for their defaults, bounds and help texts: the domain (``ai_influencer.video``: mode, format,
references, identity sampling), the use case, the Prefect parameters (``VideoParams``), the CLI
(``influencer video``), the hub (``POST /api/generate/video``) and the GUI all read these fields; none
spells a default of its own (docs/architecture.md, "Adding a stage"). Importing this module is cheap
(pydantic only): the CLI reads the help texts without loading the HTTP client. What a model actually
accepts (resolutions, durations, frame types, prices) is checked against its ``GET /videos/models``
listing before anything is paid (``openrouter.videos.check_request``).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

FIRST_FRAME, REFERENCES = "first-frame", "references"
MODES = (FIRST_FRAME, REFERENCES)


class VideoOptions(BaseModel):
    """What a video run asks of every clip, and how much it may wait and spend."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str = Field(
        default="google/veo-3.1-fast",
        min_length=1,
        description="OpenRouter video model (GET /videos/models); for a talking persona one with audio and "
        "first_frame, e.g. the Veo 3.1 family.",
    )
    mode: Literal["first-frame", "references"] = Field(
        default=FIRST_FRAME,
        description="first-frame: each scene's best QC-passed image starts the clip (image-to-video); "
        "references: the cleaned reference photos guide it (reference-to-video).",
    )
    resolution: str | None = Field(
        default="720p", description="Resolution the model lists (e.g. 720p, 1080p); priced per second."
    )
    aspect_ratio: str | None = Field(
        default="9:16", description="Aspect ratio (9:16 vertical for social clips; empty when a size is given)."
    )
    size: str | None = Field(default=None, description="WIDTHxHEIGHT; instead of resolution and aspect ratio.")
    duration: int | None = Field(
        default=None,
        ge=1,
        le=120,
        description="Seconds per clip; empty: each shot's spoken line decides, snapped to the model's durations.",
    )
    generate_audio: bool | None = Field(
        default=None, description="Ask for audio; empty: on where the model generates audio (the line is spoken)."
    )
    seed: int | None = Field(default=None, description="Request seed where the model honours one.")
    max_clips: int | None = Field(
        default=None, ge=1, description="Make at most this many clips (the first shots of the storyboard)."
    )
    budget_usd: float | None = Field(
        default=None, ge=0, description="No submit that could take the clips' cost beyond this (USD)."
    )
    estimate_usd: float | None = Field(
        default=None, ge=0, description="Expected cost of one clip where the model lists no readable price."
    )
    max_in_flight: int = Field(default=4, ge=1, le=64, description="Jobs submitted and not ended at once.")
    max_references: int = Field(default=4, ge=1, le=16, description="Reference photos sent in references mode.")
    retry_failed: bool = Field(
        default=False,
        description="Submit again the clips whose job failed, was cancelled, expired or whose submit answer "
        "was lost (paid again).",
    )
    check_identity: bool = Field(
        default=True, description="Score sampled frames against the references (QC's face model and thresholds)."
    )
    sample_fps: float = Field(default=2.0, gt=0, le=60, description="Frames per second checked for identity.")
    min_persona_fraction: float = Field(
        default=0.8, gt=0, le=1, description="Share of the checked frames that must show the persona."
    )
    min_face_px: int = Field(default=32, ge=0, description="Faces smaller than this (pixels) are not judged.")
    callback_url: str | None = Field(
        default=None,
        description="HTTPS URL OpenRouter posts video.generation.* webhooks to (the hub's /api/video/webhook); "
        "empty: the workspace default, or polling alone.",
    )
    deadline_s: float = Field(default=1800.0, gt=0, description="Whole-job deadline from its submit (seconds).")
    poll_initial_s: float = Field(
        default=5.0, gt=0, le=600, description="First wait between two polls of a job (seconds); grows x1.5."
    )
    poll_max_s: float = Field(
        default=30.0, gt=0, le=600, description="Longest wait between two polls (OpenRouter's docs poll every 30 s)."
    )

    @field_validator("mode", mode="before")
    @classmethod
    def _mode(cls, v: Any) -> Any:
        if isinstance(v, str) and v.replace("_", "-") in MODES:
            return v.replace("_", "-")
        return v


VIDEO_DEFAULTS = VideoOptions()


def video_options(**values: Any) -> VideoOptions:
    """``VideoOptions`` from user input; a bad value is one ``ValueError`` line naming the option and value."""
    try:
        return VideoOptions(**values)
    except ValidationError as exc:
        err = exc.errors()[0]
        name = "--" + str(err["loc"][0]).replace("_", "-") if err["loc"] else "option"
        message = str(err["msg"]).removeprefix("Value error, ")
        raise ValueError(f"{name} {err.get('input')!r}: {message}") from None
