"""Video through the hub: submit one clip (``POST /api/generate/video``), its status and content, the clips of
the workspace with their filmstrips, and OpenRouter's signed webhooks (``POST /api/video/webhook``).

The clip rules are the video stage's: the request is checked against the model's listing before anything
is paid, the job id is written to the workspace's ledger (``data/video/jobs``) the moment the submit
returns, and the status route polls (free) and, once the job completed, downloads and keeps the clip as
the stage does (decoded whole, sidecar). The webhook route is the one path without the hub token:
OpenRouter cannot send it; the HMAC signature (``video.webhooks``) is its check, and a verified event only
makes a waiting run poll early.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import FileResponse, JSONResponse
from pydantic import BaseModel, Field

from ai_influencer.openrouter import OpenRouterError
from ai_influencer.options.fields import field_of
from ai_influencer.options.video import FIRST_FRAME, VideoOptions
from interfaces.hub.context import HubContext, hub, token_scheme
from interfaces.hub.routes.openrouter import ApiError, GenerateResponse, Item, error_status

router = APIRouter(dependencies=[Depends(token_scheme)], tags=["video"])
webhook_router = APIRouter(tags=["video"])  # no hub token: OpenRouter signs its posts instead
WEBHOOK_PATH = "/api/video/webhook"


class VideoGenerateRequest(BaseModel):
    """One clip; the defaults are the video stage's (``VideoOptions``)."""

    model: str = field_of(VideoOptions, "model")
    prompt: str = Field(min_length=1, max_length=20_000)
    resolution: str | None = field_of(VideoOptions, "resolution")
    aspect_ratio: str | None = field_of(VideoOptions, "aspect_ratio")
    duration: int | None = Field(default=None, ge=1, le=120, description="Seconds; empty: the model's shortest.")
    generate_audio: bool | None = field_of(VideoOptions, "generate_audio")
    seed: int | None = field_of(VideoOptions, "seed")
    first_frame: str | None = Field(
        default=None, description="An image under the data root (e.g. qc_passed/x.png) as the first frame."
    )
    callback_url: str | None = field_of(VideoOptions, "callback_url")


def _failure(model: str, status: int, code: str, message: str) -> JSONResponse:
    body = GenerateResponse(ok=False, kind="video", model=model, error=ApiError(code=code, message=message))
    return JSONResponse(body.model_dump(), status_code=status)


def _job_view(ctx: HubContext, record: Any) -> dict[str, Any]:
    from ai_influencer.usecases import video as usecase

    store = usecase.store(ctx.workspace)
    clip = store.load_clip(record.key)
    view: dict[str, Any] = {
        "key": record.key,
        "job_id": record.job_id,
        "model": record.model,
        "status": record.status,
        "error": record.error,
        "estimate_usd": record.estimate_usd,
        "cost_usd": record.cost_usd,
        "status_url": f"/api/video/jobs/{record.key}",
        "content_url": None,
    }
    if clip is not None:
        view["content_url"] = f"/api/video/jobs/{record.key}/content"
        view["identity"] = clip.identity
    return view


@router.post("/api/generate/video", response_model=GenerateResponse, status_code=202)
def generate_video(req: VideoGenerateRequest, ctx: HubContext = Depends(hub)) -> Any:
    """Submit one clip (paid): checked against the model first, its job id in the workspace's ledger at once."""
    from ai_influencer.openrouter.videos import VideoRequest, check_request, estimate_price
    from ai_influencer.storyboard import Shot
    from ai_influencer.usecases import video as usecase
    from ai_influencer.video.clips import ClipPlan, clip_key
    from ai_influencer.video.ledger import submit_clip

    first = ctx.inside_data(req.first_frame) if req.first_frame else None
    if first is not None and not first.is_file():
        return _failure(req.model, 400, "bad_request", f"first_frame {req.first_frame}: no such file in the data root")
    try:
        api = usecase.video_api(ctx.openrouter())
        model = api.get_model(req.model)
        request = VideoRequest(
            model=req.model, prompt=req.prompt, duration=req.duration or min(model.supported_durations or [0]) or None,
            resolution=req.resolution, aspect_ratio=req.aspect_ratio, first_frame=first,
            generate_audio=req.generate_audio, seed=req.seed, callback_url=req.callback_url,
        )  # fmt: skip
        check_request(model, request)
        shot = Shot(scene="hub", description=req.prompt, lighting="", outfit="", pose="", on_screen_text="")
        plan = ClipPlan(
            0, shot, "", False, request, clip_key(request), estimate_price(model, request),
            FIRST_FRAME if first is not None else "prompt",
        )  # fmt: skip
        record = submit_clip(api, plan, usecase.store(ctx.workspace))
    except OpenRouterError as exc:
        status, code = error_status(exc)
        if code == "bad_request":
            code = "unsupported_parameter" if getattr(exc, "parameter", None) else code
        return _failure(req.model, status, code, str(exc))
    view = _job_view(ctx, record)
    item = Item(mime="application/json", url=view["status_url"], text=record.job_id)
    body = GenerateResponse(ok=True, kind="video", model=req.model, items=[item], usage=None)
    return JSONResponse({**body.model_dump(), "job": view}, status_code=202)


def _record(ctx: HubContext, key: str) -> Any:
    from ai_influencer.usecases import video as usecase
    from ai_influencer.video.ledger import LedgerError

    if not key.isalnum() or len(key) > 64:
        raise HTTPException(400, detail="not a clip key")
    try:
        record = usecase.store(ctx.workspace).load_job(key)
    except LedgerError as exc:
        raise HTTPException(500, detail=str(exc)) from None
    if record is None:
        raise HTTPException(404, detail=f"no video job {key} in this workspace")
    return record


@router.get("/api/video/jobs/{key}")
def video_status(key: str, ctx: HubContext = Depends(hub)) -> dict[str, Any]:
    """Where the job is (one free poll while it runs); a completed job's clip is downloaded, decoded and kept."""
    from ai_influencer.openrouter.videos import COMPLETED
    from ai_influencer.storyboard import Shot
    from ai_influencer.usecases import video as usecase
    from ai_influencer.video.clips import ClipPlan
    from ai_influencer.video.jobs import fetch_clip

    record = _record(ctx, key)
    store = usecase.store(ctx.workspace)
    if store.load_clip(key) is None and record.job_id:
        try:
            api = usecase.video_api(ctx.openrouter())
            if not record.ended:
                record.polls += 1
                if record.update(api.poll(record.job_id)):
                    store.save_job(record)
            if record.status == COMPLETED:
                params = record.parameters
                shot = Shot(scene=record.scene, description=str(params.get("prompt", "")), lighting="", outfit="",
                            pose="", on_screen_text="")  # fmt: skip
                from ai_influencer.openrouter.videos import PriceEstimate, VideoRequest

                plan = ClipPlan(
                    record.index, shot, "", False, VideoRequest(model=record.model), key,
                    PriceEstimate(record.estimate_usd, params.get("duration"), "from the job record"),
                    str(params.get("mode", "")),
                )  # fmt: skip
                fetch_clip(api, plan, store, record)
        except OpenRouterError as exc:
            status, code = error_status(exc)
            raise HTTPException(status, detail={"code": code, "message": str(exc)}) from None
    return _job_view(ctx, record)


@router.get("/api/video/jobs/{key}/content")
def video_content(key: str, ctx: HubContext = Depends(hub)) -> FileResponse:
    """The clip (MP4) once it has been downloaded and kept."""
    from ai_influencer.usecases import video as usecase

    _record(ctx, key)
    store = usecase.store(ctx.workspace)
    if store.load_clip(key) is None:
        raise HTTPException(404, detail=f"clip {key} is not ready; ask its status first")
    return FileResponse(store.clip(key), media_type="video/mp4")


@router.get("/api/video")
def video_clips(ctx: HubContext = Depends(hub)) -> dict[str, Any]:
    """The workspace's clips with their verdicts and filmstrips, and the jobs still waiting or failed."""
    from ai_influencer.usecases import video as usecase
    from ai_influencer.video.ledger import rebuild_video_manifest

    store = usecase.store(ctx.workspace)
    if not store.root.is_dir():
        return {"count": 0, "clips": [], "waiting": [], "failed": [], "total_cost_usd": 0.0}
    manifest = rebuild_video_manifest(store)
    root = ctx.data_root

    def url(path: Path) -> str | None:
        resolved = path.resolve()
        return f"/files/{resolved.relative_to(root).as_posix()}" if resolved.is_file() else None

    clips = []
    for clip in manifest["clips"]:
        identity = clip.get("identity") or {}
        clips.append(
            {
                "key": clip["key"], "scene": clip["scene"], "index": clip["index"], "model": clip["model"],
                "url": url(store.clip(clip["key"])), "filmstrip": url(store.filmstrip(clip["key"])),
                "verdict": identity.get("verdict"), "reason": identity.get("reason"),
                "median": identity.get("median_score"), "cost_usd": clip.get("cost_usd"),
                "script_line": clip.get("script_line"),
            }
        )  # fmt: skip
    return {
        "count": manifest["count"],
        "clips": clips,
        "waiting": manifest["waiting"],
        "failed": manifest["failed"],
        "total_cost_usd": manifest["total_cost_usd"],
        "identity_failed": manifest["identity_failed"],
    }


@webhook_router.post(WEBHOOK_PATH)
async def video_webhook(request: Request) -> JSONResponse:
    """OpenRouter's ``video.generation.*`` posts: signature checked over the raw body (when a secret is set),
    repeats de-duplicated by ``X-OpenRouter-Idempotency-Key``, the event left where waiting runs look."""
    from ai_influencer.usecases import video as usecase
    from ai_influencer.video.webhooks import WebhookError, receive

    ctx: HubContext = request.app.state.hub
    raw = await request.body()
    try:
        store = usecase.store(ctx.workspace)
        secret = ctx.webhook_secret()
        got = receive(store.inbox(), raw, dict(request.headers), secret=secret, known_job=store.has_job)
    except WebhookError as exc:
        status = {"bad_body": 400, "unknown_job": 404}.get(exc.reason, 401)
        return JSONResponse({"ok": False, "reason": exc.reason, "detail": str(exc)}, status_code=status)
    return JSONResponse({"ok": True, "duplicate": got.duplicate, "job_id": got.event.data.id})
