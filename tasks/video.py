"""The per-clip Prefect task: submit (paid, once), wait (under the jobs-at-once limit), download, identity.

The clip's rules are the use case's (``usecases.video.make_clip``); the task adds retries (for what the
client cannot see: a file write, a broken Prefect call; a retry never pays twice, since the ledger is read
before every submit), the global concurrency limit held from the submit to the job's end, and the run's
stop flag. What the clips of one flow run share (the Video API, the budget, the identity checker, the
halt flag) lives in a per-run registry in the flow's process, as the generate stage's ledger does.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.concurrency.sync import concurrency

from ai_influencer.openrouter.videos import VideoAPI
from ai_influencer.pacing import StopFlag
from ai_influencer.usecases import video as usecase
from ai_influencer.video.clips import ClipPlan
from ai_influencer.video.identity import ClipIdentityChecker
from ai_influencer.video.ledger import VideoBudget, VideoStore
from ai_influencer.video.polling import WaitPolicy
from tasks.clients import RUN_STOP
from tasks.retry import retry_options


@dataclass
class VideoRun:
    """What the clip tasks of one flow run share."""

    api: VideoAPI
    store: VideoStore
    budget: VideoBudget
    policy: WaitPolicy
    identity: ClipIdentityChecker | None
    retry_failed: bool
    limit_name: str
    halt: StopFlag = field(default_factory=StopFlag)


_runs: dict[str, VideoRun] = {}
_runs_lock = threading.Lock()


def register_run(run_id: str, run: VideoRun) -> None:
    with _runs_lock:
        _runs[run_id] = run


def release_run(run_id: str) -> VideoRun | None:
    """Forget a finished run (a long-lived worker process runs many flows)."""
    with _runs_lock:
        return _runs.pop(run_id, None)


def _run(run_id: str) -> VideoRun:
    with _runs_lock:
        found = _runs.get(run_id)
    if found is None:
        raise LookupError(f"video run {run_id} is not registered in this process (run the video flow)")
    return found


@task(
    name="video-clip",
    task_run_name="clip {plan.index} {plan.key}",
    cache_policy=NO_CACHE,  # the ledger and the clip on disk are this task's cache
    persist_result=False,
    **retry_options(),
)
def video_clip_task(plan: ClipPlan, run_id: str) -> dict:
    """One clip: made at most once per ledger record, its job waited for under the run's jobs-at-once limit."""
    run = _run(run_id)
    logger = get_run_logger()

    @contextmanager
    def gate() -> Iterator[None]:
        with concurrency(run.limit_name, occupy=1, strict=True):
            yield

    made = usecase.make_clip(
        run.api, plan, run.store, budget=run.budget, retry_failed=run.retry_failed, policy=run.policy,
        stop=RUN_STOP, identity=run.identity, run_id=run_id, gate=gate, halt=run.halt, on_event=logger.info,
    )  # fmt: skip
    o = made.outcome
    if o.error:
        logger.warning("shot %d [%s]: %s: %s", o.index + 1, o.scene, o.status, o.error)
    return {"outcome": o, "submitted": made.submitted, "resumed": made.resumed}
