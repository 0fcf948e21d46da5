"""/api/influencer: social-profile insights from uploaded CSV/JSON (ai_influencer.insights)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, HTTPException, UploadFile

from ai_influencer.insights import InsightsError, compute_insights, parse_upload
from interfaces.hub.context import token_scheme

# create_app bounds the bodies of this router's paths by INFLUENCER_HUB_MAX_UPLOAD_MB (guard.BodyLimits).
router = APIRouter(dependencies=[Depends(token_scheme)], tags=["insights"])


@router.post("/api/influencer")
async def influencer(files: list[UploadFile]) -> dict[str, Any]:
    """Upload posts (and optionally profiles) as CSV/JSON; returns profiles sorted by success_score."""
    payload = {(f.filename or f"upload-{i}"): await f.read() for i, f in enumerate(files)}
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
