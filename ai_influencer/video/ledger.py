"""The video job ledger: every paid job's id on disk before anything else, read back before anything is paid.

A video job is paid when ``POST /videos`` accepts it, minutes before there is anything to download. So
the job id is the valuable thing: ``submit_clip`` writes it to ``jobs/<key>.json`` (atomic write, fsynced)
the moment the submit returns, before the first poll, and reads that record before it would pay:

* a record with a job id is never submitted again (waiting jobs are polled, completed ones downloaded);
* a job that failed, was cancelled or expired, or whose submit answer was lost (``uncertain``: it may
  exist and be billed) is submitted again only with ``retry_failed``; the earlier attempt stays in the
  record's ``attempts``.

Money: ``VideoBudget`` is checked before each submit with the clip's estimate from ``pricing_skus`` and
starts from what the batch's clips already committed (jobs submitted before a kill included), so
restarting a run never restarts its budget.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, ValidationError

from ai_influencer.costs import BudgetExceededError, BudgetUnenforceableError
from ai_influencer.io import atomic_write_json
from ai_influencer.openrouter.videos import COMPLETED, TERMINAL_STATUSES, SubmitUncertainError, VideoAPI, VideoJob
from ai_influencer.options.video import VIDEO_DEFAULTS
from ai_influencer.pacing import StopFlag
from ai_influencer.video.clips import ClipPlan
from ai_influencer.video.webhooks import WebhookInbox

UNCERTAIN = "uncertain"  # the submit was sent, its answer lost: a job may exist and be billed
RETRYABLE_END = frozenset({"failed", "cancelled", "expired", UNCERTAIN})  # resubmitted only with retry_failed
MANIFEST_NAME = "manifest.json"

# ---- where things live ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class VideoStore:
    """``data/video/``: ``<key>.mp4`` + ``<key>.json``, ``jobs/``, ``filmstrips/``, ``webhooks/``, manifest."""

    root: Path

    @property
    def jobs(self) -> Path:
        return self.root / "jobs"

    @property
    def filmstrips(self) -> Path:
        return self.root / "filmstrips"

    @property
    def webhooks(self) -> Path:
        return self.root / "webhooks"

    @property
    def manifest(self) -> Path:
        return self.root / MANIFEST_NAME

    def clip(self, key: str) -> Path:
        return self.root / f"{key}.mp4"

    def sidecar(self, key: str) -> Path:
        return self.root / f"{key}.json"

    def job_file(self, key: str) -> Path:
        return self.jobs / f"{key}.json"

    def filmstrip(self, key: str) -> Path:
        return self.filmstrips / f"{key}.png"

    def inbox(self) -> WebhookInbox:
        return WebhookInbox(self.webhooks)

    def load_job(self, key: str) -> JobRecord | None:
        path = self.job_file(key)
        if not path.is_file():
            return None
        try:
            return JobRecord.model_validate_json(path.read_text(encoding="utf-8"))
        except (OSError, ValueError, ValidationError) as exc:
            # Never guess: a paid job id may be in there. Stop and say which file.
            raise LedgerError(
                f"{path}: unreadable job record ({str(exc).splitlines()[0][:160]}); fix or move it"
            ) from None

    def has_job(self, job_id: str) -> bool:
        """Whether a job record here names ``job_id`` (its current job or an earlier attempt).

        A text search, not a parse: a damaged record may still hold the id, and an unsigned webhook for a
        job of ours must not be refused because of it (``webhooks.receive``'s ``known_job``)."""
        if not job_id or not self.jobs.is_dir():
            return False
        needle = json.dumps(job_id)
        for path in self.jobs.glob("*.json"):
            try:
                if needle in path.read_text(encoding="utf-8", errors="replace"):
                    return True
            except OSError:
                continue
        return False

    def save_job(self, record: JobRecord) -> None:
        atomic_write_json(self.job_file(record.key), record.model_dump(mode="json"))

    def load_clip(self, key: str) -> ClipRecord | None:
        side, clip = self.sidecar(key), self.clip(key)
        if not (side.is_file() and clip.is_file()):
            return None
        try:
            record = ClipRecord.model_validate_json(side.read_text(encoding="utf-8"))
        except (OSError, ValueError, ValidationError):
            return None
        return record if record.bytes == clip.stat().st_size else None


class LedgerError(RuntimeError):
    """The ledger itself cannot be trusted (an unreadable job record): nothing is submitted for that clip."""


# ---- records ----------------------------------------------------------------------------------------------


def now_iso(ts: float | None = None) -> str:
    return datetime.fromtimestamp(time.time() if ts is None else ts, UTC).isoformat(timespec="seconds")


class Attempt(BaseModel):
    """An earlier submit of the same clip that ended without a clip (kept when ``retry_failed`` resubmits)."""

    job_id: str | None
    status: str
    error: str | None = None
    cost_usd: float | None = None
    estimate_usd: float | None = None
    submitted_at: float | None = None
    finished_at: float | None = None


class JobRecord(BaseModel):
    """``jobs/<key>.json``: one clip's paid job, written before the first poll and after every change."""

    key: str
    index: int
    scene: str
    model: str
    parameters: dict[str, Any]
    estimate_usd: float | None = None
    job_id: str | None = None
    polling_url: str = ""
    status: str = "pending"
    error: str | None = None
    generation_id: str | None = None
    cost_usd: float | None = None
    is_byok: bool | None = None
    outputs: int = 0
    submitted_at: float | None = None  # unix time
    finished_at: float | None = None  # when a poll first saw the end
    polls: int = 0
    downloaded: bool = False
    run_id: str | None = None
    attempts: list[Attempt] = Field(default_factory=list)

    @property
    def ended(self) -> bool:
        return self.status in TERMINAL_STATUSES or self.status == UNCERTAIN

    @property
    def committed_usd(self) -> float:
        """What this clip has cost or may cost: reported costs, else the estimate of every job that may be
        billed (waiting, completed without a reported cost, uncertain); failed attempts at their reported cost.
        """
        total = sum(a.cost_usd or 0.0 for a in self.attempts)
        if self.cost_usd is not None:
            return total + self.cost_usd
        if self.status in ("failed", "cancelled", "expired"):
            return total
        return total + (self.estimate_usd or 0.0)

    def update(self, job: VideoJob) -> bool:
        """Take a poll's answer; True when anything worth writing down changed."""
        before = (self.status, self.error, self.generation_id, self.cost_usd, self.outputs)
        self.status = job.status
        self.error = job.error or (self.error if job.status != COMPLETED else None)
        self.generation_id = job.generation_id or self.generation_id
        if job.usage is not None:
            self.cost_usd = job.usage.cost if job.usage.cost is not None else self.cost_usd
            self.is_byok = job.usage.is_byok
        self.outputs = job.outputs
        if job.terminal and self.finished_at is None:
            self.finished_at = time.time()
        return before != (self.status, self.error, self.generation_id, self.cost_usd, self.outputs)


class ClipRecord(BaseModel):
    """``<key>.json`` beside ``<key>.mp4``: what the clip is, what it cost, how it was checked."""

    key: str
    file: str
    index: int
    scene: str
    mode: str
    script_line: str = ""
    speaks: bool = False
    shot: dict[str, Any] = Field(default_factory=dict)
    model: str
    job_id: str
    generation_id: str | None = None
    parameters: dict[str, Any] = Field(default_factory=dict)
    cost_usd: float | None = None
    estimate_usd: float | None = None
    is_byok: bool | None = None
    bytes: int
    sha256: str
    probe: dict[str, Any] = Field(default_factory=dict)
    timings: dict[str, Any] = Field(default_factory=dict)
    identity: dict[str, Any] | None = None
    filmstrip: str | None = None
    run_id: str | None = None
    created_at: str = ""


# ---- money ------------------------------------------------------------------------------------------------


class VideoBudget:
    """A cap checked before each submit with the clip's estimate (thread-safe: parallel submit tasks).

    ``committed_usd`` starts at what the batch's clips already committed (see ``JobRecord.committed_usd``),
    so a restarted run does not get its budget back. A clip without a price estimate is refused while a
    budget is set, unless ``estimate_usd`` says what to assume.
    """

    def __init__(self, budget_usd: float | None, *, estimate_usd: float | None = None, committed_usd: float = 0.0):
        if budget_usd is not None and budget_usd < 0:
            raise ValueError(f"budget must be >= 0 USD, got {budget_usd}")
        self.budget_usd = budget_usd
        self.estimate_usd = estimate_usd
        self.committed_usd = committed_usd
        self.refused = 0
        self._lock = threading.Lock()

    def price(self, plan: ClipPlan) -> float | None:
        return plan.estimate.usd if plan.estimate.usd is not None else self.estimate_usd

    def reserve(self, plan: ClipPlan) -> float | None:
        """Count the clip's estimate against the budget, or raise ``BudgetExceededError``."""
        price = self.price(plan)
        with self._lock:
            if self.budget_usd is not None:
                if price is None:
                    self.refused += 1
                    raise BudgetUnenforceableError(
                        f"budget ${self.budget_usd:.2f} cannot be enforced: no price for {plan.request.model} "
                        f"({plan.estimate.basis}); give a per-clip estimate"
                    )
                if self.committed_usd + price > self.budget_usd + 1e-9:
                    self.refused += 1
                    raise BudgetExceededError(
                        f"budget ${self.budget_usd:.2f} reached: committed ${self.committed_usd:.2f}, "
                        f"shot {plan.index + 1} would add ~${price:.2f} ({plan.estimate.basis})"
                    )
            self.committed_usd += price or 0.0
        return price

    def release(self, amount: float | None) -> None:
        """Give back a reservation whose submit was refused or never sent."""
        with self._lock:
            self.committed_usd -= amount or 0.0


# ---- submitting ----------------------------------------------------------------------------------------------


def submit_clip(
    api: VideoAPI,
    plan: ClipPlan,
    store: VideoStore,
    *,
    budget: VideoBudget | None = None,
    retry_failed: bool = VIDEO_DEFAULTS.retry_failed,
    stop: StopFlag | None = None,
    run_id: str | None = None,
) -> JobRecord:
    """The one paid call for a clip, made at most once per ledger record.

    Returns the existing record when the clip already has a job (waiting, completed, or ended without a
    clip and ``retry_failed`` off); otherwise checks the stop flag and the budget, submits, and writes
    the job id durably before returning. A lost submit answer is recorded as ``uncertain`` and raised.
    """
    record = store.load_job(plan.key)
    if record is not None and record.job_id is not None and not (retry_failed and record.status in RETRYABLE_END):
        return record
    if record is not None and record.status == UNCERTAIN and not retry_failed:
        return record
    if stop is not None:
        stop.check()
    estimate = budget.reserve(plan) if budget is not None else plan.estimate.usd
    attempts = list(record.attempts) if record is not None else []
    if record is not None and (record.job_id is not None or record.status == UNCERTAIN):
        attempts.append(
            Attempt(
                job_id=record.job_id,
                status=record.status,
                error=record.error,
                cost_usd=record.cost_usd,
                estimate_usd=record.estimate_usd,
                submitted_at=record.submitted_at,
                finished_at=record.finished_at,
            )
        )
    fresh = JobRecord(
        key=plan.key,
        index=plan.index,
        scene=plan.scene,
        model=plan.request.model,
        parameters=plan.request.parameters(),
        estimate_usd=estimate,
        run_id=run_id,
        attempts=attempts,
    )
    submitted_at = time.time()
    try:
        job = api.submit(plan.request, check=False)  # plan_clips checked it against the model already
    except SubmitUncertainError as exc:
        fresh.status, fresh.error, fresh.submitted_at = UNCERTAIN, str(exc), submitted_at
        store.save_job(fresh)
        raise
    except BaseException:
        if budget is not None:
            budget.release(estimate)  # not sent, or refused with an error answer: nothing was billed
        raise
    fresh.job_id, fresh.polling_url = job.id, job.polling_url
    fresh.status, fresh.submitted_at = job.status or "pending", submitted_at
    store.save_job(fresh)  # the paid job's id is on disk before anything else happens
    return fresh


def rebuild_video_manifest(store: VideoStore) -> dict[str, Any]:
    """``manifest.json`` from the sidecars (the clips) and the job records (what waits or failed)."""
    clips: list[dict[str, Any]] = []
    problems: list[str] = []
    if store.root.is_dir():
        for side in sorted(store.root.glob("*.json")):
            if side.name == MANIFEST_NAME:
                continue
            try:
                record = ClipRecord.model_validate_json(side.read_text(encoding="utf-8"))
            except (OSError, ValueError, ValidationError) as exc:
                problems.append(f"{side}: unreadable sidecar ({str(exc).splitlines()[0][:120]})")
                continue
            if not (store.root / record.file).is_file():
                problems.append(f"{side}: clip {record.file} is missing")
                continue
            clips.append(record.model_dump(mode="json"))
    jobs: list[JobRecord] = []
    if store.jobs.is_dir():
        for path in sorted(store.jobs.glob("*.json")):
            try:
                jobs.append(JobRecord.model_validate_json(path.read_text(encoding="utf-8")))
            except (OSError, ValueError, ValidationError) as exc:
                problems.append(f"{path}: unreadable job record ({str(exc).splitlines()[0][:120]})")
    on_disk = {c["key"] for c in clips}
    reported = [j.cost_usd for j in jobs if j.cost_usd is not None] + [
        a.cost_usd for j in jobs for a in j.attempts if a.cost_usd is not None
    ]
    manifest = {
        "count": len(clips),
        "total_cost_usd": round(sum(reported), 6),
        "unpriced_jobs": sum(1 for j in jobs if j.status == COMPLETED and j.cost_usd is None),
        "identity_failed": sum(1 for c in clips if (c.get("identity") or {}).get("verdict") == "failed"),
        "clips": clips,
        "waiting": [
            {"key": j.key, "scene": j.scene, "job_id": j.job_id, "status": j.status}
            for j in jobs
            if not j.ended and j.job_id is not None
        ],
        "failed": [
            {"key": j.key, "scene": j.scene, "job_id": j.job_id, "status": j.status, "error": j.error}
            for j in jobs
            if j.status in RETRYABLE_END and j.key not in on_disk
        ],
        "problems": problems,
    }
    atomic_write_json(store.manifest, manifest)
    return manifest
