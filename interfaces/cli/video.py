"""``influencer video``: the storyboard's shots as identity-checked persona clips (OpenRouter's Video API).

A thin shell over ``usecases.video``; every option's default and help come from ``VideoOptions``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ai_influencer.video.options import VIDEO_OPTION_DEFAULTS as _D
from ai_influencer.video.options import video_option_help as _help
from interfaces.cli.base import (
    EXIT_BUDGET,
    EXIT_FAILED,
    BackendOpt,
    BankOpt,
    app,
    bank_path,
    client,
    console,
    friendly_errors,
    out,
    settings,
    workspace,
)
from interfaces.cli.stages import PANEL


@app.command(rich_help_panel=PANEL)
def video(
    model: Annotated[str, typer.Option(help=_help("model"))] = _D.model,
    mode: Annotated[str, typer.Option(help=_help("mode"))] = _D.mode,
    resolution: Annotated[str | None, typer.Option(help=_help("resolution"))] = _D.resolution,
    aspect_ratio: Annotated[str | None, typer.Option("--aspect-ratio", help=_help("aspect_ratio"))] = _D.aspect_ratio,
    duration: Annotated[int | None, typer.Option(help=_help("duration"))] = _D.duration,
    audio: Annotated[bool | None, typer.Option("--audio/--no-audio", help=_help("generate_audio"))] = None,
    seed: Annotated[int | None, typer.Option(help=_help("seed"))] = _D.seed,
    max_clips: Annotated[int | None, typer.Option("--max-clips", help=_help("max_clips"))] = _D.max_clips,
    budget: Annotated[float | None, typer.Option(help=_help("budget_usd"))] = _D.budget_usd,
    estimate_usd: Annotated[float | None, typer.Option("--estimate-usd", help=_help("estimate_usd"))] = None,
    max_in_flight: Annotated[int, typer.Option("--max-in-flight", help=_help("max_in_flight"))] = _D.max_in_flight,
    retry_failed: Annotated[bool, typer.Option("--retry-failed", help=_help("retry_failed"))] = False,
    identity: Annotated[bool, typer.Option("--identity/--no-identity", help=_help("check_identity"))] = True,
    callback_url: Annotated[str | None, typer.Option("--callback-url", help=_help("callback_url"))] = None,
    deadline_s: Annotated[float, typer.Option("--deadline-s", help=_help("deadline_s"))] = _D.deadline_s,
    poll_initial_s: Annotated[
        float, typer.Option("--poll-initial-s", help=_help("poll_initial_s"))
    ] = _D.poll_initial_s,
    poll_max_s: Annotated[float, typer.Option("--poll-max-s", help=_help("poll_max_s"))] = _D.poll_max_s,
    storyboard: Annotated[
        Path | None, typer.Option(help="Storyboard JSON (default data/text/storyboard.json).")
    ] = None,
    prompt_bank: BankOpt = None,
    backend: BackendOpt = None,
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
    from ai_influencer.pacing import StopFlag, drain_on_signals
    from ai_influencer.usecases import video as usecase
    from ai_influencer.video.options import video_options

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
        for clip in summary["clips"]:
            verdict = f", identity {clip['verdict']}" if clip["verdict"] else ""
            what = clip["file"] or clip["job_id"] or "-"
            error = f": {clip['error']}" if clip["error"] and clip["status"] not in ("done", "skipped") else ""
            out.print(f"shot {clip['index'] + 1} [{clip['scene']}] {clip['status']} {what}{verdict}{error}",
                      highlight=False, markup=False)  # fmt: skip
        counts = ", ".join(f"{k} {v}" for k, v in sorted(summary["counts"].items()))
        out.print(
            f"clips: {counts}; {summary['submitted']} submitted, {summary['resumed']} resumed from the ledger; "
            f"committed ${summary['committed_usd']:.4f}; manifest {summary['manifest']}",
            highlight=False,
            markup=False,
        )
        if stop.is_set():
            console.print(f"[yellow]stopped:[/] {stop.reason}; the jobs already paid stay in {ws.video / 'jobs'}")
            raise typer.Exit(code=128 + (stop.signal or 15))
        if summary["counts"].get("failed") or summary["counts"].get("error"):
            raise typer.Exit(code=EXIT_FAILED)
        if summary["counts"].get("budget"):
            console.print(
                f"[yellow]budget reached:[/] {summary['counts']['budget']} clip(s) not submitted within --budget "
                f"{budget} (exit code {EXIT_BUDGET}); raise --budget or run again to continue"
            )
            raise typer.Exit(code=EXIT_BUDGET)
