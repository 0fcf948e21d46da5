"""The video stage as a flow: the storyboard's shots become identity-checked clips (OpenRouter Video API).

Before the first submit the clips are planned (free calls only: an unsupported parameter fails here, in
one line) and their prices logged and published (``video-plan``). Each clip is then its own retrying task
(``tasks.video``): submitted at most once per ledger record, its job waited for under the global
concurrency limit ``limit_name`` (jobs at once), downloaded, checked for identity. A killed or cancelled
run leaves its job ids on disk; the next run polls the same jobs and submits nothing for them. The clips'
verdicts (``video-clips``) and filmstrips (``video-filmstrips``) are artifacts.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.runtime import flow_run
from prefect.task_runners import ThreadPoolTaskRunner

from ai_influencer.options.video import VideoOptions
from ai_influencer.settings import Settings
from ai_influencer.usecases import video as usecase
from ai_influencer.usecases.video import ERROR, ClipOutcome, VideoModel, drain_on_signals
from flows.params import Paths, VideoParams
from flows.results import VideoSummary
from shared_limits.artifacts import inline_jpeg
from shared_limits.clients import RUN_STOP, openrouter_client
from shared_limits.limits import ensure_limit
from tasks.context import VideoRunContext
from tasks.results import ClipTaskResult
from tasks.video import video_clip_task


def check_video_options(params: VideoParams) -> VideoModel:
    """The video options against the model's listing, free: the hybrid flow calls it before it pays for
    anything, so an unsupported parameter costs neither images nor clips."""
    p = params.resolve(Settings())
    return usecase.check_options(usecase.video_api(openrouter_client()), p.options())


def _plan_markdown(lines: list[str], problems: list[str], options: VideoOptions) -> str:
    rows = "\n".join(f"- {line}" for line in lines)
    left = "\n".join(f"- {p}" for p in problems) or "- none"
    budget = "none" if options.budget_usd is None else f"${options.budget_usd:.2f}"
    return (
        f"# Video plan\n\nmodel `{options.model}`, mode `{options.mode}`, {options.resolution or 'model default'} "
        f"{options.aspect_ratio or ''}, budget {budget}\n\n## Price per clip\n\n{rows}\n\n## Shots left out\n\n{left}\n"
    )


def _filmstrips_markdown(outcomes: list[ClipOutcome]) -> str:
    parts = ["# Filmstrips (green: persona, red: someone else, amber: unsure)"]
    for o in outcomes:
        clip = o.clip
        if clip is None or not clip.filmstrip or not Path(clip.filmstrip).is_file():
            continue
        identity = clip.identity or {}
        parts.append(
            f"## shot {o.index + 1} [{o.scene}]: {identity.get('verdict', '?')}\n\n"
            f"{identity.get('reason', '')}\n\n![filmstrip]({inline_jpeg(Path(clip.filmstrip), 1600)})\n\n"
            f"Clip: `{clip.file}`"
        )
    return "\n\n".join(parts) + "\n"


@flow(name="video", log_prints=True, task_runner=ThreadPoolTaskRunner(max_workers=16))
def video_flow(params: VideoParams = VideoParams(), paths: Paths = Paths()) -> VideoSummary:
    """One clip per storyboard shot; clips already made are kept, jobs already paid are polled, not resubmitted.

    SIGTERM (a cancellation) or Ctrl-C stops new submits and the waiting at once: the job ids are on disk,
    and the next run picks the same jobs up.
    """
    s = Settings()
    p, paths = params.resolve(s), paths.resolve(s)
    ws = paths.workspace()
    options = p.options()
    logger = get_run_logger()
    api = usecase.video_api(openrouter_client())
    planning = usecase.plan_video(api, ws, options, persona=usecase.persona_line(paths.bank))
    for problem in planning.problems:
        logger.warning("left out: %s", problem)
    lines = planning.price_lines()
    for line in lines:
        logger.info("price: %s", line)
    create_markdown_artifact(
        _plan_markdown(lines, planning.problems, options),
        key="video-plan",
        description="The clips this run asks and pays for, before its first submit",
    )
    store = usecase.store(ws)
    if not planning.plans:
        result = usecase.collect([], store, None, options.budget_usd)
        return usecase.summary(result, planning, ws)
    assert p.limit_name is not None
    state, limit, _ = ensure_limit(p.limit_name, options.max_in_flight)
    logger.info("jobs at once: limit %s (%s, %d)", p.limit_name, state, limit)
    identity = usecase.identity_checker(s, ws, p.backend) if options.check_identity else None
    budget = usecase.budget_for(planning, store, options)
    context = VideoRunContext(
        run_id=str(flow_run.id or "local"), api=api, store=store, budget=budget, policy=usecase.wait_policy(options),
        identity=identity, retry_failed=options.retry_failed, limit_name=p.limit_name, stop=RUN_STOP,
    )  # fmt: skip
    RUN_STOP.clear()
    runs: list[usecase.ClipRun] = []
    with drain_on_signals(RUN_STOP):
        futures = [video_clip_task.submit(plan, context) for plan in planning.plans]
        for plan, future in zip(planning.plans, futures, strict=True):
            got = future.result(raise_on_failure=False)
            if isinstance(got, ClipTaskResult):
                runs.append(usecase.ClipRun(got.outcome, got.submitted, got.resumed))
            else:  # the task failed after its retries: said per clip, the others are kept
                error = str(got) if isinstance(got, BaseException) else f"task failed: {got!r}"
                runs.append(usecase.ClipRun(ClipOutcome(plan.index, plan.scene, plan.key, ERROR, error=error)))
    result = usecase.collect(runs, store, budget, options.budget_usd)
    summary = usecase.summary(result, planning, ws)
    create_table_artifact(
        [{k: v for k, v in asdict(line).items() if k != "key"} for line in summary.clips],
        key="video-clips",
        description=f"Clips: {summary.counts}; identity passed {summary.identity_passed}, "
        f"failed {summary.identity_failed}; committed ${summary.committed_usd:.2f}",
    )
    if any(o.clip is not None and o.clip.filmstrip for o in result.outcomes):
        create_markdown_artifact(_filmstrips_markdown(result.outcomes), key="video-filmstrips")
    print(f"video: {summary.counts}, committed ${summary.committed_usd:.2f}; manifest {summary.manifest}")
    return summary
