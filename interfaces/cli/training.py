"""Training commands: train, sample, evaluate, and ``lora inspect``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from ai_influencer import usecases
from ai_influencer.options import EvaluateOptions, SampleOptions, TrainOptions
from ai_influencer.training.config import TrainConfig
from interfaces.cli.base import (
    BankOpt,
    app,
    bank_path,
    console,
    fmt,
    friendly_errors,
    option,
    out,
    settings,
    workspace,
)

PANEL = "Training"

if TYPE_CHECKING:
    from ai_influencer.training.lora_inspect import LoraReport

lora_app = typer.Typer(help="LoRA file utilities.", no_args_is_help=True)
app.add_typer(lora_app, name="lora", rich_help_panel=PANEL)


@app.command(rich_help_panel=PANEL)
def train(
    dataset: Annotated[Path | None, typer.Option(help="Images + .txt captions (default data/augment/kohya).")] = None,
    base: Annotated[Path | None, typer.Option(help="SDXL .safetensors or diffusers folder.")] = None,
    out_dir: Annotated[Path | None, typer.Option("--out", help="Output folder (default models/lora).")] = None,
    dim: int = option(TrainOptions, "rank", "--dim", "--network_dim"),
    alpha: float = option(TrainOptions, "alpha", "--alpha", "--network_alpha"),
    resolution: int = option(TrainOptions, "resolution", "--resolution"),
    steps: int | None = option(TrainOptions, "max_train_steps", "--steps", "--max_train_steps"),
    epochs: int = option(TrainOptions, "epochs", "--epochs"),
    lr: float = option(TrainOptions, "unet_lr", "--lr", "--unet_lr"),
    batch: int = option(TrainOptions, "batch_size", "--batch", "--train_batch_size"),
    precision: str = option(TrainOptions, "mixed_precision", "--precision", "--mixed_precision"),
    train_te: bool = option(TrainOptions, "train_text_encoder", "--train-text-encoder/--unet-only"),
    optimizer: str = option(TrainConfig, "optimizer", "--optimizer", help="adamw | adamw8bit (needs bitsandbytes)"),
    checkpoint_every: int = option(TrainOptions, "checkpoint_every", "--checkpoint-every"),
    keep_checkpoints: int = option(TrainOptions, "keep_checkpoints", "--keep-checkpoints"),
    sample_every: int | None = option(TrainConfig, "sample_every", "--sample-every"),
    sample_prompt: Annotated[list[str] | None, typer.Option(help="Prompt for the samples; repeatable.")] = None,
    resume: bool = option(TrainConfig, "resume", "--resume/--restart"),
    kohya: Annotated[Path | None, typer.Option(help="kohya sd-scripts checkout: train with it instead.")] = None,
    seed: int = option(TrainConfig, "seed", "--seed", help="Training seed."),
) -> None:
    """Train the SDXL LoRA (built-in diffusers+peft trainer, or kohya sd-scripts with --kohya)."""
    with friendly_errors():
        cfg = usecases.train_config(
            workspace(), base_model=base, dataset=dataset, output_dir=out_dir, rank=dim, alpha=alpha,
            resolution=resolution, max_train_steps=steps, epochs=epochs, unet_lr=lr, batch_size=batch,
            mixed_precision=precision, train_text_encoder=train_te, optimizer=optimizer,
            checkpoint_every=checkpoint_every, keep_checkpoints=keep_checkpoints, sample_every=sample_every,
            sample_prompts=sample_prompt or [], resume=resume, seed=seed,
        )  # fmt: skip
        result = usecases.train(cfg, kohya_path=kohya or settings().kohya_path, on_line=out.print)
        for problem in result.problems:
            console.print(f"[yellow]skipped[/] {problem}")
        if result.backend == "kohya":
            out.print(f"LoRA written: {result.output}")
            return
        last = "n/a" if result.final_loss is None else f"{result.final_loss:.4f}"
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

    with friendly_errors():
        report = inspect_lora(file, base_reference(base) if base else None)
    if as_json:
        out.print_json(data=report.as_dict())
    else:
        print_lora_report(report)
    if not report.ok:
        raise typer.Exit(code=2)


def print_lora_report(report: LoraReport) -> None:
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


@app.command(rich_help_panel=PANEL)
def sample(
    prompt: Annotated[list[str], typer.Option(help="Prompt; repeatable.")],
    lora: Annotated[
        Path | None, typer.Option(help="LoRA file (default models/lora/influencer_lora.safetensors).")
    ] = None,
    no_lora: Annotated[bool, typer.Option("--no-lora", help="Base model only, for comparison.")] = False,
    strength: float = option(SampleOptions, "strength", "--strength"),
    base: Annotated[Path | None, typer.Option(help="SDXL .safetensors or diffusers folder.")] = None,
    out_dir: Annotated[Path | None, typer.Option("--out", help="Default data/samples.")] = None,
    steps: int = option(SampleOptions, "steps", "--steps"),
    guidance: float = option(SampleOptions, "guidance", "--guidance"),
    size: int = option(SampleOptions, "size", "--size"),
    seed: int = option(SampleOptions, "seed", "--seed"),
) -> None:
    """Generate images locally with the user's SDXL and the trained LoRA (fully offline)."""
    with friendly_errors():
        from ai_influencer.training.inference import LocalGenerator, LocalGenParams, save_images

        ws = workspace()
        gen = LocalGenerator(base or ws.base_model)
        gen.use_lora(None if no_lora else (lora or ws.lora_file), strength)
        options = SampleOptions(steps=steps, guidance=guidance, size=size, strength=strength, seed=seed)
        params = LocalGenParams.from_options(options)
        for p in save_images(gen.generate(prompt, params), out_dir or ws.samples, "sample"):
            out.print(str(p))


@app.command(rich_help_panel=PANEL)
def evaluate(
    lora: Annotated[list[Path] | None, typer.Option(help="LoRA file(s); default: final + its checkpoints.")] = None,
    samples: int = option(EvaluateOptions, "samples", "--samples", "-k"),
    steps: int = option(EvaluateOptions, "steps", "--steps"),
    size: int = option(EvaluateOptions, "size", "--size"),
    strength: float = option(EvaluateOptions, "strength", "--strength"),
    base: Annotated[Path | None, typer.Option(help="SDXL .safetensors or diffusers folder.")] = None,
    prompt_bank: BankOpt = None,
) -> None:
    """Identity evaluation: K bank prompts per LoRA, face score vs the references, best checkpoint."""
    with friendly_errors():
        from ai_influencer.training.evaluate import default_candidates

        ws = workspace()
        options = EvaluateOptions(samples=samples, steps=steps, size=size, strength=strength)
        outcome = usecases.evaluate(
            settings(), lora or default_candidates(ws.lora_dir), base=base or ws.base_model,
            prompt_bank=bank_path(prompt_bank), refs_dir=ws.cleaned, out_dir=ws.evaluation, options=options,
            history_db=ws.identity_history, dataset_dir=ws.kohya_dataset,
            train_params={"samples": samples, "steps": steps, "size": size, "strength": strength},
        )  # fmt: skip
        table = Table("LoRA", "median", "p10", "faces", "best")
        for row in outcome.rows:
            best = "*" if row["best"] else ""
            table.add_row(row["lora"], fmt(row["median"]), fmt(row["p10"]), f"{row['face_rate']:.0%}", best)
        out.print(table)
