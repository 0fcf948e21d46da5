"""Looking at things: OpenRouter models, prompt banks, cost and drift reports, identity history."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from ai_influencer import usecases
from interfaces.cli.base import (
    BankOpt,
    CliError,
    app,
    bank_path,
    console,
    fmt,
    friendly_errors,
    out,
    settings,
    workspace,
)

PANEL = "Reports"

bank_app = typer.Typer(help="Prompt bank utilities.", no_args_is_help=True)
app.add_typer(bank_app, name="bank", rich_help_panel=PANEL)
report_app = typer.Typer(help="Analytics: cost per accepted image, drift per prompt value.", no_args_is_help=True)
app.add_typer(report_app, name="report", rich_help_panel=PANEL)


@app.command(rich_help_panel=PANEL)
def models(
    output_modality: Annotated[
        str | None, typer.Option("--output-modality", "-m", help="Only models producing this (text, image).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    refresh: Annotated[bool, typer.Option(help="Bypass the models cache.")] = False,
) -> None:
    """List OpenRouter models (cached), optionally only image generators."""
    with friendly_errors():
        from ai_influencer.openrouter import OpenRouterClient
        from blocks.openrouter import resolve_settings

        # The base URL stored with the key (`set-key --base-url`) wins, as for every other call; /models needs no key.
        client = OpenRouterClient(**OpenRouterClient._settings_kwargs(resolve_settings(settings())[0]))
        found = client.list_models(output_modality, refresh=refresh)
        if as_json:
            out.print_json(json.dumps([m.model_dump() for m in found]))
            return
        table = Table(
            "id", "input", "output", "price/image", "price/token in",
            title=f"{len(found)} OpenRouter models" + (f" with {output_modality} output" if output_modality else ""),
        )  # fmt: skip
        for m in found:
            table.add_row(
                m.id, ",".join(m.input_modalities), ",".join(m.output_modalities), str(m.pricing.get("image", "-")),
                str(m.pricing.get("prompt", "-")),
            )  # fmt: skip
        out.print(table)


@bank_app.command("check")
def bank_check(path: Annotated[Path, typer.Argument(help="Prompt bank YAML file.")]) -> None:
    """Validate a prompt bank and show how many prompts it can compose."""
    from ai_influencer.prompt_bank import load_prompt_bank

    with friendly_errors():
        bank = load_prompt_bank(path)
        combos = len(bank.scenes) * len(bank.lighting) * len(bank.poses) * len(bank.outfits)
        out.print(
            f"{path}: ok — persona {bank.persona.name!r}, {len(bank.scenes)} scenes, {len(bank.lighting)} lighting, "
            f"{len(bank.poses)} poses, {len(bank.outfits)} outfits ({combos} combinations)"
        )


def _report() -> usecases.Report:
    ws = workspace()
    rep = usecases.report(ws.synth, ws.qc_report)
    for problem in rep.problems:
        console.print(f"[yellow]skipped[/] {problem}")
    return rep


def _usd(v: float | None) -> str:
    return "n/a" if v is None else f"${v:.4f}"


@report_app.command("costs")
def report_costs(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Spend (billed) beside the price lines' estimate, accepted images and cost per accepted image, per run
    and per model; then the video clips per model (jobs paid, clips kept, spend, estimate, cost per clip)."""
    from ai_influencer.usecases.video import cost_lines

    with friendly_errors():
        costs = _report().costs
        video = cost_lines(workspace())
        if as_json:
            tables = {k: [r.as_dict() for r in v] for k, v in costs.items()}
            out.print_json(data={**tables, "video": [v.as_dict() for v in video]})
            return
        for section in ("by_run", "by_model", "total"):
            table = Table(
                section.replace("_", " "), "images", "checked", "accepted", "spend", "estimated", "per accepted",
                "unpriced",
            )  # fmt: skip
            for r in costs[section]:
                table.add_row(
                    r.group, str(r.images), str(r.checked), str(r.accepted), _usd(r.spend_usd), _usd(r.estimate_usd),
                    _usd(r.cost_per_accepted_usd), str(r.unpriced),
                )  # fmt: skip
            out.print(table)
        if video:
            table = Table("video model", "jobs", "clips", "identity ok", "spend", "estimated", "per clip", "unpriced")
            for v in video:
                table.add_row(
                    v.model, str(v.jobs), str(v.clips), str(v.identity_passed), _usd(v.spend_usd),
                    _usd(v.estimate_usd), _usd(v.cost_per_clip_usd), str(v.unpriced),
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
    with friendly_errors():
        rows = _report().drift
        if as_json:
            out.print_json(data=[r.as_dict() for r in rows])
        else:
            table = Table("category", "value", "n", "accepted", "rate", "median", "p10", "no face", "main reasons")
            for r in rows:
                reasons = ", ".join(f"{k} {v}" for k, v in sorted(r.reasons.items(), key=lambda kv: -kv[1])[:2])
                table.add_row(
                    r.category, r.value, str(r.n), str(r.accepted), f"{r.acceptance_rate:.0%}", fmt(r.score_median),
                    fmt(r.score_p10), str(r.no_face), reasons,
                )  # fmt: skip
            out.print(table)
        if write_bank:
            path, changes = usecases.downweight(bank_path(prompt_bank), rows, write_bank, min_n=min_n, below_rate=below)
            out.print(f"wrote {path}: " + ("; ".join(changes) or "no value failed often enough to change"))


@app.command(rich_help_panel=PANEL)
def history(
    plot: Annotated[Path | None, typer.Option(help="Draw identity score over versions into this PNG.")] = None,
    persona: Annotated[str | None, typer.Option(help="Only this persona.")] = None,
) -> None:
    """Identity history of every evaluated LoRA and checkpoint (models/lora/identity_history.sqlite)."""
    from ai_influencer.analytics.history import IdentityHistory

    with friendly_errors():
        db = workspace().identity_history
        if not db.is_file():
            raise CliError(f"{db} not found: no LoRA has been evaluated yet (influencer evaluate)")
        hist = IdentityHistory(db)
        table = Table("#", "when", "persona", "checkpoint", "dataset", "n", "median", "p10", "faces", "promoted")
        for r in hist.rows(persona):
            table.add_row(
                str(r.id), r.created_at, r.persona, r.checkpoint, r.dataset_version[:8], str(r.n), fmt(r.median),
                fmt(r.p10), f"{(r.face_rate or 0):.0%}", "*" if r.promoted else "",
            )  # fmt: skip
        out.print(table)
        if plot:
            out.print(f"plot: {hist.plot(plot, persona)}")
