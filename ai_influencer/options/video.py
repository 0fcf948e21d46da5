"""The video stage's options: one clip per storyboard shot through OpenRouter's Video API, identity on frames.

The domain (``ai_influencer.video``) takes its defaults from here (mode, format, references, identity
sampling); the stage's use case, task, subflow and interface entries, when they are wired, read the same
fields (docs/architecture.md, "Adding a stage").
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

FIRST_FRAME, REFERENCES = "first-frame", "references"
MODES = (FIRST_FRAME, REFERENCES)


class VideoOptions(BaseModel):
    model: str | None = Field(default=None, description="OpenRouter video model (GET /videos/models).")
    mode: Literal["first-frame", "references"] = Field(
        default=FIRST_FRAME,
        description="first-frame: each shot starts from its scene's best QC-passed image; references: the "
        "cleaned reference photos go with each request.",
    )
    aspect_ratio: str | None = Field(default="9:16", description="Clip format (empty when a size is given).")
    resolution: str | None = Field(default=None, description="Resolution tier, e.g. 720p (the model's listing).")
    size: str | None = Field(default=None, description="WIDTHxHEIGHT; instead of resolution and aspect ratio.")
    duration: int | None = Field(
        default=None, ge=1, description="Seconds per clip; empty: the spoken line's length, snapped to the model's."
    )
    generate_audio: bool | None = Field(
        default=None, description="Audio with the clip; empty: on where the model makes audio."
    )
    seed: int | None = Field(default=None, description="Request seed where the model takes one.")
    max_references: int = Field(default=4, ge=1, description="Reference photos sent in references mode.")
    budget_usd: float | None = Field(default=None, ge=0, description="Submit no clip that could exceed this (USD).")
    estimate_usd: float | None = Field(
        default=None, ge=0, description="Expected cost of one clip where the model lists no price."
    )
    retry_failed: bool = Field(
        default=False, description="Submit again the clips whose job failed, expired or whose answer was lost."
    )
    sample_fps: float = Field(default=2.0, gt=0, le=60, description="Frames per second checked for identity.")
    min_persona_fraction: float = Field(
        default=0.8, gt=0, le=1, description="Share of the checked frames that must show the persona."
    )
    min_face_px: int = Field(default=32, ge=0, description="Faces smaller than this (pixels) are not judged.")


VIDEO_DEFAULTS = VideoOptions()
