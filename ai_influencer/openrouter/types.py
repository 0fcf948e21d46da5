"""Typed results of OpenRouter calls (plain pydantic, no transport details)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class Usage(BaseModel):
    """Token usage and the USD cost OpenRouter reports for one call (every response carries ``usage.cost``)."""

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
    """One paid image call. ``requested`` is the ``n`` asked; ``images`` may hold fewer (a short answer).

    ``dropped`` names images of the answer that came back unusable while others were fine: they are
    not retried (the call is billed whole), they count as missing, like a short answer.
    """

    id: str | None = None
    model: str
    images: list[GeneratedImage]
    text: str = ""
    usage: Usage = Field(default_factory=Usage)
    elapsed_s: float = 0.0
    route: Literal["images", "chat"] = "chat"
    requested: int = 1
    dropped: list[str] = Field(default_factory=list)

    @property
    def short(self) -> bool:
        return len(self.images) < self.requested


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


# ---- the Image API's discovery records (GET /images/models, /images/models/{author}/{slug}/endpoints) ----
class Capability(BaseModel):
    """A typed capability descriptor: ``enum`` (string values), ``range`` (integers min..max) or ``boolean``.

    An absent key in ``supported_parameters`` means the endpoint does not take that parameter.
    """

    model_config = ConfigDict(extra="allow")

    type: str
    values: list[str] | None = None
    min: float | None = None
    max: float | None = None

    @field_validator("values", mode="before")
    @classmethod
    def _as_strings(cls, v: Any) -> Any:
        return [str(x) for x in v] if isinstance(v, list) else v

    def accepts(self, value: Any) -> bool:
        if self.type == "enum":
            return str(value) in (self.values or [])
        if self.type == "range":
            try:
                number = float(value)
            except (TypeError, ValueError):
                return False
            low = self.min if self.min is not None else float("-inf")
            high = self.max if self.max is not None else float("inf")
            return number == int(number) and low <= number <= high
        return self.type == "boolean"  # present: supported, any value of the field's type

    def accepted(self, name: str) -> str:
        """What it accepts, as a user reads it: ``n = 1..4``, ``aspect_ratio in 1:1, 16:9``."""
        if self.type == "enum":
            return f"{name} in {', '.join(self.values or []) or '(none)'}"
        if self.type == "range":
            low = "" if self.min is None else f"{self.min:g}"
            high = "" if self.max is None else f"{self.max:g}"
            return f"{name} = {low}" if low == high else f"{name} = {low}..{high}"
        return f"any {name}"


class PriceLine(BaseModel):
    """One billable line of an image endpoint, e.g. ``output_image`` at $0.04 per ``image``."""

    model_config = ConfigDict(extra="allow")

    billable: str
    unit: str
    cost_usd: float
    variant: str | None = None

    def describe(self) -> str:
        tier = f" ({self.variant})" if self.variant else ""
        return f"{self.billable}{tier} ${self.cost_usd:g}/{self.unit}"


class ImageEndpoint(BaseModel):
    """One provider serving an image model: its definitive parameters and its price lines."""

    model_config = ConfigDict(extra="allow")

    provider_name: str = ""
    provider_slug: str
    provider_tag: str | None = None
    supported_parameters: dict[str, Capability] = Field(default_factory=dict)
    allowed_passthrough_parameters: list[str] = Field(default_factory=list)
    supports_streaming: bool = False
    pricing: list[PriceLine] = Field(default_factory=list)

    @property
    def name(self) -> str:
        return self.provider_tag or self.provider_slug


class ImageModelInfo(BaseModel):
    """An entry of ``GET /images/models``: the union of its endpoints' parameters, and where they are."""

    model_config = ConfigDict(extra="allow")

    id: str
    name: str = ""
    description: str = ""
    created: int | None = None
    input_modalities: list[str] = Field(default_factory=list)
    output_modalities: list[str] = Field(default_factory=list)
    supported_parameters: dict[str, Capability] = Field(default_factory=dict)
    supports_streaming: bool = False
    endpoints: str = ""

    @classmethod
    def from_api(cls, raw: dict[str, Any]) -> ImageModelInfo:
        arch = raw.get("architecture") or {}
        return cls.model_validate(
            {
                **raw,
                "name": raw.get("name") or raw["id"],
                "input_modalities": list(arch.get("input_modalities") or []),
                "output_modalities": list(arch.get("output_modalities") or []),
                "supported_parameters": raw.get("supported_parameters") or {},
            }
        )
