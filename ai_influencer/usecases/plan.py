"""Use case: plan the content with the LLM (the manual's openrouter_text.py)."""

from __future__ import annotations

from pathlib import Path

from ai_influencer.io import atomic_write_json
from ai_influencer.openrouter import OpenRouterClient
from ai_influencer.prompt_bank import load_prompt_bank
from ai_influencer.storyboard import Storyboard, plan_storyboard
from ai_influencer.usecases.results import PaidPlan, PlanResult


def plan(client: OpenRouterClient, prompt_bank: Path, model: str) -> PaidPlan:
    """The storyboard (shots, spoken script, >= the bank's caption seeds) as JSON, with the call's
    model, id and usage under ``_meta``. This is the paid call: callers cache the result."""
    board, result = plan_storyboard(client, load_prompt_bank(prompt_bank), model)
    payload = board.model_dump(mode="json")
    payload["_meta"] = {"model": result.model, "generation_id": result.id, "usage": result.usage.model_dump()}
    return PaidPlan(payload=payload)


def write_plan(paid: PaidPlan, target: Path) -> PlanResult:
    """Write the storyboard file (also from a cached, already paid plan); returns its summary."""
    payload = paid.payload
    board = Storyboard.model_validate(payload)
    atomic_write_json(target, payload)
    return PlanResult(
        storyboard=str(target),
        shots=len(board.shots),
        caption_seeds=len(board.caption_seeds),
        cost_usd=payload.get("_meta", {}).get("usage", {}).get("cost"),
    )
