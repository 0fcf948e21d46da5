"""What the flows return: one typed summary per flow (issue 25), shown in the Prefect UI and read by callers.

The stage flows return their task's result (``tasks.results``), the video flow its use case's
(``ai_influencer.usecases.results.VideoSummary``, re-exported here); the flows that compose stages return these.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from ai_influencer.usecases.results import VideoSummary
from tasks.results import (
    AnalyticsSummary,
    AugmentSummary,
    EvaluateSummary,
    PlanResult,
    PrepareResult,
    PromotionResult,
    QCSummary,
    TrainSummary,
)


class _Summary(BaseModel):
    model_config = ConfigDict(extra="forbid")


class GenerateSummary(_Summary):
    """One generate run: what was planned, made, paid, refused and why it stopped."""

    requested: int
    already_done: int
    kept_from_earlier_references: int
    generated: int
    requests_paid: int
    short_answers: int
    images_per_request: int
    route: str | None
    failed: int
    stopped_by_budget: int
    not_sent_after_fatal_error: int
    not_sent_after_stop: int
    stopped_by: str | None
    spent_usd: float
    estimate_usd: float | None
    unpriced: int
    rate_limited_429: int
    settled_rate_per_s: float | None
    manifest_count: int
    # generate-until-N with a QC stream (the hybrid flow, the rounds):
    target_accepted: int | None = None
    accepted: int | None = None
    not_sent_after_target: int | None = None
    overshoot: int | None = None


class RoundRow(_Summary):
    round: int
    generated: int
    spent_usd: float
    accepted: int
    overshoot: int | None = None
    not_sent_after_target: int | None = None


class RoundsSummary(_Summary):
    """Generate-until-N-accepted: the rounds, why they stopped, and (streamed) QC's final verdicts."""

    target: int
    accepted: int
    rounds: list[RoundRow]
    spent_usd: float
    stopped: str  # target | budget | max_rounds
    overshoot: int
    qc: QCSummary | None = None


class ReviewResult(_Summary):
    """The hybrid flow's review pause: the user's decision, the page, and QC's accepted count after it."""

    decision: str  # continue | stop | timeout
    page: str
    accepted: int | None = None


class HybridSummary(_Summary):
    """Each stage's result, for the stages that ran; ``skipped`` says why train/evaluate did not."""

    prepare: PrepareResult | None = None
    plan: PlanResult | None = None
    generate: GenerateSummary | RoundsSummary | None = None
    qc: QCSummary | None = None
    analytics: AnalyticsSummary | None = None
    review: ReviewResult | None = None
    video: VideoSummary | None = None
    augment: AugmentSummary | None = None
    train: TrainSummary | None = None
    evaluate: EvaluateSummary | None = None
    skipped: str | None = None

    def shown(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True, exclude={"qc": {"outputs"}, "augment": {"outputs"}})


class RetrainSummary(_Summary):
    top_up: RoundsSummary
    augment: AugmentSummary
    train: TrainSummary
    evaluate: EvaluateSummary
    promotion: PromotionResult
