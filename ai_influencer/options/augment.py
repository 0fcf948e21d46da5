"""The augment stage's options (manual step 5: ``augment_and_caption.py``)."""

from __future__ import annotations

from pydantic import BaseModel, Field

from ai_influencer.options.fields import from_settings


class AugmentOptions(BaseModel):
    num_aug: int = Field(default=1, ge=0, le=20, description="Variants per image.")
    seed: int = Field(default=137, description="Augmentation seed.")
    size: int = Field(default=1024, ge=64, le=4096, description="Side of the augmented crops.")
    kohya_repeats: int | None = Field(
        default=10,
        ge=0,
        description="Also write the kohya <repeats>_<token> layout, what train reads first (0 or empty: do not).",
    )
    vlm_captions: bool = Field(default=False, description="Caption with an OpenRouter vision model (paid, cached).")
    vlm_model: str | None = Field(
        default=None, description=from_settings("vision_model", "Vision model for VLM captions")
    )


AUGMENT_DEFAULTS = AugmentOptions()
