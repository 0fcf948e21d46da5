"""Use case: analytics over a workspace: cost per accepted image and QC drift per prompt value."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ai_influencer.analytics.report import DriftRow, Joined, cost_report, drift_report, join, write_downweighted_bank
from ai_influencer.prompt_bank import load_prompt_bank
from ai_influencer.usecases.results import AnalyticsSummary


@dataclass
class Report:
    costs: dict[str, list[Any]]
    drift: list[Any]
    problems: list[str]

    def summary(self) -> AnalyticsSummary:
        total = self.costs["total"][0] if self.costs["total"] else None
        return AnalyticsSummary(
            spend_usd=total.spend_usd if total else 0.0,
            accepted=total.accepted if total else 0,
            cost_per_accepted_usd=total.cost_per_accepted_usd if total else None,
            worst_values=[f"{r.category}={r.value} ({r.acceptance_rate:.0%} of {r.n})" for r in self.drift[:3]],
            problems=self.problems,
        )


def joined(synth_dir: Path, qc_report: Path) -> tuple[list[Joined], list[str]]:
    """Every generated image with its QC verdict (sidecars joined with qc_report.csv)."""
    return join(synth_dir, qc_report)


def report(synth_dir: Path, qc_report: Path) -> Report:
    items, problems = joined(synth_dir, qc_report)
    return Report(cost_report(items), drift_report(items), problems)


def downweight(
    prompt_bank: Path, drift: list[DriftRow], out: Path, *, min_n: int = 4, below_rate: float = 0.34
) -> tuple[Path, list[str]]:
    """A copy of the prompt bank whose values that keep failing QC (``report(...).drift``) weigh half."""
    return write_downweighted_bank(load_prompt_bank(prompt_bank), drift, out, min_n=min_n, below_rate=below_rate)
