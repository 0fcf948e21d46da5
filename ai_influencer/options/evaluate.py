"""Local SDXL sampling and the evaluate stage's options (identity score of each LoRA checkpoint)."""

from __future__ import annotations

from pydantic import BaseModel, Field

from ai_influencer.options.fields import BACKEND_HELP


class SampleOptions(BaseModel):
    """One local SDXL generation (``influencer sample``, evaluation's samples)."""

    steps: int = Field(default=30, ge=1, description="Denoising steps.")
    guidance: float = Field(default=6.0, ge=0, description="Classifier-free guidance scale.")
    size: int = Field(default=1024, ge=16, description="Side of the square images in pixels.")
    strength: float = Field(default=1.0, ge=0, le=2, description="LoRA strength.")
    seed: int = Field(default=0, description="Seed of the first image (the next ones count up).")


class EvaluateOptions(SampleOptions):
    samples: int = Field(default=8, ge=1, le=200, description="K images per LoRA, prompts from the prompt bank.")
    checkpoints: bool = Field(default=True, description="Also evaluate every saved checkpoint and pick the best.")
    backend: str | None = Field(default=None, description=BACKEND_HELP)


EVALUATE_DEFAULTS = EvaluateOptions()
