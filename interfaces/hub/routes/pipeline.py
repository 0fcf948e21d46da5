"""The pipeline: start a deployment, list runs (Prefect's REST API), browse the dataset and its files."""

from __future__ import annotations

import io
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from pydantic import BaseModel, Field

from ai_influencer.dataset.manifest import IMAGE_SUFFIXES
from ai_influencer.qc.report import read_report
from interfaces.hub.context import HubContext, hub, token_scheme
from interfaces.hub.guard import COOKIE, sent_token

router = APIRouter(dependencies=[Depends(token_scheme)])
SERVABLE = {*IMAGE_SUFFIXES, ".gif", ".csv", ".json", ".txt", ".mp4"}


class RunRequest(BaseModel):
    deployment: str | None = Field(default=None, description="flow/deployment; default settings.hub_deployment")
    parameters: dict[str, Any] = Field(default_factory=dict)


def prefect_client(ctx: HubContext) -> Any:
    """An httpx client for the hub's Prefect server; 503 when there is none (a hub created without one and no
    PREFECT_API_URL: ``influencer hub`` passes the workspace's local server)."""
    from flows.api import api_client

    try:
        return api_client(ctx.prefect_api_url)
    except ValueError as exc:
        raise HTTPException(503, detail=f"no Prefect server configured: {exc}") from None


@router.post("/api/pipeline/run", tags=["pipeline"])
def run_pipeline(req: RunRequest, ctx: HubContext = Depends(hub)) -> dict[str, Any]:
    """Start a deployment (default: the hybrid pipeline) with parameters, through Prefect's API."""
    from flows.api import trigger_deployment

    deployment = req.deployment or ctx.settings.hub_deployment
    with prefect_client(ctx) as c:
        try:
            run = trigger_deployment(c, deployment, req.parameters)
        except LookupError as exc:
            raise HTTPException(404, detail=str(exc)) from None
        except PermissionError as exc:
            raise HTTPException(502, detail=str(exc)) from None
        except Exception as exc:  # httpx errors: report, do not crash the hub
            raise HTTPException(502, detail=f"Prefect API: {exc}") from None
    return {"id": run["id"], "name": run["name"], "state": run.get("state_type"), "deployment": deployment}


@router.get("/api/runs", tags=["pipeline"])
def runs(limit: int = Query(default=20, ge=1, le=200), ctx: HubContext = Depends(hub)) -> dict[str, Any]:
    """Recent flow runs and their states, newest first."""
    with prefect_client(ctx) as c:
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


@router.get("/api/dataset", tags=["pipeline"])
def dataset(folder: str = "synth_openrouter", ctx: HubContext = Depends(hub)) -> dict[str, Any]:
    """The generated images with their QC verdicts (from qc_passed/qc_report.csv when QC ran)."""
    root = ctx.inside_data(folder)
    report = ctx.workspace.qc_report.resolve()
    verdicts = read_report(report) if report.is_file() else {}
    images = []
    if root.is_dir():
        for p in sorted(root.iterdir()):
            if p.suffix.lower() in IMAGE_SUFFIXES:
                rel = p.relative_to(ctx.data_root).as_posix()
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
        "qc_report": f"/files/{report.relative_to(ctx.data_root).as_posix()}" if report.is_file() else None,
        "counts": {v: sum(1 for r in verdicts.values() if r.verdict == v) for v in ("accepted", "rejected")},
    }


@router.get("/files/{relative:path}", tags=["pipeline"])
def files(relative: str, ctx: HubContext = Depends(hub)) -> FileResponse:
    """A file under the data root (images, clips, CSV, JSON, captions only)."""
    path = ctx.inside_data(relative)
    if not path.is_file() or path.suffix.lower() not in SERVABLE:
        raise HTTPException(404, detail="no such file")
    return FileResponse(path)


@router.get("/api/thumb", tags=["pipeline"])
def thumb(path: str, size: int = Query(default=256, ge=32, le=1024), ctx: HubContext = Depends(hub)) -> Response:
    """A JPEG thumbnail of an image under the data root; 415 when the file is not a readable image."""
    from PIL import Image

    file = ctx.inside_data(path)
    if not file.is_file() or file.suffix.lower() not in IMAGE_SUFFIXES:
        raise HTTPException(404, detail="no such image")
    buf = io.BytesIO()
    try:
        with Image.open(file) as im:
            im.draft("RGB", (size, size))  # a JPEG decodes at a reduced scale: a huge photo stays cheap
            im = im.convert("RGB")
            im.thumbnail((size, size))
            im.save(buf, format="JPEG", quality=85)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        # UnidentifiedImageError and truncated files are OSErrors; a bad header can be a SyntaxError.
        raise HTTPException(415, detail=f"{path}: not a readable image ({exc.__class__.__name__})") from None
    return Response(buf.getvalue(), media_type="image/jpeg", headers={"Cache-Control": "private, max-age=300"})


@router.post("/api/session", tags=["hub"])
def session(request: Request) -> JSONResponse:
    """Exchange the token (header) for an HttpOnly cookie, so the pages' images and links load."""
    response = JSONResponse({"ok": True})
    secure = request.url.scheme == "https"
    response.set_cookie(COOKIE, sent_token(request), httponly=True, samesite="strict", secure=secure, path="/")
    return response
