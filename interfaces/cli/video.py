"""``influencer video``: the storyboard's shots as identity-checked persona clips (OpenRouter's Video API).

A thin shell over ``usecases.video``; every option's default and help come from ``VideoOptions``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ai_influencer.options.qc import QCOptions
from ai_influencer.options.video import VideoOptions
from interfaces.cli.base import (
    EXIT_BUDGET,
    EXIT_FAILED,
    BankOpt,
    app,
    bank_path,
    client,
    console,
    friendly_errors,
    option,
    out,
    settings,
    workspace,
)
from interfaces.cli.stages import PANEL


@app.command(rich_help_panel=PANEL)
def video(
    model: str = option(VideoOptions, "model", "--model"),
    mode: str = option(VideoOptions, "mode", "--mode"),
    resolution: str | None = option(VideoOptions, "resolution", "--resolution"),
    aspect_ratio: str | None = option(VideoOptions, "aspect_ratio", "--aspect-ratio"),
    duration: int | None = option(VideoOptions, "duration", "--duration"),
    audio: bool | None = option(VideoOptions, "generate_audio", "--audio/--no-audio"),
    seed: int | None = option(VideoOptions, "seed", "--seed"),
    max_clips: int | None = option(VideoOptions, "max_clips", "--max-clips"),
    budget: float | None = option(VideoOptions, "budget_usd", "--budget"),
    estimate_usd: float | None = option(VideoOptions, "estimate_usd", "--estimate-usd"),
    max_in_flight: int = option(VideoOptions, "max_in_flight", "--max-in-flight"),
    retry_failed: bool = option(VideoOptions, "retry_failed", "--retry-failed"),
    identity: bool = option(VideoOptions, "check_identity", "--identity/--no-identity"),
    callback_url: str | None = option(VideoOptions, "callback_url", "--callback-url"),
    deadline_s: float = option(VideoOptions, "deadline_s", "--deadline-s"),
    poll_initial_s: float = option(VideoOptions, "poll_initial_s", "--poll-initial-s"),
    poll_max_s: float = option(VideoOptions, "poll_max_s", "--poll-max-s"),
    storyboard: Annotated[
        Path | None, typer.Option(help="Storyboard JSON (default data/text/storyboard.json).")
    ] = None,
    prompt_bank: BankOpt = None,
    backend: str | None = option(QCOptions, "backend", "--backend"),
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Plan the clips, print each clip's price and the total; submit nothing.")
    ] = False,
) -> None:
    """Make one clip per storyboard shot through OpenRouter's Video API: the scene's best QC-passed image as
    the first frame (or the references), the shot's line of the script spoken, every clip checked for
    identity on its frames. Prices are shown before anything is submitted.

    Resumable: each job id is on disk the moment its submit returns; a killed run's jobs are polled again,
    never paid twice. Exit code 2: clips failed (their jobs are kept); 4: the budget refused clips.
    """
    from ai_influencer.options.video import video_options
    from ai_influencer.pacing import StopFlag, drain_on_signals
    from ai_influencer.usecases import video as usecase

    with friendly_errors():
        s, ws = settings(), workspace()
        options = video_options(
            model=model, mode=mode, resolution=resolution, aspect_ratio=aspect_ratio, duration=duration,
            generate_audio=audio, seed=seed, max_clips=max_clips, budget_usd=budget, estimate_usd=estimate_usd,
            max_in_flight=max_in_flight, retry_failed=retry_failed, check_identity=identity,
            callback_url=callback_url, deadline_s=deadline_s, poll_initial_s=poll_initial_s, poll_max_s=poll_max_s,
        )  # fmt: skip
        with client(s) as c:
            api = usecase.video_api(c)
            planning = usecase.plan_video(
                api, ws, options, storyboard=storyboard, persona=usecase.persona_line(bank_path(prompt_bank))
            )
            for problem in planning.problems:
                console.print(f"left out: {problem}", style="yellow", highlight=False, markup=False)
            for line in planning.price_lines():
                out.print(f"price: {line}", highlight=False, markup=False)
            if dry_run:
                out.print("dry run: nothing was submitted")
                return
            if not planning.plans:
                out.print("no clip to make")
                return
            checker = usecase.identity_checker(s, ws, backend) if options.check_identity else None
            stop = StopFlag()
            with drain_on_signals(stop, redeliver=False):
                result = usecase.make_videos(
                    api, planning, ws, options, identity=checker, stop=stop,
                    on_event=lambda m: console.print(m, highlight=False, markup=False),
                )  # fmt: skip
        summary = usecase.summary(result, planning, ws)
        for clip in summary.clips:
            verdict = f", identity {clip.verdict}" if clip.verdict else ""
            what = clip.file or clip.job_id or "-"
            error = f": {clip.error}" if clip.error and clip.status not in ("done", "skipped") else ""
            out.print(f"shot {clip.index + 1} [{clip.scene}] {clip.status} {what}{verdict}{error}",
                      highlight=False, markup=False)  # fmt: skip
        counts = ", ".join(f"{k} {v}" for k, v in sorted(summary.counts.items()))
        out.print(
            f"clips: {counts}; {summary.submitted} submitted, {summary.resumed} resumed from the ledger; "
            f"committed ${summary.committed_usd:.4f}; manifest {summary.manifest}",
            highlight=False,
            markup=False,
        )
        if stop.is_set():
            console.print(f"[yellow]stopped:[/] {stop.reason}; the jobs already paid stay in {ws.video / 'jobs'}")
            raise typer.Exit(code=128 + (stop.signal or 15))
        if summary.counts.get("failed") or summary.counts.get("error"):
            raise typer.Exit(code=EXIT_FAILED)
        if summary.counts.get("budget"):
            console.print(
                f"[yellow]budget reached:[/] {summary.counts['budget']} clip(s) not submitted within --budget "
                f"{budget} (exit code {EXIT_BUDGET}); raise --budget or run again to continue"
            )
            raise typer.Exit(code=EXIT_BUDGET)
