"""Use case: the storyboard's shots as identity-checked persona clips (OpenRouter's Video API).

Shared by ``influencer video``, the Prefect ``video`` subflow and task, the hub and the GUI (through the
CLI): which inputs a mode reads from the workspace, the storyboard's shots cut to ``max_clips``, the
identity checker built with QC's face engine from the cleaned references, the wait policy from the
options, and the summary every entry point reports. The paid and durable parts are the domain's
(``video.ledger``, ``video.polling``, ``video.jobs``); see docs/video.md.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ai_influencer.costs import BudgetExceededError
from ai_influencer.dataset.workspace import Workspace
from ai_influencer.openrouter import OpenRouterClient
from ai_influencer.openrouter.errors import AuthError, InsufficientCreditsError, OpenRouterError
from ai_influencer.openrouter.videos import COMPLETED, VideoAPI, VideoModel, VideoRequest, check_request
from ai_influencer.options.video import FIRST_FRAME, VIDEO_DEFAULTS, VideoOptions
from ai_influencer.pacing import StopFlag, StopRequested
from ai_influencer.pacing import (
    drain_on_signals as drain_on_signals,  # for the video flow (flows reach the domain here)
)
from ai_influencer.settings import Settings
from ai_influencer.storyboard import Storyboard
from ai_influencer.usecases.results import ClipLine, VideoCostLine, VideoSummary
from ai_influencer.video.clips import ClipPlan, ClipPlanning, plan_clips
from ai_influencer.video.frames import BadVideoError
from ai_influencer.video.identity import ClipIdentity, ClipIdentityChecker
from ai_influencer.video.jobs import (
    BUDGET,
    DONE,
    ERROR,
    FAILED_OUT,
    SKIPPED,
    STOPPED,
    WAITING,
    ClipOutcome,
    VideoRunResult,
    fetch_clip,
    run_video,
)
from ai_influencer.video.ledger import (
    JobRecord,
    LedgerError,
    VideoBudget,
    VideoStore,
    rebuild_video_manifest,
    submit_clip,
)
from ai_influencer.video.polling import VideoJobDeadlineError, WaitPolicy, ended_message, job_label, wait_for_job


def load_storyboard(path: Path) -> Storyboard:
    """The plan step's storyboard; a missing or broken file is one line naming it."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no storyboard; run `influencer plan` first")
    try:
        return Storyboard.model_validate(json.loads(path.read_text(encoding="utf-8")))
    except ValueError as exc:
        raise ValueError(f"{path}: not a storyboard ({str(exc).splitlines()[0][:160]})") from None


def video_api(client: OpenRouterClient) -> VideoAPI:
    return VideoAPI(client)


def store(ws: Workspace) -> VideoStore:
    return VideoStore(ws.video)


def check_options(api: VideoAPI, options: VideoOptions) -> VideoModel:
    """The options checked against the model's listing before a run pays for anything (its plan and images
    included): the model exists, and it takes the format, duration, audio, seed and the mode's inputs.
    ``VideoParameterError`` names the model, the parameter and what it accepts."""
    model = api.get_model(options.model)
    probe = VideoRequest(
        model=options.model,
        prompt="options check",
        duration=options.duration,
        resolution=options.resolution,
        aspect_ratio=options.aspect_ratio,
        first_frame=b"" if options.mode == FIRST_FRAME else None,
        generate_audio=options.generate_audio,
        seed=options.seed,
        callback_url=options.callback_url,
    )
    check_request(model, probe)
    return model


def persona_line(prompt_bank: Path) -> str:
    """Who the clips show, from the prompt bank (kept in every clip's prompt, as in the image prompts)."""
    from ai_influencer.prompt_bank import load_prompt_bank

    p = load_prompt_bank(prompt_bank).persona
    return f"A {p.class_word}, {p.description}"


def plan_video(
    api: VideoAPI,
    ws: Workspace,
    options: VideoOptions,
    *,
    storyboard: Path | None = None,
    persona: str = "",
) -> ClipPlanning:
    """Every shot (the first ``max_clips``) as a checked, priced request: free calls only.

    ``VideoParameterError`` (one line naming model, parameter, what it accepts) before anything is paid.
    """
    board = load_storyboard(storyboard or ws.storyboard)
    if options.max_clips is not None and len(board.shots) > options.max_clips:
        board = board.model_copy(update={"shots": board.shots[: options.max_clips]})
    model = api.get_model(options.model)
    return plan_clips(
        board,
        model,
        mode=options.mode,
        qc_report=ws.qc_report,
        qc_dir=ws.qc_passed,
        manifest=ws.manifest,
        references_dir=ws.cleaned,
        max_references=options.max_references,
        aspect_ratio=options.aspect_ratio,
        resolution=options.resolution,
        duration=options.duration,
        generate_audio=options.generate_audio,
        seed=options.seed,
        persona=persona,
        callback_url=options.callback_url,
    )


class SharedIdentityChecker(ClipIdentityChecker):
    """A checker the clips of a run share across threads (the flow's clip tasks finish at once). dlib's
    descriptor network (``face_recognition_model_v1``) keeps its layer outputs in the object, so two clips
    checked at once mixed their faces (a persona clip failed as "another person" in 5 of 5 tries); checks
    take turns. A clip takes about a second."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self._turn = threading.Lock()

    def check(self, clip: Path, *, filmstrip: Path | None = None) -> ClipIdentity:
        with self._turn:
            return super().check(clip, filmstrip=filmstrip)


def identity_checker(settings: Settings, ws: Workspace, backend: str | None = None) -> ClipIdentityChecker:
    """QC's face engine and thresholds, the cleaned references analysed once for the whole run; safe to share
    between the run's threads."""
    from ai_influencer.imaging import list_images
    from ai_influencer.qc.analysis import EngineSpec

    refs = list_images(ws.cleaned) if ws.cleaned.is_dir() else []
    if not refs:
        raise FileNotFoundError(f"{ws.cleaned}: no reference photos to check the clips' identity; run prepare first")
    return SharedIdentityChecker.from_spec(EngineSpec.from_settings(settings, backend), refs)


def wait_policy(options: VideoOptions, policy: WaitPolicy | None = None) -> WaitPolicy:
    """How the run waits for its jobs: the options' poll interval and deadline (``policy``: the rest)."""
    base = policy or WaitPolicy()
    return WaitPolicy(
        poll_initial_s=min(options.poll_initial_s, options.poll_max_s),
        poll_max_s=options.poll_max_s,
        backoff=base.backoff,
        deadline_s=options.deadline_s,
        wake_check_s=min(base.wake_check_s, options.poll_initial_s),
    ).validate()


def budget_for(planning: ClipPlanning, video_store: VideoStore, options: VideoOptions) -> VideoBudget:
    """The run's budget, starting from what the planned clips already committed (a restart gets nothing back)."""
    committed = 0.0
    for key in {p.key for p in planning.plans}:
        record = video_store.load_job(key)
        committed += record.committed_usd if record is not None else 0.0
    return VideoBudget(options.budget_usd, estimate_usd=options.estimate_usd, committed_usd=committed)


def make_videos(
    api: VideoAPI,
    planning: ClipPlanning,
    ws: Workspace,
    options: VideoOptions,
    *,
    identity: ClipIdentityChecker | None = None,
    policy: WaitPolicy | None = None,
    stop: StopFlag | None = None,
    run_id: str | None = None,
    on_event: Callable[[str], None] | None = None,
) -> VideoRunResult:
    """The CLI's path: every planned clip from this process (see ``video.jobs.run_video``)."""
    return run_video(
        api,
        planning.plans,
        store(ws),
        budget_usd=options.budget_usd,
        estimate_usd=options.estimate_usd,
        retry_failed=options.retry_failed,
        max_in_flight=options.max_in_flight,
        policy=wait_policy(options, policy),
        stop=stop,
        identity=identity,
        run_id=run_id,
        on_event=on_event,
    )


def summary(result: VideoRunResult, planning: ClipPlanning, ws: Workspace) -> VideoSummary:
    """The stage's result: counts, money, identity per clip, the shots left out."""
    lines = []
    for o in result.outcomes:
        identity = (o.clip.identity or {}) if o.clip is not None else {}
        lines.append(
            ClipLine(
                index=o.index,
                scene=o.scene,
                key=o.key,
                status=o.status,
                job_id=o.job_id,
                file=o.clip.file if o.clip else None,
                verdict=identity.get("verdict"),
                reason=identity.get("reason"),
                cost_usd=o.clip.cost_usd if o.clip else None,
                error=o.error,
            )
        )
    verdicts = [line.verdict for line in lines if line.verdict]
    return VideoSummary(
        planned=len(planning.plans),
        left_out=planning.problems,
        counts=result.counts,
        submitted=result.submitted,
        resumed=result.resumed,
        committed_usd=result.committed_usd,
        budget_usd=result.budget_usd,
        estimate_usd=planning.total_usd,
        identity_passed=verdicts.count("passed"),
        identity_failed=verdicts.count("failed"),
        clips=lines,
        total_cost_usd=result.manifest.get("total_cost_usd"),
        manifest=str(store(ws).manifest),
    )


def cost_lines(ws: Workspace) -> list[VideoCostLine]:
    """The video lines of the cost report: per model, clips kept, jobs paid, reported spend, estimates."""
    vstore = store(ws)
    if not vstore.jobs.is_dir() and not vstore.root.is_dir():
        return []
    manifest = rebuild_video_manifest(vstore) if vstore.root.is_dir() else {}
    by_model: dict[str, VideoCostLine] = {}
    for path in sorted(vstore.jobs.glob("*.json")) if vstore.jobs.is_dir() else []:
        try:
            job = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        model = job.get("model", "?")
        row = by_model.setdefault(model, VideoCostLine(model))
        attempts = job.get("attempts") or []
        row.jobs += 1 + len(attempts)
        for cost in [job.get("cost_usd"), *(a.get("cost_usd") for a in attempts)]:
            row.spend_usd += cost or 0.0
        if job.get("cost_usd") is None and job.get("status") == "completed":
            row.unpriced += 1
        row.estimate_usd += job.get("estimate_usd") or 0.0
    for clip in manifest.get("clips", []):
        row = by_model.get(clip.get("model", "?"))
        if row is not None:
            row.clips += 1
            row.identity_passed += (clip.get("identity") or {}).get("verdict") == "passed"
    for row in by_model.values():
        row.spend_usd = round(row.spend_usd, 6)
        row.estimate_usd = round(row.estimate_usd, 6)
        row.cost_per_clip_usd = round(row.spend_usd / row.clips, 6) if row.clips else None
    return list(by_model.values())


# ---- one clip at a time (what the Prefect task wraps) -------------------------------------------------------


@dataclass
class ClipRun:
    """One clip made by ``make_clip``: its outcome, and whether this call paid a submit or resumed a job."""

    outcome: ClipOutcome
    submitted: bool = False
    resumed: bool = False


def make_clip(
    api: VideoAPI,
    plan: ClipPlan,
    video_store: VideoStore,
    *,
    budget: VideoBudget | None = None,
    retry_failed: bool = VIDEO_DEFAULTS.retry_failed,
    policy: WaitPolicy | None = None,
    stop: StopFlag | None = None,
    identity: ClipIdentityChecker | None = None,
    run_id: str | None = None,
    gate: Callable[[], AbstractContextManager[Any]] = nullcontext,
    halt: StopFlag | None = None,
    on_event: Callable[[str], None] | None = None,
) -> ClipRun:
    """One clip, the same rules as ``run_video`` for a batch: a clip on disk is kept, a job in the ledger is
    followed up and never submitted again, an ended job without a clip is resubmitted only with
    ``retry_failed``; a new one is submitted within the budget, its id on disk before the first poll.

    ``gate`` is held from the submit to the job's end (the flow passes a Prefect concurrency limit: the
    jobs waited for at once). A deadline or a stop leaves the job in the ledger for the next run. ``halt``
    is shared by the clips of a run: a bad key or exhausted credits set it, and no clip submits after that
    (jobs already paid are still waited for and kept).
    """
    emit = on_event or (lambda _m: None)

    def out(status: str, **kw: Any) -> ClipOutcome:
        return ClipOutcome(plan.index, plan.scene, plan.key, status, **kw)

    def fetch(record: JobRecord) -> ClipOutcome:
        try:
            clip = fetch_clip(api, plan, video_store, record, identity=identity, stop=stop, run_id=run_id)
        except StopRequested as exc:
            return out(WAITING, job_id=record.job_id, error=f"completed, not downloaded: {exc}")
        except (OpenRouterError, BadVideoError, LedgerError, OSError, ValueError) as exc:
            return out(ERROR, job_id=record.job_id, error=f"completed, not kept yet (run again): {exc}")
        verdict = (clip.identity or {}).get("verdict")
        emit(f"shot {plan.index + 1} [{plan.scene}]: {clip.file} kept" + (f", identity {verdict}" if verdict else ""))
        return out(DONE, job_id=record.job_id, clip=clip)

    done = video_store.load_clip(plan.key)
    if done is not None:
        return ClipRun(out(SKIPPED, job_id=done.job_id, clip=done))
    try:
        record = video_store.load_job(plan.key)
    except LedgerError as exc:
        return ClipRun(out(ERROR, error=str(exc)))
    if record is not None and record.status == COMPLETED and record.job_id:
        return ClipRun(fetch(record), resumed=True)
    if record is not None and record.ended and not retry_failed:
        error = f"{ended_message(record)}; not submitted again (retry_failed resubmits it)"
        return ClipRun(out(FAILED_OUT, job_id=record.job_id, error=error))
    resumed = record is not None and record.job_id is not None and not record.ended
    paid = False
    with gate():
        if not resumed:
            if halt is not None and halt.is_set():
                return ClipRun(out(FAILED_OUT, error=f"not submitted: {halt.reason}"))
            try:
                record = submit_clip(
                    api, plan, video_store, budget=budget, retry_failed=retry_failed, stop=stop, run_id=run_id
                )
            except StopRequested as exc:
                return ClipRun(out(STOPPED, error=str(exc)))
            except BudgetExceededError as exc:
                emit(f"shot {plan.index + 1} [{plan.scene}]: not submitted: {exc}")
                return ClipRun(out(BUDGET, error=f"not submitted: {exc}"))
            except (AuthError, InsufficientCreditsError) as exc:
                if halt is None:
                    raise
                halt.request(str(exc))  # every other clip would fail the same way: no more submits
                return ClipRun(out(FAILED_OUT, error=str(exc)))
            except OpenRouterError as exc:
                emit(f"shot {plan.index + 1} [{plan.scene}]: submit failed: {exc}")
                return ClipRun(out(FAILED_OUT, error=str(exc)))
            paid = not record.ended
            if paid:
                estimate = f"~${record.estimate_usd:.2f}" if record.estimate_usd is not None else "price unknown"
                emit(f"{job_label(record)}: submitted ({estimate})")
        else:
            emit(f"{job_label(record)}: in the ledger ({record.status}); polling it again, not submitting")
        try:
            record = wait_for_job(api, video_store, plan.key, policy=policy, stop=stop, inbox=video_store.inbox(),
                                  on_event=emit)  # fmt: skip
        except VideoJobDeadlineError as exc:
            return ClipRun(out(WAITING, job_id=record.job_id, error=str(exc)), paid, resumed)
        except StopRequested as exc:
            error = f"still {record.status}: {exc}; the job stays in the ledger, run again to resume"
            return ClipRun(out(WAITING, job_id=record.job_id, error=error), paid, resumed)
        except AuthError:
            raise
        except OpenRouterError as exc:
            return ClipRun(out(ERROR, job_id=record.job_id, error=f"{job_label(record)}: {exc}"), paid, resumed)
    if record.status == COMPLETED:
        return ClipRun(fetch(record), paid, resumed)
    return ClipRun(out(FAILED_OUT, job_id=record.job_id, error=ended_message(record)), paid, resumed)


def collect(
    runs: list[ClipRun], video_store: VideoStore, budget: VideoBudget | None, budget_usd: float | None
) -> VideoRunResult:
    """The clips made one at a time, as the batch's result (the manifest rebuilt from the disk)."""
    manifest = rebuild_video_manifest(video_store)
    outcomes = sorted((r.outcome for r in runs), key=lambda o: (o.index, o.key))
    committed = budget.committed_usd if budget is not None else 0.0
    return VideoRunResult(
        outcomes, submitted=sum(r.submitted for r in runs), resumed=sum(r.resumed for r in runs),
        committed_usd=round(committed, 6), budget_usd=budget_usd, manifest=manifest,
    )  # fmt: skip
