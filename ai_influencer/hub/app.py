"""The Control Hub: a FastAPI app over the real pipeline (the manual's webapp/main.py, hardened).

No pipeline logic lives here: models and generation go through the one
OpenRouter client, insights through ``ai_influencer.insights``, runs through
Prefect's REST API (``flows.api``), and the dataset view reads the files the
stages wrote.

Security: every ``/api`` and ``/files`` route needs the hub token, reads included
(the dataset, run list and thumbnails are the user's data, and ``/api/models``
spends the hub's key). A script sends it as ``Authorization: Bearer`` (or
``X-Hub-Token``); the pages also get an HttpOnly, SameSite=Strict cookie from
``POST /api/session`` so that ``<img>`` tags and links work. State-changing calls
(POST) accept the header only, never the cookie, so another site cannot make a
browser spend money. Files are served only from inside the data root; uploads are
size-limited. The page shells and /docs carry no data and stay open.
"""

from __future__ import annotations

import base64
import io
import secrets
from pathlib import Path
from typing import Any, Literal

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request, UploadFile
from fastapi.responses import FileResponse, JSONResponse, Response
from pydantic import BaseModel, Field

from ai_influencer.insights import InsightsError, compute_insights, parse_upload
from ai_influencer.openrouter import (
    AuthError,
    BadRequestError,
    InsufficientCreditsError,
    ModerationError,
    OpenRouterClient,
    OpenRouterError,
    RateLimitError,
)
from ai_influencer.settings import MissingApiKeyError, Settings
from ai_influencer.vision.qc import read_report

STATIC = Path(__file__).with_name("static")
COOKIE = "hub_token"
SERVABLE = {".png", ".jpg", ".jpeg", ".webp", ".gif", ".csv", ".json", ".txt"}


class GenerateRequest(BaseModel):
    model: str = Field(min_length=1, description="OpenRouter model id")
    prompt: str = Field(min_length=1, max_length=20_000)
    negative_prompt: str | None = None
    system: str | None = Field(default=None, description="System message (text only).")
    aspect_ratio: str | None = Field(default=None, pattern=r"^\d{1,2}:\d{1,2}$")
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


class RunRequest(BaseModel):
    deployment: str | None = Field(default=None, description="flow/deployment; default settings.hub_deployment")
    parameters: dict[str, Any] = Field(default_factory=dict)


def _error_status(exc: OpenRouterError) -> tuple[int, str]:
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


def create_app(
    settings: Settings | None = None,
    *,
    client: OpenRouterClient | None = None,
    prefect_api_url: str | None = None,
) -> FastAPI:
    settings = settings or Settings()
    app = FastAPI(
        title="ai-influencer Control Hub",
        description="Models, generation, social insights and the Prefect pipeline of ai-influencer.",
        version="1",
    )
    state: dict[str, Any] = {"client": client}
    token = settings.hub_token.get_secret_value() if settings.hub_token else None
    data_root = Path(settings.data_root).resolve()
    max_upload = int(settings.hub_max_upload_mb * 1024 * 1024)

    def openrouter() -> OpenRouterClient:
        """The hub's client, its key resolved like everywhere else: Prefect block, then environment."""
        if state["client"] is None:
            from blocks.openrouter import resolve_settings

            try:
                state["client"] = OpenRouterClient.from_settings(resolve_settings(settings)[0])
            except MissingApiKeyError as exc:
                raise HTTPException(503, detail=str(exc)) from None
        return state["client"]

    def sent_token(request: Request) -> str:
        """The token from the header; for reads (GET) also from the session cookie."""
        sent = request.headers.get("x-hub-token") or ""
        auth = request.headers.get("authorization") or ""
        if auth.lower().startswith("bearer "):
            sent = auth[7:]
        if not sent and request.method in ("GET", "HEAD"):
            sent = request.cookies.get(COOKIE) or ""
        return sent

    def require_token(request: Request) -> None:
        if token is None:
            raise HTTPException(403, detail="the hub has no token configured (set INFLUENCER_HUB_TOKEN)")
        if not secrets.compare_digest(sent_token(request).encode(), token.encode()):
            raise HTTPException(
                401,
                detail="missing or wrong hub token (enter it in the hub token box)",
                headers={"WWW-Authenticate": "Bearer"},
            )

    api = APIRouter(dependencies=[Depends(require_token)])

    # ---- pages -------------------------------------------------------------------------------
    for route, page in (("/", "index.html"), ("/influencer", "influencer.html"), ("/pipeline", "pipeline.html")):

        def serve(page: str = page) -> FileResponse:
            return FileResponse(STATIC / page, media_type="text/html")

        app.add_api_route(route, serve, include_in_schema=False)

    @app.get("/static/{name}", include_in_schema=False)
    def static(name: str) -> FileResponse:
        path = (STATIC / name).resolve()
        if path.parent != STATIC.resolve() or not path.is_file():
            raise HTTPException(404)
        return FileResponse(path)

    # ---- OpenRouter ------------------------------------------------------------------------------
    @api.get("/api/models", tags=["openrouter"])
    def models(
        output_modality: str | None = Query(default=None, description="text | image | ..."),
        refresh: bool = False,
    ) -> dict[str, Any]:
        """OpenRouter models (cached by the client for INFLUENCER_MODELS_CACHE_TTL_S)."""
        try:
            found = openrouter().list_models(output_modality, refresh=refresh)
        except OpenRouterError as exc:
            status, code = _error_status(exc)
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

    def failure(kind: str, model: str, status: int, code: str, message: str) -> JSONResponse:
        body = GenerateResponse(ok=False, kind=kind, model=model, error=ApiError(code=code, message=message))  # type: ignore[arg-type]
        return JSONResponse(body.model_dump(), status_code=status)

    @api.post("/api/generate/{kind}", response_model=GenerateResponse, tags=["openrouter"])
    def generate(kind: Literal["text", "image", "video"], req: GenerateRequest) -> Any:
        if kind == "video":
            return failure(
                kind,
                req.model,
                501,
                "not_supported",
                "video generation is not supported: OpenRouter's API has no video output for this provider/model",
            )
        try:
            if kind == "text":
                messages = [{"role": "system", "content": req.system}] if req.system else []
                messages.append({"role": "user", "content": req.prompt})
                extra = {"max_tokens": req.max_tokens} if req.max_tokens else {}
                res = openrouter().chat(req.model, messages, **extra)
                items = [Item(mime="text/plain", text=res.text)]
            else:
                img = openrouter().generate_image(
                    req.model, req.prompt, negative_prompt=req.negative_prompt, aspect_ratio=req.aspect_ratio
                )
                items = [Item(mime=i.mime, b64=base64.b64encode(i.data).decode()) for i in img.images]
                res = img
        except OpenRouterError as exc:
            status, code = _error_status(exc)
            response = failure(kind, req.model, status, code, str(exc))
            if isinstance(exc, RateLimitError) and exc.retry_after:
                response.headers["Retry-After"] = str(int(exc.retry_after + 0.999))
            return response
        return GenerateResponse(ok=True, kind=kind, model=res.model, items=items, usage=res.usage.model_dump())

    # ---- insights -----------------------------------------------------------------------------
    async def read_limited(upload: UploadFile) -> bytes:
        data = await upload.read(max_upload + 1)
        if len(data) > max_upload:
            raise HTTPException(413, detail=f"{upload.filename}: larger than {settings.hub_max_upload_mb:g} MB")
        return data

    @app.middleware("http")
    async def limit_body(request: Request, call_next: Any) -> Any:
        # Refuse oversized requests before reading them (the per-file check below catches chunked ones).
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > max_upload + 64 * 1024:
            return JSONResponse({"detail": f"request larger than {settings.hub_max_upload_mb:g} MB"}, status_code=413)
        return await call_next(request)

    @api.post("/api/influencer", tags=["insights"])
    async def influencer(files: list[UploadFile]) -> dict[str, Any]:
        """Upload posts (and optionally profiles) as CSV/JSON; returns profiles sorted by success_score."""
        payload = {(f.filename or f"upload-{i}"): await read_limited(f) for i, f in enumerate(files)}
        try:
            posts, profiles = parse_upload(payload)
            insights = compute_insights(posts, profiles)
        except InsightsError as exc:
            raise HTTPException(422, detail=str(exc)) from None
        return {
            "profiles": [i.as_dict() for i in insights],
            "posts": len(posts),
            "score": "success_score: weighted mean of percentile ranks within this upload "
            "(engagement rate 0.5, weekly follower growth 0.3, posts/week 0.2); see README",
        }

    # ---- pipeline -------------------------------------------------------------------------------
    def prefect_client() -> Any:
        from flows.api import api_client

        try:
            return api_client(prefect_api_url)
        except ValueError as exc:
            raise HTTPException(503, detail=f"no Prefect server configured: {exc}") from None

    @api.post("/api/pipeline/run", tags=["pipeline"])
    def run_pipeline(req: RunRequest) -> dict[str, Any]:
        """Start a deployment (default: the hybrid pipeline) with parameters, through Prefect's API."""
        from flows.api import trigger_deployment

        deployment = req.deployment or settings.hub_deployment
        with prefect_client() as c:
            try:
                run = trigger_deployment(c, deployment, req.parameters)
            except LookupError as exc:
                raise HTTPException(404, detail=str(exc)) from None
            except PermissionError as exc:
                raise HTTPException(502, detail=str(exc)) from None
            except Exception as exc:  # httpx errors: report, do not crash the hub
                raise HTTPException(502, detail=f"Prefect API: {exc}") from None
        return {"id": run["id"], "name": run["name"], "state": run.get("state_type"), "deployment": deployment}

    @api.get("/api/runs", tags=["pipeline"])
    def runs(limit: int = Query(default=20, ge=1, le=200)) -> dict[str, Any]:
        """Recent flow runs and their states, newest first."""
        with prefect_client() as c:
            try:
                found = c.post("/flow_runs/filter", json={"limit": limit, "sort": "EXPECTED_START_TIME_DESC"})
                found.raise_for_status()
                flows = c.post("/flows/filter", json={}).raise_for_status().json()
            except Exception as exc:
                raise HTTPException(502, detail=f"Prefect API: {exc}") from None
        names = {f["id"]: f["name"] for f in flows}
        return {
            "runs": [
                {
                    "id": r["id"],
                    "name": r["name"],
                    "flow": names.get(r["flow_id"], ""),
                    "state": r.get("state_type"),
                    "state_name": r.get("state_name"),
                    "start_time": r.get("start_time") or r.get("expected_start_time"),
                    "deployment_id": r.get("deployment_id"),
                }
                for r in found.json()
            ]
        }

    def inside_data(relative: str) -> Path:
        path = (data_root / relative).resolve()
        if not path.is_relative_to(data_root):
            raise HTTPException(403, detail="path escapes the data root")
        return path

    @api.get("/api/dataset", tags=["pipeline"])
    def dataset(folder: str = "synth_openrouter") -> dict[str, Any]:
        """The generated images with their QC verdicts (from qc_passed/qc_report.csv when QC ran)."""
        root = inside_data(folder)
        report = data_root / "qc_passed" / "qc_report.csv"
        verdicts = read_report(report) if report.is_file() else {}
        images = []
        if root.is_dir():
            for p in sorted(root.iterdir()):
                if p.suffix.lower() in {".png", ".jpg", ".jpeg", ".webp"}:
                    rel = p.relative_to(data_root).as_posix()
                    row = verdicts.get(p.name)
                    images.append(
                        {
                            "file": p.name,
                            "url": f"/files/{rel}",
                            "thumb": f"/api/thumb?path={rel}",
                            "verdict": row.verdict if row else None,
                            "score": row.score if row else None,
                            "reason": row.reason if row else None,
                        }
                    )
        return {
            "folder": folder,
            "images": images,
            "qc_report": "/files/qc_passed/qc_report.csv" if report.is_file() else None,
            "counts": {v: sum(1 for r in verdicts.values() if r.verdict == v) for v in ("accepted", "rejected")},
        }

    @api.get("/files/{relative:path}", tags=["pipeline"])
    def files(relative: str) -> FileResponse:
        """A file under the data root (images, CSV, JSON, captions only)."""
        path = inside_data(relative)
        if not path.is_file() or path.suffix.lower() not in SERVABLE:
            raise HTTPException(404, detail="no such file")
        return FileResponse(path)

    @api.get("/api/thumb", tags=["pipeline"])
    def thumb(path: str, size: int = Query(default=256, ge=32, le=1024)) -> Response:
        from PIL import Image

        file = inside_data(path)
        if not file.is_file() or file.suffix.lower() not in {".png", ".jpg", ".jpeg", ".webp"}:
            raise HTTPException(404, detail="no such image")
        with Image.open(file) as im:
            im = im.convert("RGB")
            im.thumbnail((size, size))
            buf = io.BytesIO()
            im.save(buf, format="JPEG", quality=85)
        return Response(buf.getvalue(), media_type="image/jpeg", headers={"Cache-Control": "private, max-age=300"})

    @api.post("/api/session", tags=["hub"])
    def session(request: Request) -> JSONResponse:
        """Exchange the token (header) for an HttpOnly cookie, so the pages' images and links load."""
        response = JSONResponse({"ok": True})
        response.set_cookie(
            COOKIE,
            sent_token(request),
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
            path="/",
        )
        return response

    app.include_router(api)
    return app
