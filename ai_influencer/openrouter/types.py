"""Typed results of OpenRouter calls (plain pydantic, no transport details)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class Usage(BaseModel):
    """Token usage and the USD cost OpenRouter reports for one call (``usage.include``)."""

    model_config = ConfigDict(extra="allow")

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cost: float | None = None


class ChatResult(BaseModel):
    id: str | None = None
    model: str
    text: str
    finish_reason: str | None = None
    usage: Usage = Field(default_factory=Usage)
    elapsed_s: float = 0.0


class GeneratedImage(BaseModel):
    data: bytes
    mime: str

    @property
    def extension(self) -> str:
        return {"image/png": ".png", "image/jpeg": ".jpg", "image/webp": ".webp", "image/gif": ".gif"}.get(
            self.mime, ".bin"
        )


class ImageResult(BaseModel):
    id: str | None = None
    model: str
    images: list[GeneratedImage]
    text: str = ""
    usage: Usage = Field(default_factory=Usage)
    elapsed_s: float = 0.0


class ModelInfo(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: str
    name: str = ""
    created: int | None = None
    context_length: int | None = None
    pricing: dict[str, Any] = Field(default_factory=dict)
    input_modalities: list[str] = Field(default_factory=list)
    output_modalities: list[str] = Field(default_factory=list)
    supported_parameters: list[str] = Field(default_factory=list)

    @classmethod
    def from_api(cls, raw: dict[str, Any]) -> ModelInfo:
        arch = raw.get("architecture") or {}
        return cls(
            id=raw["id"],
            name=raw.get("name") or raw["id"],
            created=raw.get("created"),
            context_length=raw.get("context_length"),
            pricing=raw.get("pricing") or {},
            input_modalities=list(arch.get("input_modalities") or []),
            output_modalities=list(arch.get("output_modalities") or []),
            supported_parameters=list(raw.get("supported_parameters") or []),
        )


class KeyInfo(BaseModel):
    model_config = ConfigDict(extra="allow")

    label: str | None = None
    usage: float | None = None
    limit: float | None = None
    limit_remaining: float | None = None
    is_free_tier: bool | None = None


class Credits(BaseModel):
    total_credits: float
    total_usage: float

    @property
    def remaining(self) -> float:
        return self.total_credits - self.total_usage
