"""The stage commands: prepare, plan, generate, qc, augment, and run (the whole pipeline as a flow)."""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ai_influencer import usecases
from ai_influencer.options import AugmentOptions, GenerateOptions, PlanOptions, PrepareOptions, QCOptions
from ai_influencer.options.fields import default_of, help_of
from ai_influencer.options.video import VideoOptions
from ai_influencer.settings import Settings
from flows.params import HybridParams
from interfaces.cli.base import (
    CONSOLE_LOG,
    EXIT_BUDGET,
    EXIT_FAILED,
    NONCOMMERCIAL,
    BankOpt,
    CliError,
    app,
    bank_path,
    client,
    console,
    expected_errors,
    friendly_errors,
    one_line,
    option,
    out,
    settings,
    workspace,
)

if TYPE_CHECKING:
    from ai_influencer.diagnostics import Check
    from ai_influencer.options.images import ImageOptions
    from flows.results import HybridSummary

PANEL = "Pipeline stages"
# Every stage option's default, bounds and help come from the stage's options model (ai_influencer.options)
# through ``option``; the CLI only names its flags (the manual's spellings beside dashed ones).


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
    do_rembg: bool = option(PrepareOptions, "do_rembg", "--do-rembg/--no-rembg", "--do_rembg"),
    do_facecrop: bool = option(PrepareOptions, "do_facecrop", "--do-facecrop/--no-facecrop", "--do_facecrop"),
    size: int = option(PrepareOptions, "size", "--size"),
    overwrite: Annotated[bool, typer.Option(help="Redo images already prepared.")] = False,
    backend: str | None = option(PrepareOptions, "backend", "--backend"),
    allow_multi_face: bool = option(PrepareOptions, "allow_multi_face", "--allow-multi-face"),
) -> None:
    with friendly_errors():
        ws = workspace()
        src, dst = in_dir or ws.input_raw, out_dir or ws.cleaned
        options = PrepareOptions(
            do_rembg=do_rembg, do_facecrop=do_facecrop, size=size, backend=backend, allow_multi_face=allow_multi_face
        )
        with console.status(f"preparing {src} ..."):
            try:
                outcome = usecases.prepare(settings(), src, dst, options, overwrite=overwrite)
            except usecases.NotEnoughReferencesError as exc:
                raise CliError(str(exc)) from None
        for error in outcome.errors:
            console.print(f"[yellow]skipped[/] {error}")
        out.print(f"prepared {outcome.usable}/{len(outcome.items)} references -> {dst}")


@app.command(rich_help_panel=PANEL)
def plan(
    prompt_bank: BankOpt = None,
    model: str | None = option(PlanOptions, "model", "--model"),
    out_path: Annotated[Path | None, typer.Option("--out", help="Storyboard JSON path.")] = None,
) -> None:
    """Plan content with the LLM: storyboard, spoken script, >= 5 caption seeds (JSON)."""
    with friendly_errors():
        s = settings()
        target = out_path or workspace().storyboard
        with client(s) as c, console.status("asking the LLM for a storyboard..."):
            paid = usecases.plan(c, bank_path(prompt_bank), model or s.text_model)
        summary = usecases.write_plan(paid, target)
        cost = "cost n/a" if summary.cost_usd is None else f"${summary.cost_usd:.4f}"
        out.print(f"wrote {target}: {summary.shots} shots, {summary.caption_seeds} caption seeds ({cost})")


@app.command(rich_help_panel=PANEL)
def generate(
    prompt_bank: BankOpt = None,
    model: str | None = option(GenerateOptions, "model", "--model"),
    out_dir: Annotated[Path | None, typer.Option("--out", help="Output folder.")] = None,
    per_scene: int = option(GenerateOptions, "per_scene", "--per-scene", "--per_scene"),
    size: str = option(GenerateOptions, "size", "--size"),
    n: int = option(GenerateOptions, "n", "--n"),
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
    seed: int | None = option(GenerateOptions, "seed", "--seed"),
    quality: str | None = option(GenerateOptions, "quality", "--quality"),
    output_format: str | None = option(GenerateOptions, "output_format", "--format"),
    provider: Annotated[
        list[str] | None, typer.Option(help="Only these Image API providers (slug; repeatable), no fallbacks.")
    ] = None,
    ref: Annotated[
        Path | None, typer.Option("--ref", help="Reference photos sent with each request (e.g. data/cleaned).")
    ] = None,
    regenerate: bool = option(GenerateOptions, "regenerate", "--regenerate/--no-regenerate"),
    limit: Annotated[int | None, typer.Option(help="Generate at most this many (after skipping done ones).")] = None,
    budget: float | None = option(GenerateOptions, "budget_usd", "--budget"),
    estimate_usd: float | None = option(GenerateOptions, "estimate_usd", "--estimate-usd"),
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Show the plan, the route and the price estimate; send nothing paid.")
    ] = False,
) -> None:
    """Generate images through OpenRouter's Image API (or chat, for models only it serves): planned by
    slot, several images per request with --n, resumable, with a manifest and a price estimate first.

    Ctrl-C or SIGTERM stops sending new requests; the ones already sent finish and are saved
    (a second Ctrl-C stops at once). Exit code 2: some images failed; 4: the budget refused images.
    """
    from ai_influencer.options.images import ProviderRouting, image_options
    from ai_influencer.pacing import StopFlag, drain_on_signals

    with friendly_errors():
        s = settings()
        target = out_dir or workspace().synth
        model = model or s.image_model
        routing = ProviderRouting(only=provider, allow_fallbacks=False) if provider else None
        image = image_options(  # a bad value: one line naming the flag
            size=size, n=n, seed=seed, quality=quality, output_format=output_format, provider=routing
        )
        stage = GenerateOptions(
            model=model, per_scene=per_scene, **image.model_dump(), regenerate=regenerate, budget_usd=budget,
            estimate_usd=estimate_usd,
        )  # fmt: skip
        plan = usecases.plan_requests(bank_path(prompt_bank), target, stage, references=ref, limit=limit)
        console.print(f"{plan.summary()} -> {target}")
        if not plan.todo and not dry_run:
            out.print(f"nothing to generate; manifest: {target / 'manifest.json'}")
            return
        ceiling = 1.0 / sleep if sleep > 0 else rate  # no default ceiling: the release before AIMD had none
        stop = StopFlag()
        with client(s) as c:
            route = usecases.prepare_route(c, plan, estimate_usd=estimate_usd, check_key=not dry_run)
            for line in usecases.describe_plan(plan, route)[1:]:
                out.print(f"plan: {line}")
            if dry_run:
                out.print("dry run: nothing was sent")
                return
            with drain_on_signals(stop, redeliver=False), _progress("generate", "{task.fields[cost]}") as bar:
                task = bar.add_task("images", total=plan.images_todo, cost="")

                def tick(outcome: object) -> None:
                    if outcome.error and outcome.status != "stopped":  # type: ignore[attr-defined]
                        bar.console.print(f"[yellow]{outcome.status}[/] {outcome.request.key}: {outcome.error}")  # type: ignore[attr-defined]
                    bar.update(task, advance=outcome.request.n)  # type: ignore[attr-defined]

                done = usecases.generate(
                    c, plan, target, rate_per_s=ceiling or None, concurrency=concurrency, budget_usd=budget,
                    estimate_usd=estimate_usd, stop=stop, on_done=tick, route=route,
                )  # fmt: skip
        money = done.money
        unpriced = f" ({money['unpriced_calls']} unpriced, counted at the estimate)" if money["unpriced_calls"] else ""
        short = f", {done.short} short answer(s) (the rest stay owed)" if done.short else ""
        est = done.estimated_paid_usd
        estimated = "" if est is None else f"; by the price lines ${est:.4f}"
        refused, stopped = done.images("budget"), done.images("stopped")
        out.print(
            f"generated {done.images()}, failed {done.images('failed')}, refused by budget {refused}, not sent "
            f"after stop {stopped} (images; {money['paid_calls']} paid requests{short}); spent "
            f"${money['spent_usd']:.4f}{unpriced}{estimated}; {done.pacing.describe()}; "
            f"manifest: {target / 'manifest.json'}"
        )
        if stop.is_set():
            console.print(f"[yellow]stopped:[/] {stop.reason}; every image already paid for is saved")
            raise typer.Exit(code=128 + (stop.signal or 15))
        if done.count("failed"):
            raise typer.Exit(code=EXIT_FAILED)
        if done.count("budget"):
            console.print(
                f"[yellow]budget reached:[/] {done.images('budget')} images not generated within --budget {budget} "
                f"(exit code {EXIT_BUDGET}); raise --budget or run again to continue"
            )
            raise typer.Exit(code=EXIT_BUDGET)


def _persona_threshold(name: str, how: str = "") -> Any:
    """``--minsim`` / ``--minblur``: empty unless given (None), so the persona's calibration can apply; the
    range is the QC thresholds' own check, which names a percent given for a fraction."""
    fallback = f"Default: this persona's calibration{how}, else {default_of(QCOptions, name):g}."
    return option(
        QCOptions, name, f"--{name}", bounds=False, callback=lambda v: v if v is None else _threshold(**{name: v}),
        help=f"{help_of(QCOptions, name)} {fallback}", show_default=False, default=None,
    )  # fmt: skip


def _threshold(**value: float) -> float:
    """Option callback: the QC thresholds' own validation (a percent for minsim gets a hint), as a usage error."""
    from ai_influencer.qc.decision import QCThresholds

    try:
        QCThresholds(**value).validate()
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    return next(iter(value.values()))


qc_app = typer.Typer(pretty_exceptions_show_locals=False)  # ``influencer qc`` runs QC; ``qc calibrate`` (review.py)
app.add_typer(
    qc_app,
    name="qc",
    rich_help_panel=PANEL,
    help="Identity QC: calibrated identity score vs the references (each reference must agree, and a face closer "
    "to another person in the batch is rejected), face sharpness, dedupe keeping the best copy; your review "
    f"overrides win. Thresholds: --minsim/--minblur > this persona's calibration > default. {NONCOMMERCIAL}",
)


@qc_app.callback(invoke_without_command=True)
def qc(
    ctx: typer.Context,
    ref: Annotated[Path | None, typer.Option("--ref", help="References (default data/cleaned).")] = None,
    cand: Annotated[Path | None, typer.Option("--cand", help="Candidates (default data/synth_openrouter).")] = None,
    out_dir: Annotated[Path | None, typer.Option("--out", help="Approved copies (default data/qc_passed).")] = None,
    minsim: float | None = _persona_threshold("minsim", " (`influencer qc calibrate --apply`)"),
    minblur: float | None = _persona_threshold("minblur"),
    max_faces: int = option(QCOptions, "max_faces", "--max-faces", "--max_faces"),
    workers: Annotated[int | None, typer.Option(help="Worker processes (default: all cores).")] = None,
    backend: str | None = option(QCOptions, "backend", "--backend"),
) -> None:
    if ctx.invoked_subcommand is not None:  # `qc [--minsim X] calibrate`: compare against the given values
        ctx.obj = {"minsim": minsim, "minblur": minblur}
        return
    from ai_influencer.review.persona import effective_thresholds

    with friendly_errors():
        ws = workspace()
        chosen = effective_thresholds(ws, {"minsim": minsim, "minblur": minblur})
        out.print(f"thresholds: {chosen.describe()}", highlight=False)
        with _progress("qc", "{task.fields[file]}") as bar:
            task = bar.add_task("images", total=None, file="")
            options = QCOptions(**chosen.values(), max_faces=max_faces, backend=backend)
            job = usecases.QCJob.for_options(
                ref or ws.cleaned, cand or ws.synth, out_dir or ws.qc_passed, options, workers=workers,
                cache_dir=ws.qc_cache, overrides=ws.qc_overrides,
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
        judged = [r for r in result.rows if r.override]
        if judged or ws.qc_overrides.is_file():
            from ai_influencer.review.overrides import OverrideStore, inactive

            overridden = sum(r.override != r.auto_verdict for r in judged)
            idle = inactive(OverrideStore(ws.qc_overrides), [(cand or ws.synth) / r.file for r in result.rows])
            out.print(
                f"review: {overridden} verdict(s) overridden by you, {len(judged) - overridden} confirmed"
                + (f"; {len(idle)} kept for images no longer among the candidates" if idle else ""),
                highlight=False,
            )


@app.command(rich_help_panel=PANEL)
def augment(
    in_dir: Annotated[Path | None, typer.Option("--in", help="Approved images (default data/qc_passed).")] = None,
    out_dir: Annotated[Path | None, typer.Option("--out", help="Output (default data/augment).")] = None,
    captions: Annotated[Path | None, typer.Option("--captions", help="Captions (default data/captions).")] = None,
    meta: Annotated[Path | None, typer.Option("--meta", help="Generation manifest.json for captions.")] = None,
    num_aug: int = option(AugmentOptions, "num_aug", "--num-aug", "--num_aug"),
    seed: int = option(AugmentOptions, "seed", "--seed"),
    size: int = option(AugmentOptions, "size", "--size"),
    kohya_repeats: int = option(AugmentOptions, "kohya_repeats", "--kohya-repeats"),
    vlm: bool = option(AugmentOptions, "vlm_captions", "--vlm-captions"),
    vlm_model: str | None = option(AugmentOptions, "vlm_model", "--vlm-model"),
    prompt_bank: BankOpt = None,
) -> None:
    """Augment approved images (albumentations) and write captions from the generation manifest (or a VLM)."""
    with friendly_errors():
        s, ws = settings(), workspace()
        options = AugmentOptions(
            num_aug=num_aug, seed=seed, size=size, kohya_repeats=kohya_repeats, vlm_captions=vlm,
            vlm_model=vlm_model or s.vision_model,
        )  # fmt: skip
        outcome = usecases.augment(
            in_dir or ws.qc_passed, out_dir or ws.augment, captions or ws.captions, prompt_bank=bank_path(prompt_bank),
            manifest=meta or ws.manifest, options=options, client=lambda: client(s),
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


def _passed(check: Check) -> None:
    """A check's verdict for `run`: a failure stops it in one line, a warning is shown and it goes on."""
    if check.status == "fail":
        raise CliError(f"{check.name}: {check.detail}" + (f" -> {check.fix}" if check.fix else ""))
    if check.status == "warn":
        console.print(f"[yellow]warning:[/] {check.name}: {check.detail}" + (f" -> {check.fix}" if check.fix else ""))


def _check_run_inputs(s: Settings, prompt_bank: Path, skipped: set[str], *, allow_multi_face: bool) -> None:
    """The prompt bank (and whether its persona is still the template's) and, unless prepare is skipped,
    each reference photo, decoded, faces counted: what prepare will use. Checked before Prefect starts;
    the photos take about 0.5 s each."""
    from ai_influencer import diagnostics as d

    for check in d.check_prompt_bank_and_persona(prompt_bank):  # a template persona is a warning
        _passed(check)
    if "prepare" not in skipped:
        _passed(d.check_reference_photos(s, workspace().input_raw, allow_multi_face=allow_multi_face))


def _check_openrouter(s: Settings, source: str, skipped: set[str], options: ImageOptions) -> None:
    """The key (from a block or the environment) against the base URL, then the models this run calls
    and the image options against the endpoint that will serve them: ``GET /key``, ``GET /models`` and
    the Image API's listings, free, no retries, a few seconds at most."""
    from ai_influencer import diagnostics as d

    _passed(d.check_openrouter_key(s, source))
    wanted = {o: m for o, m, stage in (("text", s.text_model, "plan"), ("image", s.image_model, "generate"))
              if stage not in skipped}  # fmt: skip
    _passed(d.check_openrouter_models(s, wanted))
    if "generate" not in skipped:
        _passed(d.check_image_options(s, s.image_model, options))


@app.command(rich_help_panel=PANEL)
def run(
    prompt_bank: BankOpt = None,
    per_scene: int = option(GenerateOptions, "per_scene", "--per-scene", "--per_scene"),
    model: str | None = option(GenerateOptions, "model", "--model"),
    budget: float | None = option(GenerateOptions, "budget_usd", "--budget"),
    n: int = option(GenerateOptions, "n", "--n"),
    seed: int | None = option(GenerateOptions, "seed", "--seed"),
    skip: Annotated[list[str] | None, typer.Option(help=f"Stage to skip ({', '.join(STAGES)}); repeatable.")] = None,
    do_rembg: bool = option(PrepareOptions, "do_rembg", "--do-rembg/--no-rembg", "--do_rembg"),
    allow_multi_face: bool = option(PrepareOptions, "allow_multi_face", "--allow-multi-face"),
    video: bool = option(
        HybridParams,
        "run_video",
        "--video",
        help="Also make a clip per storyboard shot after QC (paid; `influencer video`).",
    ),
    video_budget: float | None = option(
        VideoOptions, "budget_usd", "--video-budget", help="No clip submit beyond this USD spend."
    ),
    review: bool = option(
        HybridParams,
        "review",
        "--review",
        help="After QC, pause until you have reviewed the images on the hub's /review page, then resume the "
        "run (review page or Prefect UI): continue with your verdicts, or stop.",
    ),
) -> None:
    """Run the hybrid Prefect flow in-process (local Prefect with SQLite; no server or Docker needed).

    The inputs are checked first, in seconds: prompt bank, OpenRouter key, base URL and models, each
    reference photo decoded with one face. Each failure is one line saying what to do. The run's log
    is kept in data/logs/. Exit code 4: the budget refused images. Ctrl-C or SIGTERM during generation
    stops new paid requests and saves the ones in flight.
    """
    with friendly_errors():
        s = settings()
        skipped = set(skip or [])
        unknown = skipped - set(STAGES)
        if unknown:
            raise CliError(f"--skip: unknown stage(s) {sorted(unknown)}")
        bank = bank_path(prompt_bank)
        if model:
            s = s.model_copy(update={"image_model": model})
        from ai_influencer.options.images import image_options

        options = image_options(n=n, seed=seed)
        before_flow = None
        if {"plan", "generate"} - skipped:
            from blocks.openrouter import blocks_possible

            if blocks_possible():
                # A key stored with `set-key` wins over the environment, and reading it needs Prefect's
                # server: checked once that has started, still before the flow.
                def before_flow() -> None:
                    from blocks.openrouter import resolve_settings

                    _check_openrouter(*resolve_settings(s), skipped, options)
            else:
                _check_openrouter(s, "env" if s.openrouter_api_key else "none", skipped, options)
        _check_run_inputs(s, bank, skipped, allow_multi_face=allow_multi_face)

        from flows.params import GenerateParams, HybridParams, Paths, PrepareParams, VideoParams

        params = HybridParams(
            paths=Paths(data_root=str(s.data_root), prompt_bank=str(bank), models_root=str(s.models_root)),
            **{f"run_{stage}": stage not in skipped for stage in STAGES},
            review=review,
            prepare=PrepareParams(do_rembg=do_rembg, allow_multi_face=allow_multi_face),
            generate=GenerateParams(
                per_scene=per_scene, model=model or s.image_model, budget_usd=budget, n=n, seed=seed
            ),
            run_video=video,
            video=VideoParams(budget_usd=video_budget),
        )
        result = _run_hybrid(params, before_flow=before_flow)
        out.print_json(data=result.model_dump(mode="json", exclude_unset=True))
        generated = result.generate
        refused = getattr(generated, "stopped_by_budget", None)  # one generate run (rounds: "stopped")
        if refused or getattr(generated, "stopped", None) == "budget":
            console.print(
                f"[yellow]budget reached:[/] {f'{refused} images were ' if refused else 'images were '}not generated "
                f"within --budget {budget} (exit code {EXIT_BUDGET}); raise --budget or run again to continue"
            )
            raise typer.Exit(code=EXIT_BUDGET)


RUN_FAILURE_LOGGER = "ai_influencer.cli.run"


class _NoTraceback(logging.Formatter):
    """Prefect's console lines without tracebacks: those go to the run's log file, and the console
    says where it is. A failed task printed two full tracebacks (137 lines) for one wrong key."""

    def __init__(self, inner: logging.Formatter | None) -> None:
        super().__init__()
        self.inner = inner or logging.Formatter()

    def format(self, record: logging.LogRecord) -> str:
        if record.exc_info or record.exc_text or record.stack_info:
            record = logging.makeLogRecord({**record.__dict__, "exc_info": None, "exc_text": None, "stack_info": None})
        return self.inner.format(record)


@contextmanager
def _run_log(folder: Path) -> Iterator[Path]:
    """Every log line of the run, tracebacks included, in ``<data>/logs/run-<time>.log``.

    Why a file: the embedded Prefect server and its UI are gone when `influencer run` ends, so "see the
    run's logs in the Prefect UI" pointed at nothing. Call after Prefect configured logging (importing
    it does): its console handler on the root logger then keeps one line per record.
    """
    from datetime import datetime

    from prefect import flow  # noqa: F401  (this import sets up Prefect's logging: console on the root logger)
    from prefect.logging.formatters import PrefectFormatter

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"run-{datetime.now().strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(
        PrefectFormatter(
            format="%(asctime)s | %(levelname)-7s | %(name)s - %(message)s",
            flow_run_fmt="%(asctime)s | %(levelname)-7s | Flow run %(flow_run_name)r - %(message)s",
            task_run_fmt="%(asctime)s | %(levelname)-7s | Task run %(task_run_name)r - %(message)s",
        )
    )
    root = logging.getLogger()
    consoles = [
        h for h in root.handlers if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)
    ]
    formatters = {h: h.formatter for h in consoles}
    for h in consoles:
        h.setFormatter(_NoTraceback(h.formatter))
    root.addHandler(handler)
    failures = logging.getLogger(RUN_FAILURE_LOGGER)  # the traceback of a failed run: only into the file
    failures.propagate, failures.level = False, logging.DEBUG
    failures.addHandler(handler)
    project = logging.getLogger("ai_influencer")
    project.removeHandler(CONSOLE_LOG)  # Prefect's root console shows the project's lines during a run
    try:
        yield path
    finally:
        root.removeHandler(handler)
        failures.removeHandler(handler)
        handler.close()
        for h, f in formatters.items():
            h.setFormatter(f)
        project.addHandler(CONSOLE_LOG)


def _prefect_server() -> AbstractContextManager[object]:
    """The Prefect server this run records to: a configured ``PREFECT_API_URL`` as it is, else the workspace's
    kept local server (``interfaces.local_server``: started on first use, reused after), so the run stays
    visible in the hub and the Prefect UI once it ends; with ``prefect_local_server`` off, Prefect's
    temporary server (gone with the run)."""
    from interfaces import local_server

    if local_server.configured_api_url():
        return nullcontext()
    if not settings().prefect_local_server:  # Prefect's temporary server, detached from the terminal
        from prefect.settings import get_current_settings

        from shared_limits.limits import durable_local_leases
        from shared_limits.prefect_compat import start_embedded_server

        # Started under the run's lease settings: the server keeps its leases on disk (it runs no repossessor),
        # where the next run frees those of a killed one; started before them it kept them in its memory.
        with durable_local_leases():
            start_embedded_server(get_current_settings().server.ephemeral.startup_timeout_seconds)
        return nullcontext()
    began = time.monotonic()
    server, started = local_server.ensure(workspace().data_root)
    how = f"started in {time.monotonic() - began:.1f} s" if started else "running"
    console.print(f"Prefect server: {server.ui} ({how}; `influencer server stop` stops it)", highlight=False)
    return local_server.api_url_for_this_process(server.url)


def _run_hybrid(params: object, before_flow: Callable[[], None] | None = None) -> HybridSummary:
    """The hybrid flow on the workspace's local Prefect server (or the configured one), signals handled.

    ``before_flow`` runs once the server is up, before the flow (checks that need Prefect). Expected
    failures end in one line naming the run's log file, which keeps the details and any traceback.
    """

    def terminated(sig: int, _frame: object) -> None:
        # Reached after the generate flow drained and Prefect ended the run: exit through Python (the
        # run log is closed, the run's final state recorded; the kept server stays, a temporary one stops).
        raise SystemExit(128 + sig)

    signal.signal(signal.SIGTERM, terminated)
    from shared_limits.limits import durable_local_leases

    with _run_log(workspace().data_root / "logs") as log_file:
        console.print(f"run log: {log_file}", highlight=False)
        try:
            with _prefect_server(), durable_local_leases():
                from flows.hybrid import hybrid_flow

                if before_flow is not None:
                    before_flow()
                return hybrid_flow(params)
        except (KeyboardInterrupt, SystemExit) as exc:
            code = 130 if isinstance(exc, KeyboardInterrupt) else int(exc.code or 143)
            console.print(
                f"[yellow]stopped:[/] every image already paid for is saved; run again to continue (log: {log_file})"
            )
            raise typer.Exit(code=code) from None
        except (CliError, typer.Exit):
            raise
        except Exception as exc:  # a failed stage: one line here, the details and traceback in the run's log
            logging.getLogger(RUN_FAILURE_LOGGER).error("the run failed", exc_info=exc)
            expected = isinstance(exc, expected_errors())
            raise CliError(
                f"{one_line(exc, first_line_only=True)} ("
                + ("details" if expected else "an unexpected error; its traceback")
                + f": {log_file})"
            ) from None
