"""The ``influencer`` command line (Typer).

Each command is a thin shell over a domain function; flag names keep the
manual's spellings (``--per_scene``, ``--prompt_bank``) next to dashed ones.
Expected failures (bad prompt bank, missing key, OpenRouter refusals) print
one clear line and exit non-zero instead of a traceback.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ai_influencer.settings import MissingApiKeyError, Settings, get_settings

if TYPE_CHECKING:
    from ai_influencer.training.lora_inspect import LoraReport

app = typer.Typer(
    name="influencer",
    help="Persona dataset + SDXL LoRA pipeline: prepare -> plan -> generate -> qc -> augment -> train -> evaluate.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
bank_app = typer.Typer(help="Prompt bank utilities.", no_args_is_help=True)
app.add_typer(bank_app, name="bank")
lora_app = typer.Typer(help="LoRA file utilities.", no_args_is_help=True)
app.add_typer(lora_app, name="lora")
console = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)


class CliError(Exception):
    """An expected failure reported as one line."""


# Prefect's embedded server gets 20 s to start by default; on a busy 2-core machine the first
# `influencer run` on a fresh PREFECT_HOME missed it twice in a row (measured). Set before Prefect starts.
EPHEMERAL_STARTUP_TIMEOUT_S = "180"


@app.callback()
def _startup() -> None:
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", EPHEMERAL_STARTUP_TIMEOUT_S)


def _one_line(exc: BaseException, *, first_line_only: bool = False) -> str:
    """An exception as the line(s) a user needs; HTTP failures name the server and what to do.

    Our own errors are written to be read (a prompt bank lists each problem on its own line) and
    are kept whole unless ``first_line_only``.
    """
    import httpx

    request = getattr(exc, "request", None) if isinstance(exc, httpx.HTTPError) else None
    if request is None and type(exc).__name__ == "PrefectHTTPStatusError":
        request = getattr(exc, "request", None)
    if request is not None:
        where = f"{request.url.scheme}://{request.url.netloc.decode()}"
        status = getattr(getattr(exc, "response", None), "status_code", None)
        what = f"HTTP {status}" if status else (str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        hint = (
            "check the user:password in PREFECT_API_AUTH_STRING"
            if status == 401
            else "is the Prefect server running (`prefect server start`)? check PREFECT_API_URL, or unset it to "
            "use the embedded server"
        )
        return f"Prefect API at {where}: {what}; {hint}"
    if isinstance(exc, TimeoutError) and "ephemeral" in str(exc).lower():
        return (
            f"{str(exc).splitlines()[0]} (raise PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS, or start "
            "`prefect server start` and set PREFECT_API_URL)"
        )
    text = str(exc).strip()
    if not text:
        return type(exc).__name__
    return text.splitlines()[0] if first_line_only else text


@contextmanager
def _friendly_errors() -> Iterator[None]:
    import httpx
    from prefect.exceptions import PrefectHTTPStatusError

    from ai_influencer.openrouter import OpenRouterError
    from ai_influencer.prompt_bank import PromptBankError

    try:
        yield
    except (
        CliError,
        MissingApiKeyError,
        PromptBankError,
        OpenRouterError,
        ValueError,
        FileNotFoundError,
        httpx.HTTPError,
        PrefectHTTPStatusError,
    ) as exc:
        console.print(f"[bold red]error:[/] {_one_line(exc)}", highlight=False, markup=True, soft_wrap=True)
        raise typer.Exit(code=1) from None


def _settings() -> Settings:
    return get_settings()


def _client(settings: Settings):
    """The OpenRouter client with the key from the Prefect block, else the environment (one resolver)."""
    from ai_influencer.openrouter import OpenRouterClient
    from blocks.openrouter import resolve_settings

    return OpenRouterClient.from_settings(resolve_settings(settings)[0])


BankOpt = Annotated[
    Path | None,
    typer.Option("--prompt-bank", "--prompt_bank", help="Prompt bank YAML (default: settings.prompt_bank)."),
]


@app.command()
def models(
    output_modality: Annotated[
        str | None, typer.Option("--output-modality", "-m", help="Only models producing this (text, image).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    refresh: Annotated[bool, typer.Option(help="Bypass the models cache.")] = False,
) -> None:
    """List OpenRouter models (cached), optionally only image generators."""
    with _friendly_errors():
        settings = _settings()
        from ai_influencer.openrouter import OpenRouterClient

        client = OpenRouterClient(**OpenRouterClient._settings_kwargs(settings))  # /models needs no key
        found = client.list_models(output_modality, refresh=refresh)
        if as_json:
            out.print_json(json.dumps([m.model_dump() for m in found]))
            return
        table = Table(
            title=f"{len(found)} OpenRouter models" + (f" with {output_modality} output" if output_modality else "")
        )
        for col in ("id", "input", "output", "price/image", "price/token in"):
            table.add_column(col)
        for m in found:
            table.add_row(
                m.id,
                ",".join(m.input_modalities),
                ",".join(m.output_modalities),
                str(m.pricing.get("image", "-")),
                str(m.pricing.get("prompt", "-")),
            )
        out.print(table)


@bank_app.command("check")
def bank_check(path: Annotated[Path, typer.Argument(help="Prompt bank YAML file.")]) -> None:
    """Validate a prompt bank and show how many prompts it can compose."""
    from ai_influencer.prompt_bank import load_prompt_bank

    with _friendly_errors():
        bank = load_prompt_bank(path)
        combos = len(bank.scenes) * len(bank.lighting) * len(bank.poses) * len(bank.outfits)
        out.print(
            f"{path}: ok — persona {bank.persona.name!r}, {len(bank.scenes)} scenes, {len(bank.lighting)} lighting, "
            f"{len(bank.poses)} poses, {len(bank.outfits)} outfits ({combos} combinations)"
        )


@app.command()
def plan(
    prompt_bank: BankOpt = None,
    model: Annotated[str | None, typer.Option(help="Text model (default: settings.text_model).")] = None,
    out_path: Annotated[Path | None, typer.Option("--out", help="Storyboard JSON path.")] = None,
) -> None:
    """Plan content with the LLM: storyboard, spoken script, >= 5 caption seeds (JSON)."""
    from ai_influencer.dataset.workspace import Workspace
    from ai_influencer.prompt_bank import load_prompt_bank
    from ai_influencer.storyboard import plan_storyboard, write_storyboard

    with _friendly_errors():
        settings = _settings()
        bank = load_prompt_bank(prompt_bank or settings.prompt_bank)
        target = out_path or Workspace.from_settings(settings).storyboard
        with _client(settings) as client, console.status("asking the LLM for a storyboard..."):
            board, result = plan_storyboard(client, bank, model or settings.text_model)
        write_storyboard(board, result, target)
        cost = f"${result.usage.cost:.4f}" if result.usage.cost is not None else "cost n/a"
        out.print(f"wrote {target}: {len(board.shots)} shots, {len(board.caption_seeds)} caption seeds ({cost})")


@app.command()
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
            help="Most requests per second (default: settings.image_rate_per_s; 0: no ceiling). "
            "Lowered automatically on 429s, then slowly raised again.",
        ),
    ] = None,
    concurrency: Annotated[int, typer.Option(min=1, max=64, help="Requests in flight.")] = 4,
    seed: Annotated[int, typer.Option(help="Prompt composition seed.")] = 0,
    ref: Annotated[
        Path | None,
        typer.Option("--ref", help="Reference photos sent with each request (e.g. data/cleaned)."),
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
    from ai_influencer.costs import CostLedger
    from ai_influencer.dataset.workspace import Workspace
    from ai_influencer.generation import already_done, build_requests, generate_batch, iter_reference_images, preflight
    from ai_influencer.pacing import AdaptiveRate, StopFlag, drain_on_signals
    from ai_influencer.prompt_bank import compose_prompts, load_prompt_bank

    with _friendly_errors():
        settings = _settings()
        bank = load_prompt_bank(prompt_bank or settings.prompt_bank)
        target = out_dir or Workspace.from_settings(settings).synth
        references = list(iter_reference_images(ref)) if ref else []
        if ref and not references:
            raise CliError(f"--ref {ref}: no images found")
        model = model or settings.image_model
        requests = build_requests(compose_prompts(bank, per_scene, seed), model, size, references)
        pending = [r for r in requests if already_done(r, target) is None]
        skipped = len(requests) - len(pending)
        todo = pending if limit is None else pending[:limit]
        console.print(f"{len(requests)} requested, {skipped} already done, {len(todo)} to generate -> {target}")
        if not todo:
            out.print(f"nothing to generate; manifest: {target / 'manifest.json'}")
            return
        ceiling = 1.0 / sleep if sleep > 0 else (settings.image_rate_per_s if rate is None else rate)
        stop = StopFlag()
        pacer = AdaptiveRate(ceiling or None, stop=stop)
        with _client(settings) as client:
            estimate = preflight(client, model, estimate_usd)
            if budget is not None and estimate is None:
                raise CliError(f"--budget needs a price: {model} lists none; pass --estimate-usd")
            ledger = CostLedger(budget_usd=budget, estimate_usd=estimate)
            with (
                drain_on_signals(stop, redeliver=False),
                Progress(
                    TextColumn("[bold]generate"),
                    BarColumn(),
                    MofNCompleteColumn(),
                    TextColumn("{task.fields[cost]}"),
                    TimeElapsedColumn(),
                    console=console,
                ) as progress,
            ):
                task = progress.add_task("images", total=len(todo), cost="$0.0000")

                def tick(outcome) -> None:
                    if outcome.error and outcome.status != "stopped":
                        progress.console.print(f"[yellow]{outcome.status}[/] {outcome.request.key}: {outcome.error}")
                    progress.update(task, advance=1, cost=f"${ledger.spent_usd:.4f}")

                outcomes = generate_batch(
                    client,
                    todo,
                    target,
                    references=references,
                    concurrency=concurrency,
                    pacer=pacer,
                    ledger=ledger,
                    stop=stop,
                    on_done=tick,
                )
        counts = {k: sum(o.status == k for o in outcomes) for k in ("generated", "failed", "budget", "stopped")}
        money = ledger.summary()
        unpriced = f" ({money['unpriced_calls']} unpriced, counted at the estimate)" if money["unpriced_calls"] else ""
        out.print(
            f"generated {counts['generated']}, failed {counts['failed']}, refused by budget {counts['budget']}, "
            f"not sent after stop {counts['stopped']}; spent ${money['spent_usd']:.4f}{unpriced}; "
            f"{pacer.finish().describe()}; manifest: {target / 'manifest.json'}"
        )
        if stop.is_set():
            console.print(f"[yellow]stopped:[/] {stop.reason}; every image already paid for is saved")
            raise typer.Exit(code=128 + (stop.signal or 15))
        if counts["failed"]:
            raise typer.Exit(code=2)


NONCOMMERCIAL = (
    "Face backends: dlib (the default; public-domain models, offline) or, only when chosen by name, insightface "
    "buffalo_l, whose pretrained models are licensed for NON-COMMERCIAL research only."
)
BackendOpt = Annotated[
    str | None,
    typer.Option(
        "--backend",
        help="dlib (default) | insightface (buffalo_l: NON-COMMERCIAL licence, never chosen for you); auto = dlib.",
    ),
]


def _check_minsim(value: float) -> float:
    """The identity score is a fraction; 34 (a percent) would silently reject everything."""
    if not 0.0 <= value <= 1.0:
        hint = f"; did you mean {value / 100:g}?" if 1.0 < value <= 100.0 else ""
        raise typer.BadParameter(f"{value:g} is not between 0 and 1 (the identity score is a fraction{hint})")
    return value


def _check_minblur(value: float) -> float:
    if not value >= 0.0:
        raise typer.BadParameter(f"{value:g} is below 0 (face sharpness: 80 = the manual's sharp/blurred line)")
    return value


def _engine(settings: Settings, backend: str | None):
    from ai_influencer.vision.faces import create_face_engine

    return create_face_engine(
        backend or settings.face_backend, insightface_root=settings.insightface_root, providers=settings.onnx_providers
    )


@app.command(help=f"Prepare reference photos: EXIF fix, background removal, face-centred crop. {NONCOMMERCIAL}")
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
    from ai_influencer.dataset.workspace import Workspace
    from ai_influencer.vision.background import BackgroundRemover
    from ai_influencer.vision.prepare import prepare_references

    with _friendly_errors():
        settings = _settings()
        ws = Workspace.from_settings(settings)
        src, dst = in_dir or ws.input_raw, out_dir or ws.cleaned
        remover = (
            BackgroundRemover(settings.rembg_model, settings.rembg_home, settings.onnx_providers) if do_rembg else None
        )
        engine = _engine(settings, backend) if do_facecrop else None
        with console.status(f"preparing {src} ..."):
            items = prepare_references(
                src, dst, engine=engine, remover=remover, do_facecrop=do_facecrop, out_size=size, overwrite=overwrite
            )
        for item in items:
            if item.status == "error":
                console.print(f"[yellow]skipped[/] {item.source}: {item.reason}")
        ok = sum(i.status in ("ok", "skipped") for i in items)
        out.print(f"prepared {ok}/{len(items)} references -> {dst}")
        if ok < 2:
            raise CliError(f"at least 2 usable reference photos are needed in {src}, found {ok}")


@app.command(
    help="Identity QC: calibrated identity score vs the references (each reference must agree, and a face closer "
    f"to another person in the batch is rejected), face sharpness, dedupe keeping the best copy. {NONCOMMERCIAL}"
)
def qc(
    ref: Annotated[Path | None, typer.Option("--ref", help="References (default data/cleaned).")] = None,
    cand: Annotated[Path | None, typer.Option("--cand", help="Candidates (default data/synth_openrouter).")] = None,
    out_dir: Annotated[Path | None, typer.Option("--out", help="Approved copies (default data/qc_passed).")] = None,
    minsim: Annotated[
        float,
        typer.Option(
            callback=_check_minsim,
            help="Minimum identity score, 0..1; 0.34 = same person on either backend (docs/identity-calibration.md).",
        ),
    ] = 0.34,
    minblur: Annotated[
        float,
        typer.Option(
            callback=_check_minblur,
            help="Minimum face sharpness, >= 0; 80 = the sharp/blurred line at any resolution.",
        ),
    ] = 80.0,
    max_faces: Annotated[int, typer.Option("--max-faces", "--max_faces", help="Reject images with more faces.")] = 1,
    workers: Annotated[int | None, typer.Option(help="Worker processes (default: all cores).")] = None,
    backend: BackendOpt = None,
) -> None:
    from ai_influencer.dataset.workspace import Workspace
    from ai_influencer.vision.qc import EngineSpec, run_qc

    with _friendly_errors():
        settings = _settings()
        ws = Workspace.from_settings(settings)
        spec = EngineSpec(
            backend or settings.face_backend, str(settings.insightface_root), tuple(settings.onnx_providers)
        )
        with Progress(
            TextColumn("[bold]qc"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[file]}"),
            TimeElapsedColumn(),
            console=console,
        ) as progress:
            bar = progress.add_task("images", total=None, file="")

            def tick(done: int, total: int, name: str) -> None:
                progress.update(bar, completed=done, total=total, file=name)

            result = run_qc(
                ref or ws.cleaned,
                cand or ws.synth,
                out_dir or ws.qc_passed,
                spec=spec,
                minsim=minsim,
                minblur=minblur,
                max_faces=max_faces,
                workers=workers,
                on_progress=tick,
            )
        counts = result.counts
        out.print(
            f"accepted {counts['accepted']}, rejected {counts['rejected']}, errors {counts['error']} "
            f"(references: {result.references_used}); report {result.report}; contact sheet {result.contact_sheet}"
        )


@app.command()
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
    from ai_influencer.dataset.augment import augment_and_caption
    from ai_influencer.dataset.workspace import Workspace
    from ai_influencer.prompt_bank import load_prompt_bank

    with _friendly_errors():
        settings = _settings()
        ws = Workspace.from_settings(settings)
        bank = load_prompt_bank(prompt_bank or settings.prompt_bank)
        default_meta = ws.synth / "manifest.json"
        captioner = None
        if vlm:
            from ai_influencer.dataset.vlm_captions import VlmCaptioner

            captioner = VlmCaptioner.for_bank(
                _client(settings), vlm_model or settings.vision_model, bank, captions or ws.captions
            )
        result = augment_and_caption(
            in_dir or ws.qc_passed,
            out_dir or ws.augment,
            captions or ws.captions,
            manifest=meta or (default_meta if default_meta.is_file() else None),
            num_aug=num_aug,
            seed=seed,
            size=size,
            bank=bank,
            kohya_repeats=kohya_repeats,
            caption_for=captioner,
        )
        for err in result.errors:
            console.print(f"[yellow]skipped[/] {err}")
        if captioner is not None:
            st = captioner.stats
            out.print(f"VLM captions: {st.paid} paid (${st.cost_usd:.4f}), {st.cached} cached, {st.fallback} fell back")
            for err in st.errors:
                console.print(f"[yellow]caption fallback[/] {err}")
        extra = f"; kohya layout {result.kohya_dir}" if result.kohya_dir else ""
        out.print(f"wrote {len(result.images)} images and {len(result.captions)} captions{extra}")


def _check_run_inputs(settings: Settings, prompt_bank: Path, skipped: set[str]) -> None:
    """What `run` needs, checked in seconds before Prefect starts (it used to take ~50 s to say
    that data/input_raw was empty)."""
    from ai_influencer.dataset.workspace import Workspace
    from ai_influencer.prompt_bank import load_prompt_bank
    from ai_influencer.vision.image_io import list_images

    ws = Workspace.from_settings(settings)
    load_prompt_bank(prompt_bank)
    if "prepare" not in skipped:
        raw = ws.input_raw
        found = list_images(raw) if raw.is_dir() else []
        if len(found) < 2:
            raise CliError(
                f"put at least 2 photos of the persona (JPEG/PNG/WEBP, one face each) in {raw}/ "
                f"(found {len(found)}); then run again"
            )
    paid = {"plan", "generate"} - skipped
    if paid and settings.openrouter_api_key is None:
        from blocks.openrouter import blocks_possible

        if not blocks_possible():
            raise CliError(
                "no OpenRouter key: set OPENROUTER_API_KEY (environment or .env) or store it with `influencer set-key`"
            )


@app.command()
def run(
    prompt_bank: BankOpt = None,
    per_scene: Annotated[int, typer.Option("--per-scene", "--per_scene", min=1)] = 12,
    model: Annotated[str | None, typer.Option(help="Image model (default: settings.image_model).")] = None,
    budget: Annotated[float | None, typer.Option(help="Stop new paid image requests beyond this USD spend.")] = None,
    skip: Annotated[
        list[str] | None,
        typer.Option(help="Stage to skip (prepare, plan, generate, qc, augment, train, evaluate); repeatable."),
    ] = None,
    do_rembg: Annotated[bool, typer.Option("--do-rembg/--no-rembg", "--do_rembg")] = False,
) -> None:
    """Run the hybrid Prefect flow in-process (local Prefect with SQLite; no server or Docker needed).

    Ctrl-C or SIGTERM during generation stops new paid requests and saves the ones in flight.
    """
    with _friendly_errors():
        settings = _settings()
        skipped = set(skip or [])
        unknown = skipped - {"prepare", "plan", "generate", "qc", "augment", "train", "evaluate"}
        if unknown:
            raise CliError(f"--skip: unknown stage(s) {sorted(unknown)}")
        bank = Path(prompt_bank or settings.prompt_bank)
        _check_run_inputs(settings, bank, skipped)

        from flows.params import GenerateParams, HybridParams, Paths, PrepareParams
        from tasks.limits import durable_local_leases

        params = HybridParams(
            paths=Paths(
                data_root=str(settings.data_root), prompt_bank=str(bank), models_root=str(settings.models_root)
            ),
            run_prepare="prepare" not in skipped,
            run_plan="plan" not in skipped,
            run_generate="generate" not in skipped,
            run_qc="qc" not in skipped,
            run_augment="augment" not in skipped,
            run_train="train" not in skipped,
            run_evaluate="evaluate" not in skipped,
            prepare=PrepareParams(do_rembg=do_rembg),
            generate=GenerateParams(per_scene=per_scene, model=model or settings.image_model, budget_usd=budget),
        )
        import signal

        def terminated(sig: int, _frame: object) -> None:
            # Reached after the generate flow drained and Prefect ended the run: exit through Python,
            # so atexit stops the embedded server instead of leaving it behind.
            raise SystemExit(128 + sig)

        signal.signal(signal.SIGTERM, terminated)
        try:
            with durable_local_leases():
                from flows.hybrid import hybrid_flow
                from tasks.prefect_compat import start_embedded_server

                start_embedded_server(int(os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"]))
                result = hybrid_flow(params)
        except (KeyboardInterrupt, SystemExit) as exc:
            code = 130 if isinstance(exc, KeyboardInterrupt) else int(exc.code or 143)
            console.print("[yellow]stopped:[/] every image already paid for is saved; run again to continue")
            raise typer.Exit(code=code) from None
        except (CliError, typer.Exit):
            raise
        except Exception as exc:  # a failed stage: one line here, the details are in the Prefect run's logs
            said = _one_line(exc, first_line_only=True)
            raise CliError(f"{said} (details: the run's logs in the Prefect UI or above)") from None
        out.print_json(data=result)


@app.command()
def train(
    dataset: Annotated[Path | None, typer.Option(help="Images + .txt captions (default data/augment/kohya).")] = None,
    base: Annotated[Path | None, typer.Option(help="SDXL .safetensors or diffusers folder.")] = None,
    out_dir: Annotated[Path | None, typer.Option("--out", help="Output folder (default models/lora).")] = None,
    dim: Annotated[int, typer.Option("--dim", "--network_dim", min=1, help="LoRA rank.")] = 32,
    alpha: Annotated[float, typer.Option("--alpha", "--network_alpha", help="LoRA alpha (scale alpha/dim).")] = 16.0,
    resolution: Annotated[int, typer.Option(min=16)] = 1024,
    steps: Annotated[int | None, typer.Option("--steps", "--max_train_steps", min=1)] = None,
    epochs: Annotated[int, typer.Option(min=1)] = 10,
    lr: Annotated[float, typer.Option("--lr", "--unet_lr")] = 1e-4,
    batch: Annotated[int, typer.Option("--batch", "--train_batch_size", min=1)] = 1,
    precision: Annotated[str, typer.Option("--precision", "--mixed_precision", help="no | fp16 | bf16")] = "bf16",
    train_te: Annotated[bool, typer.Option("--train-text-encoder/--unet-only")] = False,
    optimizer: Annotated[str, typer.Option(help="adamw | adamw8bit (needs bitsandbytes)")] = "adamw",
    checkpoint_every: Annotated[int, typer.Option(min=1)] = 250,
    keep_checkpoints: Annotated[int, typer.Option(min=1, help="Keep the newest N checkpoints of the run.")] = 5,
    sample_every: Annotated[int | None, typer.Option(min=1)] = None,
    sample_prompt: Annotated[list[str] | None, typer.Option(help="Prompt for the samples; repeatable.")] = None,
    resume: Annotated[bool, typer.Option("--resume/--restart")] = True,
    kohya: Annotated[Path | None, typer.Option(help="kohya sd-scripts checkout: train with it instead.")] = None,
    seed: int = 42,
) -> None:
    """Train the SDXL LoRA (built-in diffusers+peft trainer, or kohya sd-scripts with --kohya)."""
    from ai_influencer.dataset.workspace import Workspace
    from ai_influencer.training.config import TrainConfig

    with _friendly_errors():
        settings = _settings()
        ws = Workspace.from_settings(settings)
        default_ds = ws.augment / "kohya"
        try:
            cfg = TrainConfig(
                base_model=base or ws.base_model,
                dataset=dataset or (default_ds if default_ds.is_dir() else ws.augment),
                captions_dir=ws.captions,
                output_dir=out_dir or ws.lora_dir,
                rank=dim,
                alpha=alpha,
                resolution=resolution,
                max_train_steps=steps,
                epochs=epochs,
                unet_lr=lr,
                batch_size=batch,
                mixed_precision=precision,
                train_text_encoder=train_te,
                optimizer=optimizer,
                checkpoint_every=checkpoint_every,
                keep_checkpoints=keep_checkpoints,
                sample_every=sample_every,
                sample_prompts=sample_prompt or [],
                resume=resume,
                seed=seed,
            )
        except ValueError as exc:
            raise CliError(str(exc).replace("\n", " ")) from None
        kohya = kohya or settings.kohya_path
        if kohya:
            from ai_influencer.training.kohya_backend import train_with_kohya

            out.print(f"LoRA written: {train_with_kohya(cfg, kohya, on_line=out.print)}")
            return
        from ai_influencer.training.trainer import train_lora

        result = train_lora(cfg)
        for problem in result.problems:
            console.print(f"[yellow]skipped[/] {problem}")
        last = f"{result.losses[-1]:.4f}" if result.losses else "n/a"
        out.print(
            f"LoRA written: {result.output} ({result.steps} steps, resumed at {result.resumed_from}, "
            f"last loss {last}, {len(result.checkpoints)} checkpoints, {result.seconds:.0f} s)"
        )
        out.print(f"run folder: {result.run_dir} (config.json; curves: tensorboard --logdir {result.run_dir})")


@lora_app.command("inspect")
def lora_inspect(
    file: Annotated[Path, typer.Argument(help="LoRA .safetensors (ours, kohya, diffusers/PEFT, ...).")],
    base: Annotated[
        Path | None, typer.Option(help="Check against this diffusers SDXL folder's configs instead of SDXL base.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the full report (every module) as JSON.")] = False,
) -> None:
    """Keys, modules per block, rank/alpha, metadata, and whether every key lands on an SDXL module.

    Exit code 0: every key maps (the file loads fully in ComfyUI, A1111 and diffusers); 2: keys that
    loaders drop or misplace; 1: the file cannot be read.
    """
    from ai_influencer.training.lora_inspect import base_reference, inspect_lora

    with _friendly_errors():
        report = inspect_lora(file, base_reference(base) if base else None)
    if as_json:
        out.print_json(data=report.as_dict())
    else:
        _print_lora_report(report)
    if not report.ok:
        raise typer.Exit(code=2)


def _print_lora_report(report: LoraReport) -> None:
    modules = report.modules
    out.print(f"{report.path}: {report.format}, {report.keys} keys, {len(modules)} modules", highlight=False)
    out.print("modules per block: " + ", ".join(f"{b} {n}" for b, n in report.per_block().items()), highlight=False)
    table = Table("rank", "alpha", "scale", "modules")
    for rank, alpha, n in report.rank_alpha():
        scale = "1.0 (no alpha)" if alpha is None else f"{alpha / rank:.4g}" if rank else "?"
        table.add_row(str(rank), "missing" if alpha is None else f"{alpha:g}", scale, str(n))
    out.print(table)
    groups = report.rank_alpha()
    if len(groups) > 1:  # mixed: name every module outside the most common (rank, alpha)
        common = groups[0][:2]
        out.print(f"modules with another rank/alpha than {common[0]}/{common[1]}:")
        for m in sorted((m for m in modules if (m.rank, m.alpha) != common), key=lambda m: m.name):
            out.print(f"  {m.written}: rank {m.rank}, alpha {m.alpha}", highlight=False)
    meta = ", ".join(f"{k}={v[:60]}" for k, v in report.metadata.items())
    out.print(f"metadata ({report.metadata_keys} keys): {meta or 'none'}", highlight=False)
    if report.format.startswith("diffusers"):
        out.print("note: diffusers loads this layout; ComfyUI and A1111 expect kohya names (lora_unet_...)")
    if report.ok:
        out.print("SDXL mapping: OK, every key lands on an SDXL module")
        if report.uncovered:
            out.print(f"  (no weights for {len(report.uncovered)} transformer blocks: {', '.join(report.uncovered)})")
        return
    out.print("SDXL mapping: PROBLEMS", style="bold red")
    dropped = report.dropped
    if dropped:
        keys = sum(m.keys for m in dropped)
        names = ", ".join(m.written for m in dropped[:6]) + (", ..." if len(dropped) > 6 else "")
        out.print(
            f"  dropped: {len(dropped)} modules ({keys} keys) match no SDXL module; loaders skip them "
            f"(ComfyUI: 'lora key not loaded'): {names}",
            highlight=False,
        )
    for line in report.shifted:
        out.print(f"  misplaced: {line}", highlight=False)
    for m in report.mismatched:
        out.print(f"  shape mismatch: {m.written}: {m.problem}", highlight=False)
    if report.unrecognised:
        out.print(f"  unrecognised keys: {len(report.unrecognised)}, e.g. {report.unrecognised[0]}", highlight=False)


@app.command()
def sample(
    prompt: Annotated[list[str], typer.Option(help="Prompt; repeatable.")],
    lora: Annotated[
        Path | None, typer.Option(help="LoRA file (default models/lora/influencer_lora.safetensors).")
    ] = None,
    no_lora: Annotated[bool, typer.Option("--no-lora", help="Base model only, for comparison.")] = False,
    strength: Annotated[float, typer.Option(min=0, max=2)] = 1.0,
    base: Annotated[Path | None, typer.Option(help="SDXL .safetensors or diffusers folder.")] = None,
    out_dir: Annotated[Path | None, typer.Option("--out", help="Default data/samples.")] = None,
    steps: Annotated[int, typer.Option(min=1)] = 30,
    guidance: float = 6.0,
    size: Annotated[int, typer.Option(min=16)] = 1024,
    seed: int = 0,
) -> None:
    """Generate images locally with the user's SDXL and the trained LoRA (fully offline)."""
    from ai_influencer.dataset.workspace import Workspace

    with _friendly_errors():
        from ai_influencer.training.inference import LocalGenerator, LocalGenParams, save_images

        ws = Workspace.from_settings(_settings())
        gen = LocalGenerator(base or ws.base_model)
        gen.use_lora(None if no_lora else (lora or ws.lora_file), strength)
        params = LocalGenParams(steps=steps, guidance=guidance, width=size, height=size, strength=strength, seed=seed)
        paths = save_images(gen.generate(prompt, params), out_dir or ws.data_root / "samples", "sample")
        for p in paths:
            out.print(str(p))


@app.command()
def evaluate(
    lora: Annotated[list[Path] | None, typer.Option(help="LoRA file(s); default: final + its checkpoints.")] = None,
    samples: Annotated[int, typer.Option("--samples", "-k", min=1, help="Images per LoRA.")] = 8,
    steps: Annotated[int, typer.Option(min=1)] = 30,
    size: Annotated[int, typer.Option(min=16)] = 1024,
    strength: Annotated[float, typer.Option(min=0, max=2)] = 1.0,
    base: Annotated[Path | None, typer.Option(help="SDXL .safetensors or diffusers folder.")] = None,
    prompt_bank: BankOpt = None,
) -> None:
    """Identity evaluation: K bank prompts per LoRA, face score vs the references, best checkpoint."""
    from ai_influencer.dataset.workspace import Workspace

    with _friendly_errors():
        settings = _settings()
        ws = Workspace.from_settings(settings)
        from ai_influencer.prompt_bank import load_prompt_bank
        from ai_influencer.training.evaluate import default_candidates, evaluate_loras
        from ai_influencer.training.inference import LocalGenParams

        choice = evaluate_loras(
            lora or default_candidates(ws.lora_dir),
            base=base or ws.base_model,
            config_dir=None,
            bank=load_prompt_bank(prompt_bank or settings.prompt_bank),
            refs_dir=ws.cleaned,
            out_dir=ws.lora_dir / "evaluation",
            engine=_engine(settings, None),
            k=samples,
            params=LocalGenParams(steps=steps, width=size, height=size, strength=strength),
        )
        from ai_influencer.analytics.history import IdentityHistory, dataset_version_of, record_choice

        bank = load_prompt_bank(prompt_bank or settings.prompt_bank)
        record_choice(
            IdentityHistory(ws.lora_dir / "identity_history.sqlite"),
            choice,
            persona=bank.persona.name,
            dataset_version=dataset_version_of(ws.augment / "kohya"),
            params={"samples": samples, "steps": steps, "size": size, "strength": strength},
        )
        table = Table("LoRA", "median", "p10", "faces", "best")
        for row in choice.rows():
            fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
            table.add_row(
                row["lora"], fmt(row["median"]), fmt(row["p10"]), f"{row['face_rate']:.0%}", "*" if row["best"] else ""
            )
        out.print(table)


@app.command()
def doctor(
    fix: Annotated[
        bool, typer.Option("--fix/--check", help="Move damaged images aside (default) or only list them.")
    ] = True,
) -> None:
    """Check the workspace: images that do not decode are moved to .quarantine/ so the next run redoes them."""
    from ai_influencer.dataset.integrity import find_damaged, quarantine_damaged
    from ai_influencer.dataset.workspace import Workspace

    with _friendly_errors():
        ws = Workspace.from_settings(_settings())
        folders = [ws.cleaned, ws.synth, ws.qc_passed, ws.augment]
        damaged = quarantine_damaged(folders) if fix else find_damaged(folders)
        for item in damaged:
            where = f" -> {item.moved_to}" if item.moved_to else ""
            console.print(f"[yellow]damaged[/] {item.path}: {item.reason}{where}")
        verdict = "moved aside; re-run the stage to redo them" if fix else "run `influencer doctor` to move them aside"
        out.print(f"images: {len(damaged)} damaged" + (f" ({verdict})" if damaged else ", all decode"))
        if damaged and not fix:
            raise typer.Exit(code=1)


@app.command()
def hub(
    host: Annotated[str | None, typer.Option(help="Bind address (default 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default 8000).")] = None,
) -> None:
    """Start the Control Hub (FastAPI + pages) with uvicorn."""
    import secrets

    import uvicorn
    from pydantic import SecretStr

    with _friendly_errors():
        settings = _settings()
        if settings.hub_token is None:
            # Every POST needs a token; without a configured one, make one for this start and show it once.
            settings = settings.model_copy(update={"hub_token": SecretStr(secrets.token_urlsafe(18))})
            out.print(
                f"hub token for this run (set INFLUENCER_HUB_TOKEN to fix one): {settings.hub_token.get_secret_value()}"
            )
        from ai_influencer.hub.app import create_app

        h, p = host or settings.hub_host, port or settings.hub_port
        out.print(f"Control Hub on http://{h}:{p}/  (API docs: /docs)")
        uvicorn.run(create_app(settings), host=h, port=p, log_level="info")


@app.command()
def gui() -> None:
    """Open the desktop GUI (Tk): folders, key, models, QC thresholds, a button per stage, live logs."""
    with _friendly_errors():
        try:
            from ai_influencer.desktop.app import main as gui_main
        except ImportError as exc:  # python built without Tk
            raise CliError(f"Tk is not available in this Python ({exc}); install python3-tk") from None
        gui_main(_settings())


report_app = typer.Typer(help="Analytics: cost per accepted image, drift per prompt value.", no_args_is_help=True)
app.add_typer(report_app, name="report")


def _joined() -> list:
    from ai_influencer.analytics.report import join
    from ai_influencer.dataset.workspace import Workspace

    ws = Workspace.from_settings(_settings())
    items, problems = join(ws.synth, ws.qc_passed / "qc_report.csv")
    for problem in problems:
        console.print(f"[yellow]skipped[/] {problem}")
    return items


def _usd(v: float | None) -> str:
    return "n/a" if v is None else f"${v:.4f}"


@report_app.command("costs")
def report_costs(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Spend, accepted images and cost per accepted image, per run and per model."""
    from ai_influencer.analytics.report import cost_report

    with _friendly_errors():
        report = cost_report(_joined())
        if as_json:
            out.print_json(data={k: [r.as_dict() for r in v] for k, v in report.items()})
            return
        for section in ("by_run", "by_model", "total"):
            table = Table(
                section.replace("_", " "), "images", "checked", "accepted", "spend", "per accepted", "unpriced"
            )
            for r in report[section]:
                table.add_row(
                    r.group, str(r.images), str(r.checked), str(r.accepted), _usd(r.spend_usd),
                    _usd(r.cost_per_accepted_usd), str(r.unpriced),
                )  # fmt: skip
            out.print(table)


@report_app.command("drift")
def report_drift(
    as_json: Annotated[bool, typer.Option("--json")] = False,
    write_bank: Annotated[Path | None, typer.Option(help="Also write a down-weighted prompt bank here.")] = None,
    min_n: Annotated[int, typer.Option(min=1, help="Only values seen this often are down-weighted.")] = 4,
    below: Annotated[float, typer.Option(help="... and accepted less often than this.")] = 0.34,
    prompt_bank: BankOpt = None,
) -> None:
    """QC acceptance and identity score per prompt-bank value (scene, lighting, pose, outfit) and model."""
    from ai_influencer.analytics.report import drift_report, write_downweighted_bank
    from ai_influencer.prompt_bank import load_prompt_bank

    with _friendly_errors():
        rows = drift_report(_joined())
        if as_json:
            out.print_json(data=[r.as_dict() for r in rows])
        else:
            table = Table("category", "value", "n", "accepted", "rate", "median", "p10", "no face", "main reasons")
            fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
            for r in rows:
                reasons = ", ".join(f"{k} {v}" for k, v in sorted(r.reasons.items(), key=lambda kv: -kv[1])[:2])
                table.add_row(
                    r.category, r.value, str(r.n), str(r.accepted), f"{r.acceptance_rate:.0%}", fmt(r.score_median),
                    fmt(r.score_p10), str(r.no_face), reasons,
                )  # fmt: skip
            out.print(table)
        if write_bank:
            bank = load_prompt_bank(prompt_bank or _settings().prompt_bank)
            path, changes = write_downweighted_bank(bank, rows, write_bank, min_n=min_n, below_rate=below)
            out.print(f"wrote {path}: " + ("; ".join(changes) or "no value failed often enough to change"))


@app.command()
def history(
    plot: Annotated[Path | None, typer.Option(help="Draw identity score over versions into this PNG.")] = None,
    persona: Annotated[str | None, typer.Option(help="Only this persona.")] = None,
) -> None:
    """Identity history of every evaluated LoRA and checkpoint (models/lora/identity_history.sqlite)."""
    from ai_influencer.analytics.history import IdentityHistory
    from ai_influencer.dataset.workspace import Workspace

    with _friendly_errors():
        db = Workspace.from_settings(_settings()).lora_dir / "identity_history.sqlite"
        if not db.is_file():
            raise CliError(f"{db} not found: no LoRA has been evaluated yet (influencer evaluate)")
        hist = IdentityHistory(db)
        table = Table("#", "when", "persona", "checkpoint", "dataset", "n", "median", "p10", "faces", "promoted")
        fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
        rows = hist.rows(persona)
        for r in rows:
            table.add_row(
                str(r.id), r.created_at, r.persona, r.checkpoint, r.dataset_version[:8], str(r.n), fmt(r.median),
                fmt(r.p10), f"{(r.face_rate or 0):.0%}", "*" if r.promoted else "",
            )  # fmt: skip
        out.print(table)
        if plot:
            out.print(f"plot: {hist.plot(plot, persona)}")


blocks_app = typer.Typer(help="Prefect blocks (OpenRouter credentials).", no_args_is_help=True)
app.add_typer(blocks_app, name="blocks")
stack_app = typer.Typer(help="Prefect server objects: work pools, limits, blocks.", no_args_is_help=True)
app.add_typer(stack_app, name="stack")


@blocks_app.command("register")
def blocks_register() -> None:
    """Register the OpenRouter Credentials block type on the Prefect server."""
    with _friendly_errors():
        from blocks.openrouter import register_blocks

        register_blocks()
        out.print("registered block type 'OpenRouter Credentials' (slug openrouter-credentials)")


@app.command("set-key")
def set_key(
    block: Annotated[str, typer.Option(help="Block name.")] = "openrouter",
    base_url: Annotated[str | None, typer.Option(help="API root stored with the key.")] = None,
) -> None:
    """Store the OpenRouter key in a Prefect secret block. Reads it from a hidden prompt or stdin, never argv."""
    import getpass

    with _friendly_errors():
        key = getpass.getpass("OpenRouter API key: ") if sys.stdin.isatty() else sys.stdin.readline()
        key = key.strip()
        if not key:
            raise CliError("no key given on stdin/prompt")
        from blocks.openrouter import register_blocks, save_key

        register_blocks()
        save_key(key, name=block, base_url=base_url)
        out.print(f"saved OpenRouter key to block 'openrouter-credentials/{block}' (…{key[-4:]})")


@stack_app.command("init")
def stack_init(
    rate_per_s: Annotated[float | None, typer.Option(help="Image requests per second.")] = None,
    max_inflight: Annotated[int | None, typer.Option(help="Image requests in flight.")] = None,
    docker_pool: Annotated[str, typer.Option(help="Docker work pool name.")] = "gpu-docker",
    process_pool: Annotated[str, typer.Option(help="Process work pool name.")] = "local-process",
) -> None:
    """Create what is missing: work pools, rate/concurrency limits, block types. What exists is kept as is."""
    import subprocess

    with _friendly_errors():
        settings = _settings()
        from prefect.client.orchestration import get_client
        from prefect.exceptions import ObjectNotFound

        from ai_influencer.pacing import rate_limit_capacity
        from blocks.openrouter import register_blocks
        from tasks.limits import ensure_limit

        register_blocks()
        per_s = rate_per_s or settings.image_rate_per_s
        rate = ensure_limit(settings.image_rate_limit_name, rate_limit_capacity(per_s), per_s)
        inflight = ensure_limit(settings.image_inflight_limit_name, max_inflight or settings.image_max_inflight)
        out.print(
            f"limit {settings.image_rate_limit_name}: {rate[0]} ({rate[2]:g}/s); "
            f"{settings.image_inflight_limit_name}: {inflight[0]} ({inflight[1]} in flight)"
        )
        prefect = str(Path(sys.executable).with_name("prefect"))
        for name, kind in ((docker_pool, "docker"), (process_pool, "process")):
            with get_client(sync_client=True) as client:
                try:
                    pool = client.read_work_pool(name)
                except ObjectNotFound:
                    pool = None
            if pool is not None:
                # An operator may have tuned its job template, concurrency or paused it: never reset that.
                note = f" (type differs: expected {kind})" if pool.type != kind else ""
                paused = ", paused" if pool.is_paused else ""
                out.print(f"work pool {name} ({pool.type}{paused}): exists, kept as is{note}")
                continue
            res = subprocess.run(
                [prefect, "work-pool", "create", name, "--type", kind],
                capture_output=True,
                text=True,
                check=False,
            )
            if res.returncode != 0:
                raise CliError(
                    f"creating work pool {name}: {(res.stderr.strip() or res.stdout.strip()).splitlines()[-1]}"
                )
            out.print(f"work pool {name} ({kind}): created")


def compose_command() -> list[str]:
    """``docker compose`` (v2 plugin) or the older ``docker-compose``; the project's compose file."""
    import shutil
    import subprocess

    compose_file = str(Path(__file__).resolve().parents[1] / "docker" / "compose.yaml")
    docker = shutil.which("docker")
    project = ["-p", "ai-influencer", "-f", compose_file]
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True, check=False).returncode == 0:
        return [docker, "compose", *project]
    legacy = shutil.which("docker-compose")
    if legacy:
        return [legacy, *project]
    raise CliError("neither `docker compose` nor `docker-compose` is installed (see README 'Running on a GPU server')")


def _compose(args: list[str]) -> None:
    import subprocess

    cmd = compose_command() + args
    out.print("$ " + " ".join(cmd))
    code = subprocess.run(cmd, check=False).returncode
    if code != 0:
        raise CliError(f"docker compose exited with {code}")


@stack_app.command("up")
def stack_up(
    recreate: Annotated[bool, typer.Option("--recreate", help="Recreate containers (and rebuild the image).")] = False,
    build: Annotated[bool, typer.Option(help="Build the image first.")] = True,
) -> None:
    """Start the Docker stack: Prefect server on PostgreSQL, the gpu-docker worker, the Control Hub."""
    with _friendly_errors():
        args = ["up", "-d"]
        if build:
            args.append("--build")
        if recreate:
            args.append("--force-recreate")
        _compose(args)


@stack_app.command("down")
def stack_down(
    remove_volumes: Annotated[
        bool, typer.Option("--remove-volumes", help="Also delete the data, models and database volumes.")
    ] = False,
) -> None:
    """Stop the Docker stack (volumes are kept unless --remove-volumes)."""
    with _friendly_errors():
        _compose(["down", *(["--volumes"] if remove_volumes else [])])


@app.command()
def trigger(
    deployment: Annotated[str, typer.Argument(help="flow/deployment, e.g. hybrid/hybrid-local")] = "hybrid/hybrid",
    params_json: Annotated[str | None, typer.Option("--params", help="Flow parameters as JSON.")] = None,
    api_url: Annotated[str | None, typer.Option(help="Prefect API URL (default PREFECT_API_URL).")] = None,
    wait: Annotated[bool, typer.Option(help="Wait for the run to finish and exit non-zero if it failed.")] = False,
) -> None:
    """Start a deployment through the Prefect REST API (basic auth from PREFECT_API_AUTH_STRING)."""
    from flows.api import api_client, trigger_deployment, wait_for_run

    with _friendly_errors():
        try:
            parameters = json.loads(params_json) if params_json else {}
        except json.JSONDecodeError as exc:
            raise CliError(f"--params is not valid JSON: {exc}") from None
        try:
            with api_client(api_url) as client:
                run = trigger_deployment(client, deployment, parameters)
                out.print(f"flow run {run['id']} ({run['name']}) created for {deployment}")
                if wait:
                    final = wait_for_run(client, run["id"])
                    out.print(f"flow run {run['name']}: {final['state_type']}")
                    if final["state_type"] != "COMPLETED":
                        raise typer.Exit(code=3)
        except (PermissionError, LookupError) as exc:
            raise CliError(str(exc)) from None


def main() -> None:  # pragma: no cover - console entry for python -m
    app(prog_name="influencer")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
