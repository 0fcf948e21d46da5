"""/api/models and /api/generate/{text,image}: OpenRouter through the hub's key (video: ``routes.video``)."""

from __future__ import annotations

import base64
from typing import Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from ai_influencer.openrouter import (
    AuthError,
    BadRequestError,
    InsufficientCreditsError,
    ModerationError,
    OpenRouterError,
    RateLimitError,
)
from ai_influencer.options.fields import field_of
from ai_influencer.options.images import IMAGE_OPTION_DEFAULTS, ImageOptions, option_help
from interfaces.hub.context import HubContext, hub, token_scheme

router = APIRouter(dependencies=[Depends(token_scheme)], tags=["openrouter"])


class GenerateRequest(BaseModel):
    model: str = Field(min_length=1, description="OpenRouter model id")
    prompt: str = Field(min_length=1, max_length=20_000)
    negative_prompt: str | None = None
    system: str | None = Field(default=None, description="System message (text only).")
    aspect_ratio: str | None = Field(default=None, pattern=r"^\d{1,2}:\d{1,2}$", description="Image: W:H (or size).")
    size: str | None = Field(default=None, description=f"Image: {option_help('size')}")
    n: int = field_of(ImageOptions, "n")
    seed: int | None = Field(default=None, description="Image: request seed where the endpoint supports seed.")
    max_tokens: int | None = Field(default=None, ge=1, le=32_000)


class Item(BaseModel):
    mime: str
    b64: str | None = None
    url: str | None = None
    text: str | None = None


class ApiError(BaseModel):
    code: str
    message: str


class GenerateResponse(BaseModel):
    """The one response shape of /api/generate/* (success and failure alike)."""

    ok: bool
    kind: Literal["text", "image", "video"]
    model: str
    items: list[Item] = Field(default_factory=list)
    usage: dict[str, Any] | None = None
    error: ApiError | None = None


def error_status(exc: OpenRouterError) -> tuple[int, str]:
    if isinstance(exc, BadRequestError):
        return 400, "bad_request"
    if isinstance(exc, AuthError):
        return 502, "openrouter_auth"  # the *hub's* credentials upstream are wrong, not the caller's
    if isinstance(exc, InsufficientCreditsError):
        return 402, "insufficient_credits"
    if isinstance(exc, ModerationError):
        return 422, "moderation"
    if isinstance(exc, RateLimitError):
        return 429, "rate_limited"
    if exc.status in (408, 0):
        return 504, "upstream_timeout"
    return 502, "upstream_error"


@router.get("/api/models")
def models(
    output_modality: str | None = Query(default=None, description="text | image | ..."),
    refresh: bool = False,
    ctx: HubContext = Depends(hub),
) -> dict[str, Any]:
    """OpenRouter models (cached by the client for INFLUENCER_MODELS_CACHE_TTL_S)."""
    try:
        found = ctx.openrouter().list_models(output_modality, refresh=refresh)
    except OpenRouterError as exc:
        status, code = error_status(exc)
        raise HTTPException(status, detail={"code": code, "message": str(exc)}) from None
    return {
        "count": len(found),
        "models": [
            {
                "id": m.id,
                "name": m.name,
                "input_modalities": m.input_modalities,
                "output_modalities": m.output_modalities,
                "pricing": m.pricing,
                "context_length": m.context_length,
            }
            for m in found
        ],
    }


def _size_for(ratio: str | None) -> str:
    """A size with exactly the aspect ratio ``W:H`` and a longer side of about 1024 px (default: square)."""
    if not ratio:
        return IMAGE_OPTION_DEFAULTS.size
    a, b = (int(x) for x in ratio.split(":"))
    k = max(1, 1024 // max(a, b))
    while min(a, b) * k < 64:
        k += 1
    return f"{a * k}x{b * k}"


def _failure(kind: str, model: str, status: int, code: str, message: str) -> JSONResponse:
    body = GenerateResponse(ok=False, kind=kind, model=model, error=ApiError(code=code, message=message))  # type: ignore[arg-type]
    return JSONResponse(body.model_dump(), status_code=status)


@router.post("/api/generate/{kind}", response_model=GenerateResponse)
def generate(kind: Literal["text", "image"], req: GenerateRequest, ctx: HubContext = Depends(hub)) -> Any:
    # /api/generate/video is routes.video (the Video API's asynchronous jobs), registered before this route.
    try:
        if kind == "text":
            messages = [{"role": "system", "content": req.system}] if req.system else []
            messages.append({"role": "user", "content": req.prompt})
            extra = {"max_tokens": req.max_tokens} if req.max_tokens else {}
            res = ctx.openrouter().chat(req.model, messages, **extra)
            items = [Item(mime="text/plain", text=res.text)]
        else:
            # The CLI's and the flow's path: the Image API where it lists the model (n images, seed,
            # parameters checked against the endpoint first), else the chat route.
            from ai_influencer.options.images import image_options
            from ai_influencer.usecases import make_images

            options = image_options(size=req.size or _size_for(req.aspect_ratio), n=req.n, seed=req.seed)
            img, _route = make_images(
                ctx.openrouter(), req.model, req.prompt, options=options, negative_prompt=req.negative_prompt
            )
            items = [Item(mime=i.mime, b64=base64.b64encode(i.data).decode()) for i in img.images]
            res = img
    except ValueError as exc:  # an option the model's endpoint does not take: nothing was paid
        return _failure(kind, req.model, 400, "unsupported_parameter", str(exc))
    except OpenRouterError as exc:
        status, code = error_status(exc)
        response = _failure(kind, req.model, status, code, str(exc))
        if isinstance(exc, RateLimitError) and exc.retry_after:
            response.headers["Retry-After"] = str(int(exc.retry_after + 0.999))
        return response
    return GenerateResponse(ok=True, kind=kind, model=res.model, items=items, usage=res.usage.model_dump())
