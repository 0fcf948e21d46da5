"""The plan stage's options (the LLM storyboard)."""

from __future__ import annotations

from pydantic import BaseModel, Field

from ai_influencer.options.fields import from_settings


class PlanOptions(BaseModel):
    model: str | None = Field(default=None, description=from_settings("text_model", "OpenRouter text model"))
