"""The image options a run asks of every request, and the size rules: one place for defaults and help.

Why in ``options/``, outside ``openrouter/``: the CLI, the flow parameters, the hub and the GUI all show
these defaults and help texts, and reading them must not import the HTTP client (the CLI starts in well
under a second). ``openrouter.capabilities`` checks them against an endpoint; ``options.generate`` declares
the generate stage's image options from these fields.
"""

from __future__ import annotations

import math
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

# ---- sizes ---------------------------------------------------------------------------------------
SIZE_PATTERN = re.compile(r"^\s*(\d+)\s*x\s*(\d+)\s*$", re.I)
MIN_SIDE, MAX_SIDE = 64, 8192
DEFAULT_SIZE = "1024x1024"
TIERS = ("512", "1K", "2K", "4K")
TIER_SIDE = {"512": 512, "1K": 1024, "2K": 2048, "4K": 4096}


def parse_size(size: str) -> tuple[int, int]:
    """(width, height) of a ``WxH`` size; the error says which value is wrong and the accepted range."""
    m = SIZE_PATTERN.match(str(size))
    if not m:
        raise ValueError(f"--size {size!r}: must be WIDTHxHEIGHT in pixels, e.g. 1024x1024")
    w, h = int(m[1]), int(m[2])
    for name, value in (("width", w), ("height", h)):
        if not MIN_SIDE <= value <= MAX_SIDE:
            raise ValueError(f"--size {size}: {name} {value} is out of range ({MIN_SIDE}..{MAX_SIDE} pixels)")
    return w, h


def normalise_size(size: str) -> str:
    """``WxH`` with the size rule applied (the one validator of every model with a ``size`` in pixels)."""
    w, h = parse_size(size)
    return f"{w}x{h}"


def aspect_ratio(size: str) -> str:
    """The reduced ``W:H`` of a ``WxH`` size (the routes' ``aspect_ratio``)."""
    w, h = parse_size(size)
    g = math.gcd(w, h)
    return f"{w // g}:{h // g}"


def tier_for(size: str) -> str:
    """The resolution tier that covers a size: the smallest tier whose side is at least the longer side."""
    longest = max(parse_size(size))
    return next((t for t in TIERS if TIER_SIDE[t] >= longest), TIERS[-1])


def megapixels(size: str) -> float:
    w, h = parse_size(size)
    return w * h / 1_000_000


def output_megapixels(params: dict[str, Any], size: str) -> float:
    """Megapixels of one output image as the request asks for it: an explicit ``size``, else the
    resolution tier's side on the longer edge at the aspect ratio, else the ``--size`` asked for."""
    sent = str(params.get("size") or "")
    if SIZE_PATTERN.match(sent):
        return megapixels(sent)
    tier = str(params.get("resolution") or "")
    if tier in TIER_SIDE:
        a, b = (int(x) for x in str(params.get("aspect_ratio") or aspect_ratio(size)).split(":"))
        side = TIER_SIDE[tier]
        w, h = (side, side * b // a) if a >= b else (side * a // b, side)
        return w * h / 1_000_000
    return megapixels(size)


# ---- options ----------------------------------------------------------------------------------------
N_MAX = 10  # the Image API's upper bound on n (a provider may allow less)


class ProviderRouting(BaseModel):
    """The Image API's ``provider`` object: which endpoints may serve the requests."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    only: list[str] | None = Field(default=None, description="Allow only these provider slugs.")
    order: list[str] | None = Field(default=None, description="Try these provider slugs in this order.")
    ignore: list[str] | None = Field(default=None, description="Never use these provider slugs.")
    sort: Literal["price", "throughput", "latency"] | None = None
    allow_fallbacks: bool | None = None

    def body(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


class ImageOptions(BaseModel):
    """What a run asks of every image request: the one place for these defaults, bounds and help texts."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    size: str = Field(default=DEFAULT_SIZE, description="WIDTHxHEIGHT; mapped to what the endpoint accepts.")
    n: int = Field(default=1, ge=1, le=N_MAX, description="Images per request (Image API; providers may return fewer).")
    seed: int | None = Field(
        default=None,
        description="Prompt composition seed; also a deterministic request seed per slot where the endpoint "
        "supports seed (empty: composition seed 0, no request seed).",
    )
    quality: Literal["auto", "low", "medium", "high"] | None = Field(
        default=None, description="Image API quality (only where the endpoint takes it)."
    )
    output_format: Literal["png", "jpeg", "webp"] | None = Field(
        default=None, description="Image API output_format (only where the endpoint takes it)."
    )
    provider: ProviderRouting | None = None

    _size = field_validator("size")(normalise_size)

    def identity(self) -> dict[str, Any]:
        """The options that change an image (part of a slot's identity), only where set."""
        return {k: v for k, v in (("quality", self.quality), ("output_format", self.output_format)) if v}


IMAGE_OPTION_DEFAULTS = ImageOptions()


def option_help(name: str) -> str:
    return ImageOptions.model_fields[name].description or ""


def image_options(**values: Any) -> ImageOptions:
    """``ImageOptions`` from user input; a bad value is one ``ValueError`` line naming the flag and value."""
    try:
        return ImageOptions(**values)
    except ValidationError as exc:
        err = exc.errors()[0]
        message = str(err["msg"]).removeprefix("Value error, ")
        if message.startswith("--"):
            raise ValueError(message) from None
        flag = "--" + str(err["loc"][0]).replace("output_format", "format") if err["loc"] else "option"
        raise ValueError(f"{flag} {err.get('input')!r}: {message}") from None
