"""What each task hands its flow: one typed result per task (issue 25), never a bare dict.

Why typed: a flow read ``r["stopped_by_budget"]`` from a dict whose keys were written in another file; a
misspelt key failed at run time, after money was spent. A model names every field once, the Prefect UI and
the result store keep it whole (the cached stage results of plan, QC and augment are these models), and
``tests/test_contracts.py`` fails when a flow or task returns a dict again.

Pydantic models (not dataclasses) where a result is stored or shown (cached results, flow summaries); a
dataclass for the per-image result, made hundreds of times a second by the generate flow.

A task that hands on its use case's result re-exports that model from ``ai_influencer.usecases.results``
(plan, augment, analytics, train): one definition per result, the domain's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from ai_influencer.usecases.results import (
    AnalyticsSummary,
    AugmentSummary,
    PaidPlan,
    PlanResult,
    StageResult,
    TrainSummary,
    VlmCaptionStats,
)


class PrepareResult(StageResult):
    usable: int
    errors: list[str]


class QCSummary(StageResult):
    """QC's verdict counts and files; streamed QC adds how many images were analysed now / came from the cache."""

    accepted: int
    rejected: int
    error: int
    report: str
    contact_sheet: str
    streamed: bool = False
    analysed: int | None = None
    from_cache: int | None = None


class DownweightResult(BaseModel):
    prompt_bank: str
    changes: list[str]


class EvaluateSummary(BaseModel):
    """The best LoRA and one row per candidate (``training.evaluate.CheckpointChoice.rows``)."""

    best: str
    candidates: list[dict[str, Any]]


class PromotionResult(BaseModel):
    promoted: bool
    reason: str
    live: str
    previous: str | None = None


@dataclass
class ImageTaskResult:
    """One image request's outcome, as the generate flow sums it up. ``status``: generated, skipped,
    recovered (images on disk) or stopped, budget, halted (not sent; ``error`` says why)."""

    key: str
    status: str
    slots: int
    new: int = 0
    cost_usd: float = 0.0
    images: list[tuple[str, bool]] = field(default_factory=list)  # (file, paid now) of its slots' images
    file: str | None = None
    asked: int = 0
    short: bool = False
    unpriced: bool = False
    scene: str | None = None
    error: str | None = None


@dataclass
class ClipTaskResult:
    """One clip's outcome (``video.jobs.ClipOutcome``) and whether this task paid a submit or resumed a job."""

    outcome: Any
    submitted: bool = False
    resumed: bool = False


__all__ = [
    "AnalyticsSummary",
    "AugmentSummary",
    "ClipTaskResult",
    "DownweightResult",
    "EvaluateSummary",
    "ImageTaskResult",
    "PaidPlan",
    "PlanResult",
    "PrepareResult",
    "PromotionResult",
    "QCSummary",
    "StageResult",
    "TrainSummary",
    "VlmCaptionStats",
]
