"""The Control Hub: a FastAPI app over the real pipeline (the manual's webapp/main.py, hardened).

No pipeline logic lives here: models and generation go through the one OpenRouter client
(``routes.openrouter``), clips through the video stage's ledger (``routes.video``), insights through
``ai_influencer.insights`` (``routes.insights``), runs
through Prefect's REST API and the dataset view over the files the stages wrote
(``routes.pipeline``), the review of QC's verdicts and the calibration through ``ai_influencer.review``
(``routes.review``).

Security (``guard``): every path except the page shells, /static and the API docs needs the hub
token, reads included (the dataset, run list and thumbnails are the user's data, and
``/api/models`` spends the hub's key), and it is checked before anything reads the body. A script
sends it as ``Authorization: Bearer`` (or ``X-Hub-Token``); the pages also get an HttpOnly,
SameSite=Strict cookie from ``POST /api/session`` so that ``<img>`` tags and links work.
State-changing calls (POST) accept the header only, never the cookie, so another site cannot make
a browser spend money. OpenRouter's video webhook is the one route without it: its HMAC signature is
checked instead (``routes.video``). Every body is bounded while it streams (the upload limit for the multipart
route, a smaller JSON limit elsewhere); error answers quote at most a short excerpt of the input
(``errors``). Files are served only from inside the data root. ``create_app`` refuses an empty
token, and a short one on an address other machines reach.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI, HTTPException
from fastapi.responses import FileResponse
from fastapi.routing import APIRoute

from ai_influencer.openrouter import OpenRouterClient
from ai_influencer.settings import Settings
from interfaces.hub import errors
from interfaces.hub.context import HubContext
from interfaces.hub.guard import BodyLimit, BodyLimits, TokenGuard, check_token
from interfaces.hub.routes import insights, openrouter, options, pipeline, review, video

STATIC = Path(__file__).with_name("static")
PAGES = {"/": "index.html", "/influencer": "influencer.html", "/pipeline": "pipeline.html", "/review": "review.html"}


def create_app(
    settings: Settings | None = None,
    *,
    client: OpenRouterClient | None = None,
    prefect_api_url: str | None = None,
    bind: str | None = None,
) -> FastAPI:
    """The hub for ``settings``; ``HubConfigError`` if its token must not serve on ``bind`` (default hub_host)."""
    settings = settings or Settings()
    token = check_token(settings, bind or settings.hub_host)
    app = FastAPI(
        title="ai-influencer Control Hub",
        description="Models, generation, social insights and the Prefect pipeline of ai-influencer.",
        version="1",
    )
    app.state.hub = ctx = HubContext(settings, client, prefect_api_url)

    for route, page in PAGES.items():

        def serve(page: str = page) -> FileResponse:
            return FileResponse(STATIC / page, media_type="text/html")

        app.add_api_route(route, serve, include_in_schema=False)

    @app.get("/static/{name}", include_in_schema=False)
    def static(name: str) -> FileResponse:
        try:
            path = (STATIC / name).resolve()
            found = path.parent == STATIC.resolve() and path.is_file()
        except (OSError, ValueError):  # a NUL byte, a name too long
            found = False
        if not found:
            raise HTTPException(404)
        return FileResponse(path)

    app.include_router(video.webhook_router)
    for module in (video, openrouter, insights, pipeline, review, options):  # video first: its /api/generate/video
        app.include_router(module.router)
    errors.install(app)
    # The last middleware added runs first: the token, then the body limit (uploads: the insights router).
    upload = BodyLimit(ctx.max_upload, "INFLUENCER_HUB_MAX_UPLOAD_MB")
    uploads = {route.path: upload for route in insights.router.routes if isinstance(route, APIRoute)}
    app.add_middleware(BodyLimits, default=BodyLimit(ctx.max_json, "INFLUENCER_HUB_MAX_JSON_MB"), by_path=uploads)
    docs = {app.docs_url, app.redoc_url, app.openapi_url, app.swagger_ui_oauth2_redirect_url}
    # The webhook carries no hub token (OpenRouter cannot send one): its HMAC signature is checked instead.
    open_paths = frozenset({*PAGES, options.OPTIONS_PATH, *(d for d in docs if d), video.WEBHOOK_PATH})
    app.add_middleware(TokenGuard, token=token, open_paths=open_paths, open_prefixes=("/static/",))
    return app
