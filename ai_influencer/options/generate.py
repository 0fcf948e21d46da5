"""The generate stage's options: the run's size and money, and the image options every request asks.

The image options (size, n, seed, quality, format, provider) are ``ImageOptions``' fields, declared here
again from those fields (``field_of``), so each keeps one default, bound and help text.
"""

from __future__ import annotations

from pydantic import BaseModel, Field, field_validator

from ai_influencer.options.fields import field_of, from_settings
from ai_influencer.options.images import ImageOptions, ProviderRouting, normalise_size


class GenerateOptions(BaseModel):
    model: str | None = Field(default=None, description=from_settings("image_model", "OpenRouter image model"))
    per_scene: int = Field(default=12, ge=1, le=1000, description="Images per scene.")
    size: str = field_of(ImageOptions, "size")
    n: int = field_of(ImageOptions, "n")
    seed: int | None = field_of(ImageOptions, "seed")
    quality: str | None = field_of(ImageOptions, "quality")
    output_format: str | None = field_of(ImageOptions, "output_format")
    provider: ProviderRouting | None = Field(default=None, description="Image API provider routing.")
    regenerate: bool = Field(
        default=False, description="Remake the images made with an earlier set of reference photos (kept otherwise)."
    )
    use_references: bool = Field(default=True, description="Send data/cleaned photos with each request.")
    budget_usd: float | None = Field(
        default=None, ge=0, description="Send no paid request that could take the spend beyond this (USD)."
    )
    estimate_usd: float | None = Field(
        default=None, ge=0, description="Expected cost of one image where the endpoint lists no price."
    )

    _size = field_validator("size")(normalise_size)

    def image_options(self) -> ImageOptions:
        """The options every request of the run asks (validated: an unknown quality fails here)."""
        return ImageOptions(**self.model_dump(include=set(ImageOptions.model_fields)))
