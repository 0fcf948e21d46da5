"""What the use cases return: one typed summary per stage, read alike by the CLI, the tasks, the flows and the hub.

Why here, in the domain: the summary is the use case's answer, not the orchestration's. When the use cases
returned dicts, the tasks turned them into models and the CLI read the same dicts by key, so a key was
spelt in three places. Now the use case builds the model once; ``tasks.results`` and ``flows.results``
re-export these (never redefine their fields) and the CLI reads their attributes.

This module stays light (pydantic and dataclasses only): ``tasks.results`` imports it on every flow start,
and the stage modules that build these summaries pull in PyTorch, albumentations or OpenCV.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_serializer


class StageResult(BaseModel):
    """A stage's summary; ``outputs`` (``{path: size}``), set by a task that caches the result, lets a cached
    one be checked against the disk (``shared_limits.caching.call_with_intact_outputs``)."""

    model_config = ConfigDict(extra="forbid")

    outputs: dict[str, int] | None = None

    def shown(self) -> dict[str, Any]:
        """The summary as logs show it (without the outputs list, which can be thousands of files)."""
        return self.model_dump(exclude={"outputs"}, exclude_none=True)


class PaidPlan(BaseModel):
    """The plan as the LLM answered it (storyboard JSON with ``_meta``: model, generation id, usage): what was
    paid for, cached so that a deleted storyboard file is written again for free."""

    payload: dict[str, Any]


class PlanResult(StageResult):
    """The storyboard written from the (maybe cached, already paid) plan."""

    storyboard: str
    shots: int
    caption_seeds: int
    cost_usd: float | None = None


class VlmCaptionStats(BaseModel):
    cached: int
    paid: int
    fallback: int
    cost_usd: float


class AugmentSummary(StageResult):
    images: int
    captions: int
    errors: list[str]
    vlm: VlmCaptionStats | None = None


class AnalyticsSummary(BaseModel):
    """Spend, accepted images and cost per accepted image; the three worst prompt-bank values."""

    spend_usd: float
    accepted: int
    cost_per_accepted_usd: float | None = None
    worst_values: list[str]
    problems: list[str]


class TrainSummary(BaseModel):
    """The LoRA written and how (kohya reports only its output). ``problems`` (training images skipped) are
    for the caller to show; they are no part of the summary as it is dumped, logged or stored."""

    output: str
    backend: str
    steps: int | None = None
    resumed_from: int | None = None
    final_loss: float | None = None
    seconds: float | None = None
    checkpoints: list[str] = []
    run_dir: str | None = None
    samples: list[str] = []
    problems: list[str] = Field(default=[], exclude=True)


@dataclass(frozen=True)
class LoraScore:
    """One evaluated LoRA's identity scores (a ``training.evaluate.CheckpointChoice.rows`` row, typed), and its
    identity-history id when the evaluation was recorded."""

    lora: str
    median: float | None
    p10: float | None
    face_rate: float | None
    history_id: int | None = None

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> LoraScore:
        return cls(
            lora=row["lora"],
            median=row.get("median"),
            p10=row.get("p10"),
            face_rate=row.get("face_rate"),
            history_id=row.get("history_id"),
        )

    @property
    def score(self) -> tuple[float | None, float | None]:
        """(median, p10): what promotion compares."""
        return self.median, self.p10


@dataclass
class ClipLine:
    """One clip as every entry point reports it."""

    index: int
    scene: str
    key: str
    status: str
    job_id: str | None
    file: str | None
    verdict: str | None
    reason: str | None
    cost_usd: float | None
    error: str | None


@dataclass
class VideoCostLine:
    """One video model's line of the cost report: jobs paid (retries included), clips kept, spend, estimate."""

    model: str
    jobs: int = 0
    clips: int = 0
    identity_passed: int = 0
    spend_usd: float = 0.0
    estimate_usd: float = 0.0
    unpriced: int = 0  # completed jobs with no reported cost
    cost_per_clip_usd: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class VideoSummary(BaseModel):
    """One video run: clips planned, made, paid and left out, identity per clip."""

    model_config = ConfigDict(extra="forbid")

    planned: int
    left_out: list[str]
    counts: dict[str, int]
    submitted: int
    resumed: int
    committed_usd: float
    budget_usd: float | None
    estimate_usd: float | None
    identity_passed: int
    identity_failed: int
    clips: list[ClipLine]
    total_cost_usd: float | None
    manifest: str

    @field_serializer("clips")
    def _clips(self, clips: list[ClipLine]) -> list[dict[str, Any]]:
        # every field of every clip, None included (``exclude_none`` leaves rows whole, as when they were dicts)
        return [asdict(c) for c in clips]


__all__ = [
    "AnalyticsSummary",
    "AugmentSummary",
    "ClipLine",
    "LoraScore",
    "PaidPlan",
    "PlanResult",
    "StageResult",
    "TrainSummary",
    "VideoCostLine",
    "VideoSummary",
    "VlmCaptionStats",
]
