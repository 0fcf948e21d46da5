"""Making the clips: download, decode, identity, sidecar; and the whole batch from one thread.

``fetch_clip`` keeps one completed job's clip: ``data/video/<key>.mp4`` streamed and decoded whole before
it is kept, checked for identity (with a filmstrip), described by ``<key>.json`` (job id, model,
parameters, cost, timings, probe, identity). ``run_video`` runs a batch of planned clips: clips on disk are
skipped, jobs in the ledger followed up and never submitted again, new clips submitted within the budget
and waited for; ``manifest.json`` is rebuilt at the end. The pieces it uses (``ledger.submit_clip``,
``polling.wait_for_job``, ``fetch_clip``) are what Prefect tasks wrap one clip at a time.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ai_influencer.costs import BudgetExceededError
from ai_influencer.io import atomic_write_json, file_sha256
from ai_influencer.openrouter.errors import AuthError, InsufficientCreditsError, OpenRouterError
from ai_influencer.openrouter.videos import COMPLETED, VideoAPI
from ai_influencer.options.video import VIDEO_DEFAULTS
from ai_influencer.pacing import StopFlag, StopRequested
from ai_influencer.video.clips import ClipPlan
from ai_influencer.video.frames import BadVideoError, VideoProbe, probe_video
from ai_influencer.video.identity import ClipIdentityChecker
from ai_influencer.video.ledger import (
    ClipRecord,
    JobRecord,
    LedgerError,
    VideoBudget,
    VideoStore,
    now_iso,
    rebuild_video_manifest,
    submit_clip,
)
from ai_influencer.video.polling import EventCallback, JobPoller, WaitPolicy, ended_message, job_label

log = logging.getLogger(__name__)


def _probe_dict(probe: VideoProbe) -> dict[str, Any]:
    return {
        "width": probe.width,
        "height": probe.height,
        "fps": probe.fps,
        "duration_s": probe.duration_s,
        "frames": probe.frames,
        "codec": probe.codec,
        "has_audio": probe.has_audio,
        "audio_codec": probe.audio_codec,
    }


def fetch_clip(
    api: VideoAPI,
    plan: ClipPlan,
    store: VideoStore,
    record: JobRecord,
    *,
    identity: ClipIdentityChecker | None = None,
    stop: StopFlag | None = None,
    run_id: str | None = None,
) -> ClipRecord:
    """Download a completed job's clip (free, repeatable), decode it whole, check identity, write the sidecar.

    A clip already on disk that decodes is not downloaded again (a kill between the clip and its sidecar
    costs a re-check, not a download).
    """
    done = store.load_clip(plan.key)
    if done is not None:
        return done
    if record.status != COMPLETED or record.job_id is None:
        raise LedgerError(f"{job_label(record)} is {record.status}, not completed: nothing to download")
    target = store.clip(plan.key)
    probes: list[VideoProbe] = []
    start = time.monotonic()
    probe = None
    if target.is_file():
        try:
            probe = probe_video(target)
        except BadVideoError:
            target.unlink()
    if probe is None:
        api.download(record.job_id, target, stop=stop, verify=lambda tmp: probes.append(probe_video(tmp)))
        probe = probes[-1]
    download_s = round(time.monotonic() - start, 3)
    checked = identity.check(target, filmstrip=store.filmstrip(plan.key)) if identity is not None else None
    clip = ClipRecord(
        key=plan.key,
        file=target.name,
        index=plan.index,
        scene=plan.scene,
        mode=plan.mode,
        script_line=plan.script_line,
        speaks=plan.speaks,
        shot=plan.shot.model_dump(mode="json"),
        model=record.model,
        job_id=record.job_id,
        generation_id=record.generation_id,
        parameters=record.parameters,
        cost_usd=record.cost_usd,
        estimate_usd=record.estimate_usd,
        is_byok=record.is_byok,
        bytes=target.stat().st_size,
        sha256=file_sha256(target),
        probe=_probe_dict(probe),
        timings={
            "submitted_at": now_iso(record.submitted_at) if record.submitted_at else None,
            "completed_at": now_iso(record.finished_at) if record.finished_at else None,
            "downloaded_at": now_iso(),
            "wait_s": round(record.finished_at - record.submitted_at, 1)
            if record.finished_at and record.submitted_at
            else None,
            "download_s": download_s,
            "polls": record.polls,
        },
        identity=checked.to_dict() if checked is not None else None,
        filmstrip=str(store.filmstrip(plan.key)) if checked is not None else None,
        run_id=run_id,
        created_at=now_iso(),
    )
    atomic_write_json(store.sidecar(plan.key), clip.model_dump(mode="json"))
    record.downloaded = True
    store.save_job(record)
    return clip


# ---- the whole batch ----------------------------------------------------------------------------------------


DONE, SKIPPED, FAILED_OUT, WAITING, BUDGET, STOPPED, ERROR = (
    "done",
    "skipped",
    "failed",
    "waiting",
    "budget",
    "stopped",
    "error",
)


@dataclass
class ClipOutcome:
    index: int
    scene: str
    key: str
    status: str  # done | skipped | failed | waiting | budget | stopped | error
    job_id: str | None = None
    error: str | None = None
    clip: ClipRecord | None = None

    @property
    def identity_verdict(self) -> str | None:
        return (self.clip.identity or {}).get("verdict") if self.clip is not None else None


@dataclass
class VideoRunResult:
    outcomes: list[ClipOutcome]
    submitted: int  # paid submits this run made
    resumed: int  # jobs found in the ledger and followed up, not submitted again
    committed_usd: float
    budget_usd: float | None
    manifest: dict[str, Any] = field(default_factory=dict)

    @property
    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for o in self.outcomes:
            out[o.status] = out.get(o.status, 0) + 1
        return out


def run_video(
    api: VideoAPI,
    plans: Sequence[ClipPlan],
    store: VideoStore,
    *,
    budget_usd: float | None = None,
    estimate_usd: float | None = None,
    retry_failed: bool = VIDEO_DEFAULTS.retry_failed,
    max_in_flight: int | None = None,
    policy: WaitPolicy | None = None,
    stop: StopFlag | None = None,
    identity: ClipIdentityChecker | None = None,
    use_webhooks: bool = True,
    run_id: str | None = None,
    on_event: EventCallback | None = None,
) -> VideoRunResult:
    """Make every planned clip that is not on disk yet, from one thread (the CLI path; a flow can instead
    map ``submit_clip`` / ``wait_for_job`` / ``fetch_clip`` over the plans as separate tasks).

    Clips on disk are skipped; jobs in the ledger are followed up, not submitted again; new clips are
    submitted (at most ``max_in_flight`` jobs waiting at once) within the budget. One clip's failure never
    stops the others; a bad key or exhausted credits stop further submits. With ``stop`` set no new job is
    submitted and the waiting ends at once; what was submitted stays in the ledger for the next run.
    """
    if max_in_flight is not None and max_in_flight < 1:
        raise ValueError(f"max_in_flight must be >= 1, got {max_in_flight}")

    def emit(message: str) -> None:
        log.info(message)
        if on_event is not None:
            on_event(message)

    store.root.mkdir(parents=True, exist_ok=True)
    outcomes: dict[str, ClipOutcome] = {}
    unique: dict[str, ClipPlan] = {}
    for plan in plans:
        unique.setdefault(plan.key, plan)

    def out(plan: ClipPlan, status: str, **kw: Any) -> None:
        outcomes[plan.key] = ClipOutcome(plan.index, plan.scene, plan.key, status, **kw)

    records: dict[str, JobRecord | None] = {}
    for key, plan in unique.items():
        try:
            records[key] = store.load_job(key)
        except LedgerError as exc:
            out(plan, ERROR, error=str(exc))
    budget = VideoBudget(
        budget_usd, estimate_usd=estimate_usd, committed_usd=sum(r.committed_usd for r in records.values() if r)
    )
    poller = JobPoller(
        api, store, policy=policy, stop=stop, inbox=store.inbox() if use_webhooks else None, on_event=emit
    )
    submitted = resumed = 0
    halted: str | None = None
    queue: list[ClipPlan] = []
    to_fetch: list[tuple[ClipPlan, JobRecord]] = []

    def fetch(plan: ClipPlan, record: JobRecord) -> None:
        try:
            clip = fetch_clip(api, plan, store, record, identity=identity, stop=stop, run_id=run_id)
        except StopRequested as exc:
            out(plan, WAITING, job_id=record.job_id, error=f"completed, not downloaded: {exc}")
            return
        except (OpenRouterError, BadVideoError, LedgerError, OSError, ValueError) as exc:
            out(plan, ERROR, job_id=record.job_id, error=f"completed, not kept yet (run again): {exc}")
            return
        verdict = (clip.identity or {}).get("verdict")
        emit(f"shot {plan.index + 1} [{plan.scene}]: {clip.file} kept" + (f", identity {verdict}" if verdict else ""))
        out(plan, DONE, job_id=record.job_id, clip=clip)

    for key, plan in unique.items():
        if key in outcomes:
            continue
        clip = store.load_clip(key)
        if clip is not None:
            out(plan, SKIPPED, job_id=clip.job_id, clip=clip)
            continue
        record = records[key]
        if record is None:
            queue.append(plan)
        elif record.status == COMPLETED and record.job_id:
            resumed += 1
            to_fetch.append((plan, record))
        elif record.job_id and not record.ended:
            resumed += 1
            poller.add(record)
            emit(f"{job_label(record)}: in the ledger ({record.status}); polling it again, not submitting")
        elif retry_failed:
            queue.append(plan)
        else:
            out(
                plan,
                FAILED_OUT,
                job_id=record.job_id,
                error=f"job {record.job_id or '(unknown id)'} {record.status}: {record.error or 'no reason given'}; "
                "not submitted again (retry_failed resubmits it)",
            )
    for plan, record in to_fetch:
        fetch(plan, record)

    def stopping() -> bool:
        return stop is not None and stop.is_set()

    def may_submit() -> bool:
        room = max_in_flight is None or poller.active < max_in_flight
        return bool(queue) and halted is None and not stopping() and room

    while True:
        while may_submit():
            plan = queue.pop(0)
            try:
                record = submit_clip(
                    api, plan, store, budget=budget, retry_failed=retry_failed, stop=stop, run_id=run_id
                )
            except StopRequested as exc:
                out(plan, STOPPED, error=str(exc))
                continue
            except BudgetExceededError as exc:
                out(plan, BUDGET, error=f"not submitted: {exc}")
                emit(f"shot {plan.index + 1} [{plan.scene}]: not submitted: {exc}")
                continue
            except (AuthError, InsufficientCreditsError) as exc:
                halted = str(exc)
                out(plan, FAILED_OUT, error=str(exc))
                continue
            except OpenRouterError as exc:  # refused (400/403/...), or uncertain: either way no second try here
                out(plan, FAILED_OUT, error=str(exc))
                emit(f"shot {plan.index + 1} [{plan.scene}]: submit failed: {exc}")
                continue
            if record.ended:  # found in the ledger meanwhile (another run); nothing paid here
                if record.status == COMPLETED:
                    fetch(plan, record)
                else:
                    out(plan, FAILED_OUT, job_id=record.job_id, error=record.error)
                continue
            submitted += 1
            estimate = f"~${record.estimate_usd:.2f}" if record.estimate_usd is not None else "price unknown"
            emit(f"{job_label(record)}: submitted ({estimate})")
            poller.add(record)
        if not poller.active or stopping():
            break
        try:
            finished = poller.step()
        except AuthError as exc:
            halted = str(exc)
            break
        for waited in finished:
            plan = unique[waited.record.key]
            if waited.outcome == "ended" and waited.record.status == COMPLETED:
                fetch(plan, waited.record)
            elif waited.outcome == "ended":
                out(
                    plan,
                    FAILED_OUT,
                    job_id=waited.record.job_id,
                    error=ended_message(waited.record),
                )
            elif waited.outcome == "deadline":
                out(plan, WAITING, job_id=waited.record.job_id, error=waited.error)
            else:
                out(plan, ERROR, job_id=waited.record.job_id, error=waited.error)
        if poller.active and not may_submit():  # a job that just ended may have made room for a submit
            poller.wait()
    why = f"stopped ({stop.reason})" if stopping() and stop is not None else (halted or "run ended")
    for plan in queue:
        out(plan, STOPPED if stopping() else FAILED_OUT, error=f"not submitted: {why}")
    for record in poller.records.values():
        plan = unique[record.key]
        out(
            plan,
            WAITING,
            job_id=record.job_id,
            error=f"still {record.status}: {why}; the job stays in the ledger, run again to resume",
        )
    manifest = rebuild_video_manifest(store)
    ordered = sorted(outcomes.values(), key=lambda o: (o.index, o.key))
    return VideoRunResult(ordered, submitted, resumed, round(budget.committed_usd, 6), budget_usd, manifest)
