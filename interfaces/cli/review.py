"""``influencer qc calibrate [--apply]``: this persona's thresholds learned from the review labels."""

from __future__ import annotations

from typing import Annotated

import typer

from interfaces.cli.base import friendly_errors, out, settings, workspace
from interfaces.cli.stages import qc_app


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


@qc_app.command(
    "calibrate",
    help="Fit minsim and minblur to your review verdicts (ROC over the labels); show precision and recall at the "
    "current and the suggested values (`qc --minsim X calibrate` compares against X); --apply stores them.",
)
def calibrate(
    ctx: typer.Context,
    apply: Annotated[
        bool, typer.Option("--apply", help="Store the suggested thresholds in data/persona.json; QC then uses them.")
    ] = False,
) -> None:
    """The table reads: each threshold's current and suggested value, the labels it was fitted on, and how
    many of them QC would get right at each (precision, recall); ``both`` is QC's rule with both."""
    from rich import box
    from rich.table import Table

    from ai_influencer.review import calibration
    from ai_influencer.vision.faces import resolve_backend

    with friendly_errors():
        ws = workspace()
        cal = calibration.suggest(ws, ctx.obj or None)
        left = ", ".join(f"{n} {why}" for why, n in sorted(cal.left_out.items()))
        out.print(
            f"{cal.labels} usable label(s) from your review" + (f" ({left} left out)" if left else ""), highlight=False
        )
        table = Table(title=f"criterion: {cal.criterion}", title_justify="left", box=box.SIMPLE)
        for col in ("", "current", "suggested", "labels acc/rej", "precision now -> sugg.", "recall now -> sugg."):
            table.add_column(col)
        for f in cal.fits:
            spec = ".3f" if f.name == "minsim" else ".1f"
            after = f.at_suggested
            table.add_row(
                f.name,
                f"{f.current:{spec}}",
                "-" if f.suggested is None else f"{f.suggested:{spec}}" + (" (kept)" if f.rule == "kept" else ""),
                f"{f.positives}/{f.negatives}",
                f"{_pct(f.at_current.precision)} -> {_pct(after.precision if after else None)}",
                f"{_pct(f.at_current.recall)} -> {_pct(after.recall if after else None)}",
            )
        both_now, both_new = cal.both_current, cal.both_suggested
        table.add_row(
            "both",
            "",
            "",
            f"{both_now.tp + both_now.fn}/{both_now.fp + both_now.tn}",
            f"{_pct(both_now.precision)} -> {_pct(both_new.precision)}",
            f"{_pct(both_now.recall)} -> {_pct(both_new.recall)}",
        )
        out.print(table)
        if cal.current is not None:
            out.print(f"current: {cal.current.describe()}", highlight=False)
        for line in cal.missing():
            out.print(f"missing: {line}", highlight=False)
        if apply:
            path = calibration.apply(ws, cal, backend=resolve_backend(settings().face_backend))
            stored = ", ".join(f"{k} {v:g}" for k, v in cal.suggested().items())
            out.print(f"stored in {path}: {stored}; QC uses them unless --minsim/--minblur are given", highlight=False)
        elif all(f.rule == "kept" for f in cal.fits):
            out.print("the current thresholds already fit your labels best; nothing to change", highlight=False)
        elif cal.ready:
            out.print("run `influencer qc calibrate --apply` to use the suggested values", highlight=False)
