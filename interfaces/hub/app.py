"""The Control Hub: a FastAPI app over the real pipeline (the manual's webapp/main.py, hardened).

No pipeline logic lives here: models and generation go through the one OpenRouter client
(``routes.openrouter``), insights through ``ai_influencer.insights`` (``routes.insights``), runs
through Prefect's REST API and the dataset view over the files the stages wrote
(``routes.pipeline``).

Security: every ``/api`` and ``/files`` route needs the hub token, reads included (the dataset, run
list and thumbnails are the user's data, and ``/api/models`` spends the hub's key). A script sends
it as ``Authorization: Bearer`` (or ``X-Hub-Token``); the pages also get an HttpOnly,
SameSite=Strict cookie from ``POST /api/session`` so that ``<img>`` tags and links work.
State-changing calls (POST) accept the header only, never the cookie, so another site cannot make
a browser spend money. Files are served only from inside the data root; uploads are size-limited.
The page shells and /docs carry no data and stay open.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, JSONResponse

from ai_influencer.openrouter import OpenRouterClient
from ai_influencer.settings import Settings
from interfaces.hub.context import HubContext
from interfaces.hub.routes import insights, openrouter, pipeline

STATIC = Path(__file__).with_name("static")
PAGES = {"/": "index.html", "/influencer": "influencer.html", "/pipeline": "pipeline.html"}


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
    app.state.hub = ctx = HubContext(settings, client, prefect_api_url)

    for route, page in PAGES.items():

        def serve(page: str = page) -> FileResponse:
            return FileResponse(STATIC / page, media_type="text/html")

        app.add_api_route(route, serve, include_in_schema=False)

    @app.get("/static/{name}", include_in_schema=False)
    def static(name: str) -> FileResponse:
        path = (STATIC / name).resolve()
        if path.parent != STATIC.resolve() or not path.is_file():
            raise HTTPException(404)
        return FileResponse(path)

    @app.middleware("http")
    async def limit_body(request: Request, call_next: Any) -> Any:
        # Refuse oversized requests before reading them (the per-file check catches chunked ones).
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > ctx.max_upload + 64 * 1024:
            return JSONResponse({"detail": f"request larger than {settings.hub_max_upload_mb:g} MB"}, status_code=413)
        return await call_next(request)

    for module in (openrouter, insights, pipeline):
        app.include_router(module.router)
    return app
