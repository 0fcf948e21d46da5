"""The video stage's options: one place for their defaults, bounds and help texts.

The CLI (``influencer video``), the Prefect parameters (``VideoParams``), the hub
(``POST /api/generate/video``) and the GUI all show these; none spells a default of its own. Importing
this module is cheap (pydantic only): the CLI reads the help texts without loading the HTTP client.
What a model actually accepts (resolutions, durations, frame types, prices) is checked against its
``GET /videos/models`` listing before anything is paid (``openrouter.videos.check_request``).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

# The modes and format defaults live here (not in ``clips``) so that reading them imports no HTTP client.
FIRST_FRAME, REFERENCES = "first-frame", "references"
MODES = (FIRST_FRAME, REFERENCES)
DEFAULT_MODE = FIRST_FRAME
DEFAULT_ASPECT_RATIO = "9:16"
DEFAULT_MAX_REFERENCES = 4
DEFAULT_VIDEO_MODEL = "google/veo-3.1-fast"
DEFAULT_RESOLUTION = "720p"
DEFAULT_MAX_IN_FLIGHT = 4


class VideoOptions(BaseModel):
    """What a video run asks of every clip, and how much it may wait and spend."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str = Field(
        default=DEFAULT_VIDEO_MODEL,
        min_length=1,
        description="OpenRouter video model (GET /videos/models); for a talking persona one with audio and "
        "first_frame, e.g. the Veo 3.1 family.",
    )
    mode: Literal["first-frame", "references"] = Field(
        default=DEFAULT_MODE,  # type: ignore[assignment]
        description="first-frame: each scene's best QC-passed image starts the clip (image-to-video); "
        "references: the cleaned reference photos guide it (reference-to-video).",
    )
    resolution: str | None = Field(
        default=DEFAULT_RESOLUTION, description="Resolution the model lists (e.g. 720p, 1080p); priced per second."
    )
    aspect_ratio: str | None = Field(
        default=DEFAULT_ASPECT_RATIO, description="Aspect ratio (9:16 vertical for social clips)."
    )
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
    max_in_flight: int = Field(
        default=DEFAULT_MAX_IN_FLIGHT, ge=1, le=64, description="Jobs submitted and not ended at once."
    )
    max_references: int = Field(
        default=DEFAULT_MAX_REFERENCES, ge=1, le=16, description="Reference photos sent in references mode."
    )
    retry_failed: bool = Field(
        default=False,
        description="Submit again the clips whose job failed, was cancelled, expired or whose submit answer "
        "was lost (paid again).",
    )
    check_identity: bool = Field(
        default=True, description="Score sampled frames against the references (QC's face model and thresholds)."
    )
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


VIDEO_OPTION_DEFAULTS = VideoOptions()


def video_option_help(name: str) -> str:
    return VideoOptions.model_fields[name].description or ""


def video_options(**values: Any) -> VideoOptions:
    """``VideoOptions`` from user input; a bad value is one ``ValueError`` line naming the option and value."""
    try:
        return VideoOptions(**{k: v for k, v in values.items()})
    except ValidationError as exc:
        err = exc.errors()[0]
        name = "--" + str(err["loc"][0]).replace("_", "-") if err["loc"] else "option"
        message = str(err["msg"]).removeprefix("Value error, ")
        raise ValueError(f"{name} {err.get('input')!r}: {message}") from None
