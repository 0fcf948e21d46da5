"""The stage commands: prepare, plan, generate, qc, augment, and run (the whole pipeline as a flow)."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ai_influencer import usecases
from ai_influencer.settings import Settings
from interfaces.cli.base import (
    NONCOMMERCIAL,
    BackendOpt,
    BankOpt,
    CliError,
    app,
    bank_path,
    client,
    console,
    friendly_errors,
    one_line,
    out,
    settings,
    workspace,
)

PANEL = "Pipeline stages"


def _progress(label: str, extra: str) -> Progress:
    return Progress(
        TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(), TextColumn(extra), TimeElapsedColumn(),
        console=console,
    )  # fmt: skip


@app.command(
    rich_help_panel=PANEL,
    help=f"Prepare reference photos: EXIF fix, background removal, face-centred crop. {NONCOMMERCIAL}",
)
def prepare(
    in_dir: Annotated[Path | None, typer.Option("--in", help="Reference photos (default data/input_raw).")] = None,
    out_dir: Annotated[Path | None, typer.Option("--out", help="Output folder (default data/cleaned).")] = None,
    do_rembg: Annotated[bool, typer.Option("--do-rembg/--no-rembg", "--do_rembg", help="Remove background.")] = False,
    do_facecrop: Annotated[
        bool, typer.Option("--do-facecrop/--no-facecrop", "--do_facecrop", help="Face-centred square crop.")
    ] = True,
    size: Annotated[int, typer.Option(help="Output side in pixels.")] = 1024,
    overwrite: Annotated[bool, typer.Option(help="Redo images already prepared.")] = False,
    backend: BackendOpt = None,
) -> None:
    with friendly_errors():
        ws = workspace()
        src, dst = in_dir or ws.input_raw, out_dir or ws.cleaned
        with console.status(f"preparing {src} ..."):
            try:
                outcome = usecases.prepare(
                    settings(), src, dst, do_rembg=do_rembg, do_facecrop=do_facecrop, size=size,
                    overwrite=overwrite, backend=backend,
                )  # fmt: skip
            except usecases.NotEnoughReferencesError as exc:
                raise CliError(str(exc)) from None
        for error in outcome.errors:
            console.print(f"[yellow]skipped[/] {error}")
        out.print(f"prepared {outcome.usable}/{len(outcome.items)} references -> {dst}")


@app.command(rich_help_panel=PANEL)
def plan(
    prompt_bank: BankOpt = None,
    model: Annotated[str | None, typer.Option(help="Text model (default: settings.text_model).")] = None,
    out_path: Annotated[Path | None, typer.Option("--out", help="Storyboard JSON path.")] = None,
) -> None:
    """Plan content with the LLM: storyboard, spoken script, >= 5 caption seeds (JSON)."""
    with friendly_errors():
        s = settings()
        target = out_path or workspace().storyboard
        with client(s) as c, console.status("asking the LLM for a storyboard..."):
            payload = usecases.plan(c, bank_path(prompt_bank), model or s.text_model)
        summary = usecases.write_plan(payload, target)
        cost = "cost n/a" if summary["cost_usd"] is None else f"${summary['cost_usd']:.4f}"
        out.print(f"wrote {target}: {summary['shots']} shots, {summary['caption_seeds']} caption seeds ({cost})")


@app.command(rich_help_panel=PANEL)
def generate(
    prompt_bank: BankOpt = None,
    model: Annotated[str | None, typer.Option(help="Image model (default: settings.image_model).")] = None,
    out_dir: Annotated[Path | None, typer.Option("--out", help="Output folder.")] = None,
    per_scene: Annotated[int, typer.Option("--per-scene", "--per_scene", min=1, help="Images per scene.")] = 12,
    size: Annotated[str, typer.Option(help="WxH; sent as aspect ratio.")] = "1024x1024",
    sleep: Annotated[
        float, typer.Option(min=0, help="Minimum seconds between request starts (the manual's pacing; = --rate 1/s).")
    ] = 0.0,
    rate: Annotated[
        float | None,
        typer.Option(
            min=0,
            help="Most requests per second (default and 0: no ceiling, --concurrency bounds the sends). "
            "Lowered only while the provider limits our rate (OpenRouter's own 429s, or 429s that follow it).",
        ),
    ] = None,
    concurrency: Annotated[int, typer.Option(min=1, max=64, help="Requests in flight.")] = 4,
    seed: Annotated[int, typer.Option(help="Prompt composition seed.")] = 0,
    ref: Annotated[
        Path | None, typer.Option("--ref", help="Reference photos sent with each request (e.g. data/cleaned).")
    ] = None,
    limit: Annotated[int | None, typer.Option(help="Generate at most this many (after skipping done ones).")] = None,
    budget: Annotated[
        float | None, typer.Option(min=0, help="Send no paid request that could take the spend beyond this (USD).")
    ] = None,
    estimate_usd: Annotated[
        float | None, typer.Option("--estimate-usd", min=0, help="Expected cost of one image (default: listed price).")
    ] = None,
) -> None:
    """Generate images through OpenRouter: content-addressed, resumable, with a manifest.

    Ctrl-C or SIGTERM stops sending new requests; the ones already sent finish and are saved
    (a second Ctrl-C stops at once).
    """
    from ai_influencer.pacing import StopFlag, drain_on_signals

    with friendly_errors():
        s = settings()
        target = out_dir or workspace().synth
        model = model or s.image_model
        plan = usecases.plan_requests(
            bank_path(prompt_bank), target, model=model, per_scene=per_scene, size=size, seed=seed,
            references=ref, limit=limit,
        )  # fmt: skip
        todo = len(plan.todo)
        console.print(
            f"{len(plan.requests)} requested, {plan.already_done} already done, {todo} to generate -> {target}"
        )
        if not plan.todo:
            out.print(f"nothing to generate; manifest: {target / 'manifest.json'}")
            return
        ceiling = 1.0 / sleep if sleep > 0 else rate  # no default ceiling: the release before AIMD had none
        stop = StopFlag()
        with (
            client(s) as c,
            drain_on_signals(stop, redeliver=False),
            _progress("generate", "{task.fields[cost]}") as bar,
        ):
            task = bar.add_task("images", total=len(plan.todo), cost="")

            def tick(outcome: object) -> None:
                if outcome.error and outcome.status != "stopped":  # type: ignore[attr-defined]
                    bar.console.print(f"[yellow]{outcome.status}[/] {outcome.request.key}: {outcome.error}")  # type: ignore[attr-defined]
                bar.update(task, advance=1)

            done = usecases.generate(
                c, plan, target, rate_per_s=ceiling or None, concurrency=concurrency, budget_usd=budget,
                estimate_usd=estimate_usd, stop=stop, on_done=tick,
            )  # fmt: skip
        money = done.money
        unpriced = f" ({money['unpriced_calls']} unpriced, counted at the estimate)" if money["unpriced_calls"] else ""
        out.print(
            f"generated {done.count('generated')}, failed {done.count('failed')}, refused by budget "
            f"{done.count('budget')}, not sent after stop {done.count('stopped')}; spent ${money['spent_usd']:.4f}"
            f"{unpriced}; {done.pacing.describe()}; manifest: {target / 'manifest.json'}"
        )
        if stop.is_set():
            console.print(f"[yellow]stopped:[/] {stop.reason}; every image already paid for is saved")
            raise typer.Exit(code=128 + (stop.signal or 15))
        if done.count("failed"):
            raise typer.Exit(code=2)


def _threshold(**value: float) -> float:
    """Option callback: the QC thresholds' own validation (a percent for minsim gets a hint), as a usage error."""
    from ai_influencer.vision.qc import QCThresholds

    try:
        QCThresholds(**value).validate()
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    return next(iter(value.values()))


@app.command(
    rich_help_panel=PANEL,
    help="Identity QC: calibrated identity score vs the references (each reference must agree, and a face closer "
    f"to another person in the batch is rejected), face sharpness, dedupe keeping the best copy. {NONCOMMERCIAL}",
)
def qc(
    ref: Annotated[Path | None, typer.Option("--ref", help="References (default data/cleaned).")] = None,
    cand: Annotated[Path | None, typer.Option("--cand", help="Candidates (default data/synth_openrouter).")] = None,
    out_dir: Annotated[Path | None, typer.Option("--out", help="Approved copies (default data/qc_passed).")] = None,
    minsim: Annotated[
        float,
        typer.Option(
            callback=lambda v: _threshold(minsim=v),
            help="Minimum identity score, 0..1; 0.34 = same person on either backend (docs/identity-calibration.md).",
        ),
    ] = 0.34,
    minblur: Annotated[
        float,
        typer.Option(
            callback=lambda v: _threshold(minblur=v),
            help="Minimum face sharpness, >= 0; 80 = the sharp/blurred line at any resolution.",
        ),
    ] = 80.0,
    max_faces: Annotated[int, typer.Option("--max-faces", "--max_faces", help="Reject images with more faces.")] = 1,
    workers: Annotated[int | None, typer.Option(help="Worker processes (default: all cores).")] = None,
    backend: BackendOpt = None,
) -> None:
    from ai_influencer.vision.qc import QCThresholds

    with friendly_errors():
        ws = workspace()
        with _progress("qc", "{task.fields[file]}") as bar:
            task = bar.add_task("images", total=None, file="")
            job = usecases.QCJob(
                ref or ws.cleaned, cand or ws.synth, out_dir or ws.qc_passed,
                QCThresholds(minsim=minsim, minblur=minblur, max_faces=max_faces),
                backend=backend, workers=workers, cache_dir=ws.qc_cache,
            )  # fmt: skip
            result = usecases.qc(
                settings(), job,
                on_progress=lambda done, total, name: bar.update(task, completed=done, total=total, file=name),
            )  # fmt: skip
        counts = result.counts
        out.print(
            f"accepted {counts['accepted']}, rejected {counts['rejected']}, errors {counts['error']} "
            f"(references: {result.references_used}); report {result.report}; contact sheet {result.contact_sheet}"
        )


@app.command(rich_help_panel=PANEL)
def augment(
    in_dir: Annotated[Path | None, typer.Option("--in", help="Approved images (default data/qc_passed).")] = None,
    out_dir: Annotated[Path | None, typer.Option("--out", help="Output (default data/augment).")] = None,
    captions: Annotated[Path | None, typer.Option("--captions", help="Captions (default data/captions).")] = None,
    meta: Annotated[Path | None, typer.Option("--meta", help="Generation manifest.json for captions.")] = None,
    num_aug: Annotated[int, typer.Option("--num-aug", "--num_aug", min=0, help="Variants per image.")] = 1,
    seed: Annotated[int, typer.Option(help="Augmentation seed.")] = 137,
    size: Annotated[int, typer.Option(help="Side of the augmented crops.")] = 1024,
    kohya_repeats: Annotated[
        int | None, typer.Option("--kohya-repeats", help="Also write the kohya <repeats>_<token> layout.")
    ] = None,
    vlm: Annotated[bool, typer.Option("--vlm-captions", help="Caption with an OpenRouter vision model.")] = False,
    vlm_model: Annotated[str | None, typer.Option(help="Vision model (default: settings.vision_model).")] = None,
    prompt_bank: BankOpt = None,
) -> None:
    """Augment approved images (albumentations) and write captions from the generation manifest (or a VLM)."""
    with friendly_errors():
        s, ws = settings(), workspace()
        outcome = usecases.augment(
            in_dir or ws.qc_passed, out_dir or ws.augment, captions or ws.captions, prompt_bank=bank_path(prompt_bank),
            manifest=meta or ws.manifest, num_aug=num_aug, seed=seed, size=size, kohya_repeats=kohya_repeats,
            vlm_model=(vlm_model or s.vision_model) if vlm else None, client=lambda: client(s),
        )  # fmt: skip
        result = outcome.result
        for err in result.errors:
            console.print(f"[yellow]skipped[/] {err}")
        if outcome.captions is not None:
            st = outcome.captions
            out.print(f"VLM captions: {st.paid} paid (${st.cost_usd:.4f}), {st.cached} cached, {st.fallback} fell back")
            for err in st.errors:
                console.print(f"[yellow]caption fallback[/] {err}")
        extra = f"; kohya layout {result.kohya_dir}" if result.kohya_dir else ""
        out.print(f"wrote {len(result.images)} images and {len(result.captions)} captions{extra}")


STAGES = ("prepare", "plan", "generate", "qc", "augment", "train", "evaluate")


def _check_run_inputs(s: Settings, prompt_bank: Path, skipped: set[str]) -> None:
    """What `run` needs, checked in seconds before Prefect starts (it used to take ~50 s to say
    that data/input_raw was empty)."""
    from ai_influencer.prompt_bank import load_prompt_bank
    from ai_influencer.vision.image_io import list_images

    ws = workspace()
    load_prompt_bank(prompt_bank)
    if "prepare" not in skipped:
        found = list_images(ws.input_raw) if ws.input_raw.is_dir() else []
        if len(found) < usecases.MIN_REFERENCES:
            raise CliError(
                f"put at least {usecases.MIN_REFERENCES} photos of the persona (JPEG/PNG/WEBP, one face each) in "
                f"{ws.input_raw}/ (found {len(found)}); then run again"
            )
    if {"plan", "generate"} - skipped and s.openrouter_api_key is None:
        from blocks.openrouter import blocks_possible

        if not blocks_possible():
            raise CliError(
                "no OpenRouter key: set OPENROUTER_API_KEY (environment or .env) or store it with `influencer set-key`"
            )


@app.command(rich_help_panel=PANEL)
def run(
    prompt_bank: BankOpt = None,
    per_scene: Annotated[int, typer.Option("--per-scene", "--per_scene", min=1)] = 12,
    model: Annotated[str | None, typer.Option(help="Image model (default: settings.image_model).")] = None,
    budget: Annotated[float | None, typer.Option(help="Stop new paid image requests beyond this USD spend.")] = None,
    skip: Annotated[list[str] | None, typer.Option(help=f"Stage to skip ({', '.join(STAGES)}); repeatable.")] = None,
    do_rembg: Annotated[bool, typer.Option("--do-rembg/--no-rembg", "--do_rembg")] = False,
) -> None:
    """Run the hybrid Prefect flow in-process (local Prefect with SQLite; no server or Docker needed).

    Ctrl-C or SIGTERM during generation stops new paid requests and saves the ones in flight.
    """
    with friendly_errors():
        s = settings()
        skipped = set(skip or [])
        unknown = skipped - set(STAGES)
        if unknown:
            raise CliError(f"--skip: unknown stage(s) {sorted(unknown)}")
        bank = bank_path(prompt_bank)
        _check_run_inputs(s, bank, skipped)

        from flows.params import GenerateParams, HybridParams, Paths, PrepareParams

        params = HybridParams(
            paths=Paths(data_root=str(s.data_root), prompt_bank=str(bank), models_root=str(s.models_root)),
            **{f"run_{stage}": stage not in skipped for stage in STAGES},
            prepare=PrepareParams(do_rembg=do_rembg),
            generate=GenerateParams(per_scene=per_scene, model=model or s.image_model, budget_usd=budget),
        )
        out.print_json(data=_run_hybrid(params))


def _run_hybrid(params: object) -> dict:
    """The hybrid flow on the embedded server (started detached, see prefect_compat), signals handled."""

    def terminated(sig: int, _frame: object) -> None:
        # Reached after the generate flow drained and Prefect ended the run: exit through Python,
        # so atexit stops the embedded server instead of leaving it behind.
        raise SystemExit(128 + sig)

    signal.signal(signal.SIGTERM, terminated)
    from tasks.limits import durable_local_leases

    try:
        with durable_local_leases():
            from flows.hybrid import hybrid_flow
            from tasks.prefect_compat import start_embedded_server

            start_embedded_server(int(os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"]))
            return hybrid_flow(params)
    except (KeyboardInterrupt, SystemExit) as exc:
        code = 130 if isinstance(exc, KeyboardInterrupt) else int(exc.code or 143)
        console.print("[yellow]stopped:[/] every image already paid for is saved; run again to continue")
        raise typer.Exit(code=code) from None
    except (CliError, typer.Exit):
        raise
    except Exception as exc:  # a failed stage: one line here, the details are in the Prefect run's logs
        raise CliError(
            f"{one_line(exc, first_line_only=True)} (details: the run's logs in the Prefect UI or above)"
        ) from None
