"""Review and calibrate (issue 28): the latest QC's images with the user's verdicts, and the calibration.

Every answer comes from ``ai_influencer.review`` (listing, verdicts, calibration); this module only turns
its results into JSON and its one-line errors into HTTP answers. The thresholds the grid is ordered by are
the ones a QC run would use (``effective_thresholds``: the persona's calibration, else the defaults).
Like every /api route these need the hub token (``guard.TokenGuard``); the POSTs take it from the header
only, never from the cookie.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query
from pydantic import BaseModel, Field

from ai_influencer.dataset.manifest import IMAGE_SUFFIXES
from ai_influencer.review import (
    CAUSES,
    REASON_KINDS,
    Calibration,
    Fit,
    Judgement,
    Operating,
    OverrideError,
    OverrideStoreError,
    PersonaSettingsError,
    ReviewItem,
    effective_thresholds,
    filter_items,
    review_items,
    set_verdict,
    suggest,
    undo_verdict,
)
from ai_influencer.review import apply as apply_calibration
from ai_influencer.review.calibration import MIN_PER_CLASS
from interfaces.hub.context import HubContext, hub, token_scheme

router = APIRouter(dependencies=[Depends(token_scheme)], tags=["review"])


class VerdictRequest(BaseModel):
    file: str = Field(description="A file name among the latest QC's candidates.", max_length=255)
    verdict: Literal["accepted", "rejected"]
    note: str = Field(default="", max_length=2000, description="One line, at most 500 characters once trimmed.")
    cause: Literal["identity", "sharpness", "other"] | None = Field(
        default=None, description="For a rejection: which threshold it speaks to (calibration)."
    )


class FileRequest(BaseModel):
    file: str = Field(max_length=255)


def _refused(exc: Exception) -> HTTPException:
    """The domain's one-line refusal: 409 for a workspace file that must be fixed first, else 400."""
    return HTTPException(409 if isinstance(exc, OverrideStoreError | PersonaSettingsError) else 400, detail=str(exc))


def _url(ctx: HubContext, path: Path) -> str | None:
    try:
        return path.resolve().relative_to(ctx.data_root).as_posix()
    except ValueError:  # a folder outside the data root is not served
        return None


def _judgement(j: Judgement | None) -> dict[str, Any] | None:
    return None if j is None else {**j.to_json(), "overrides": j.overrides}


def _item(ctx: HubContext, i: ReviewItem) -> dict[str, Any]:
    rel = _url(ctx, i.path)
    return {
        "file": i.file,
        "url": f"/files/{rel}" if rel else None,
        "thumb": f"/api/thumb?path={rel}" if rel else None,
        "faces": i.faces,
        "score": i.score,
        "sharpness": i.sharpness,
        "verdict": i.verdict,
        "reason": i.reason,
        "auto_verdict": i.auto_verdict,
        "auto_reason": i.auto_reason,
        "overridden": i.overridden,
        "judgement": _judgement(i.judgement),
        "kinds": sorted(i.kinds),
        "duplicate_of": i.duplicate_of,
        "scene": i.scene,
        "borderline": None if math.isinf(i.borderline) else round(i.borderline, 3),
    }


def _items(ctx: HubContext) -> tuple[list[ReviewItem], dict[str, Any]]:
    ws = ctx.workspace
    try:
        chosen = effective_thresholds(ws, {})
        items = review_items(ws, **chosen.values())
    except (OverrideError, PersonaSettingsError) as exc:
        raise _refused(exc) from None
    thresholds = {
        t.name: {"value": t.value, "source": t.source, "text": t.describe()} for t in (chosen.minsim, chosen.minblur)
    }
    return items, thresholds


@router.get("/api/review/items")
def items(
    verdict: Literal["accepted", "rejected", "error"] | None = None,
    reason: str | None = Query(default=None, description=f"One of {', '.join(REASON_KINDS)}, or confirmed."),
    scene: str | None = None,
    ctx: HubContext = Depends(hub),
) -> dict[str, Any]:
    """The latest QC's images, borderline first, with the user's verdicts in force; filters by verdict,
    reason kind and scene. ``facets``: the reasons and scenes present (for the page's filters)."""
    if reason is not None and reason not in (*REASON_KINDS, "confirmed"):
        raise HTTPException(400, detail=f"reason: {reason!r} is not one of {', '.join(REASON_KINDS)}, confirmed")
    everything, thresholds = _items(ctx)
    shown = filter_items(everything, verdict=verdict, reason=reason, scene=scene)
    ws = ctx.workspace
    refs = sorted(p for p in ws.cleaned.glob("*") if p.suffix.lower() in IMAGE_SUFFIXES) if ws.cleaned.is_dir() else []
    references = [
        {"file": p.name, "url": f"/files/{rel}", "thumb": f"/api/thumb?path={rel}&size=512"}
        for p in refs
        if (rel := _url(ctx, p))
    ]
    return {
        "items": [_item(ctx, i) for i in shown],
        "total": len(everything),
        "counts": {v: sum(i.verdict == v for i in everything) for v in ("accepted", "rejected", "error")},
        "overridden": sum(i.overridden for i in everything),
        "judged": sum(i.judgement is not None for i in everything),
        "thresholds": thresholds,
        "references": references,
        "facets": {
            "reasons": sorted({k for i in everything for k in i.kinds}),
            "scenes": sorted({i.scene for i in everything if i.scene}),
        },
        "qc_report": ws.qc_report.is_file(),
        "causes": list(CAUSES),
    }


def _one(ctx: HubContext, file: str) -> dict[str, Any] | None:
    found, _ = _items(ctx)
    return next((_item(ctx, i) for i in found if i.file == file), None)


@router.post("/api/review/verdict")
def verdict(req: VerdictRequest, ctx: HubContext = Depends(hub)) -> dict[str, Any]:
    """The user's verdict on one image (A / R on the page), stored at once; QC follows at its next run."""
    try:
        j = set_verdict(ctx.workspace, req.file, req.verdict, note=req.note, cause=req.cause)
    except OverrideError as exc:
        raise _refused(exc) from None
    return {"judgement": _judgement(j), "item": _one(ctx, req.file)}


@router.post("/api/review/undo")
def undo(req: FileRequest, ctx: HubContext = Depends(hub)) -> dict[str, Any]:
    """Take back the last verdict on one image (U on the page); ``undone`` is null when there was none."""
    try:
        j = undo_verdict(ctx.workspace, req.file)
    except OverrideError as exc:
        raise _refused(exc) from None
    return {"undone": _judgement(j), "item": _one(ctx, req.file)}


def _operating(o: Operating | None) -> dict[str, Any] | None:
    if o is None:
        return None
    return {"tp": o.tp, "fp": o.fp, "fn": o.fn, "tn": o.tn, "precision": o.precision, "recall": o.recall}


def _fit(f: Fit) -> dict[str, Any]:
    more_accepted, more_rejected = f.needed
    return {
        "name": f.name,
        "current": f.current,
        "suggested": f.suggested,
        "rule": f.rule,
        "kept": f.rule == "kept",
        "labels": {"accepted": f.positives, "rejected": f.negatives},
        "needed": {"accepted": more_accepted, "rejected": more_rejected},
        "subset": f.subset,
        "missing": f.missing(),
        "at_current": _operating(f.at_current),
        "at_suggested": _operating(f.at_suggested),
    }


def _calibration(cal: Calibration) -> dict[str, Any]:
    return {
        "ready": cal.ready,
        "labels": cal.labels,
        "min_per_class": MIN_PER_CLASS,
        "left_out": cal.left_out,
        "criterion": cal.criterion,
        "missing": cal.missing(),
        "fits": [_fit(f) for f in cal.fits],
        "both": {"current": _operating(cal.both_current), "suggested": _operating(cal.both_suggested)},
        "suggested": cal.suggested(),
        "current": cal.current.describe() if cal.current else "",
        "changes": any(f.suggested is not None and f.rule != "kept" for f in cal.fits),
    }


def _suggest(ctx: HubContext) -> Calibration:
    try:
        return suggest(ctx.workspace)
    except (OverrideError, PersonaSettingsError) as exc:
        raise _refused(exc) from None


@router.get("/api/review/calibration")
def calibration(ctx: HubContext = Depends(hub)) -> dict[str, Any]:
    """This persona's minsim / minblur fitted to the user's labels (ROC), with precision and recall at the
    current and the suggested values; with too few labels, how many more of each kind are needed."""
    return _calibration(_suggest(ctx))


@router.post("/api/review/calibration/apply")
def calibration_apply(ctx: HubContext = Depends(hub)) -> dict[str, Any]:
    """Store the suggested thresholds in the persona's settings (data/persona.json); QC then uses them
    unless given explicitly. 409 when no threshold could be fitted yet."""
    from ai_influencer.vision.faces import resolve_backend

    cal = _suggest(ctx)
    try:
        path = apply_calibration(ctx.workspace, cal, backend=resolve_backend(ctx.settings.face_backend))
    except ValueError as exc:
        raise HTTPException(409, detail=str(exc)) from None
    return {"stored": cal.suggested(), "path": str(path), "calibration": _calibration(_suggest(ctx))}


# ---- runs paused for this review (HybridParams.review, flows/review.py) ----------------------------------------


class ResumeRequest(BaseModel):
    run_id: str = Field(max_length=64, pattern=r"^[0-9a-fA-F-]{32,36}$")
    action: Literal["continue", "stop"] = Field(
        description="continue: QC again with the verdicts as they stand now, then augment and train; stop: end it."
    )


@router.get("/api/review/runs")
def paused_runs(ctx: HubContext = Depends(hub)) -> dict[str, Any]:
    """Pipeline runs paused for this review (newest first); ``prefect`` says why none can be listed."""
    from interfaces.hub.routes.pipeline import prefect_client

    try:
        client = prefect_client(ctx)
    except HTTPException as exc:
        return {"paused": [], "prefect": exc.detail}
    body = {"flow_runs": {"state": {"type": {"any_": ["PAUSED"]}}}, "limit": 20, "sort": "START_TIME_DESC"}
    with client as c:
        try:
            found = c.post("/flow_runs/filter", json=body).raise_for_status().json()
        except Exception as exc:  # httpx errors: say so, the page goes on without them
            return {"paused": [], "prefect": f"Prefect API: {exc}"}
    return {
        "paused": [
            {"id": r["id"], "name": r["name"], "since": (r.get("state") or {}).get("timestamp")}
            for r in found
            if ((r.get("state") or {}).get("state_details") or {}).get("pause_key") == "review"
        ],
        "prefect": None,
    }


@router.post("/api/review/resume")
def resume(req: ResumeRequest, ctx: HubContext = Depends(hub)) -> dict[str, Any]:
    """Resume a run paused for review with the user's answer (the run's Prefect input form, from here)."""
    from interfaces.hub.routes.pipeline import prefect_client

    with prefect_client(ctx) as c:
        try:
            r = c.post(f"/flow_runs/{req.run_id}/resume", json={"run_input": {"action": req.action}})
        except Exception as exc:
            raise HTTPException(502, detail=f"Prefect API: {exc}") from None
    if r.status_code == 404:
        raise HTTPException(404, detail=f"no flow run {req.run_id} on the Prefect server")
    if r.status_code >= 400:
        raise HTTPException(502, detail=f"Prefect API: HTTP {r.status_code}: {r.text[:300]}")
    state = r.json().get("state") or {}
    if state.get("type") != "RUNNING":
        reason = (r.json().get("details") or {}).get("reason") or "the run is not paused"
        raise HTTPException(409, detail=f"not resumed: {reason}")
    return {"id": req.run_id, "action": req.action, "state": state.get("type")}
