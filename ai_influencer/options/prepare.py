"""The prepare stage's options (manual step 1: ``prep_images.py``)."""

from __future__ import annotations

from pydantic import BaseModel, Field

from ai_influencer.options.fields import BACKEND_HELP


class PrepareOptions(BaseModel):
    do_rembg: bool = Field(default=False, description="Remove backgrounds with rembg (model must be in models/rembg).")
    do_facecrop: bool = Field(default=True, description="Face-centred square crop.")
    size: int = Field(default=1024, ge=64, le=4096, description="Output side in pixels.")
    backend: str | None = Field(default=None, description=BACKEND_HELP)
    allow_multi_face: bool = Field(
        default=False,
        description="Use reference photos that show several faces, keeping the largest (by default they are "
        "refused: the largest face is not always the persona's).",
    )


PREPARE_DEFAULTS = PrepareOptions()
