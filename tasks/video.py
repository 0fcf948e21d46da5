"""The per-clip Prefect task: submit (paid, once), wait (under the jobs-at-once limit), download, identity.

The clip's rules are the use case's (``usecases.video.make_clip``); the task adds retries (for what the
client cannot see: a file write, a broken Prefect call; a retry never pays twice, since the ledger is read
before every submit), the global concurrency limit held from the submit to the job's end, and the run's
stop flag. What the clips of one flow run share (the Video API, the budget, the identity checker, the
halt flag) is the run's ``tasks.context.VideoRunContext``, handed to every clip task.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.concurrency.sync import concurrency

from ai_influencer.usecases import video as usecase
from ai_influencer.video.clips import ClipPlan
from shared_limits.retry import retry_options
from tasks.context import VideoRunContext
from tasks.results import ClipTaskResult


@task(
    name="video-clip",
    task_run_name="clip {plan.index} {plan.key}",
    cache_policy=NO_CACHE,  # the ledger and the clip on disk are this task's cache
    persist_result=False,
    **retry_options(),
)
def video_clip_task(plan: ClipPlan, context: VideoRunContext) -> ClipTaskResult:
    """One clip: made at most once per ledger record, its job waited for under the run's jobs-at-once limit."""
    run = context
    logger = get_run_logger()

    @contextmanager
    def gate() -> Iterator[None]:
        with concurrency(run.limit_name, occupy=1, strict=True):
            yield

    made = usecase.make_clip(
        run.api, plan, run.store, budget=run.budget, retry_failed=run.retry_failed, policy=run.policy,
        stop=run.stop, identity=run.identity, run_id=run.run_id, gate=gate, halt=run.halt, on_event=logger.info,
    )  # fmt: skip
    o = made.outcome
    if o.error:
        logger.warning("shot %d [%s]: %s: %s", o.index + 1, o.scene, o.status, o.error)
    return ClipTaskResult(o, made.submitted, made.resumed)
