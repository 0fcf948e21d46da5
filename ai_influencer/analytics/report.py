"""Cost per accepted image and identity drift per prompt-bank value.

Both join two files the pipeline already writes: the per-image sidecars of the
generation stage (model, prompt-bank values, cost, run id) and QC's
``qc_report.csv`` (verdict and identity score per file). No number here is
estimated: an image without a known cost (a sidecar recovered after a kill)
is counted and flagged, not priced. The estimate the price lines gave before
paying (recorded per image) is shown beside the billed spend, never instead.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ai_influencer.dataset.manifest import ImageRecord, read_sidecars
from ai_influencer.prompt_bank import PromptBank
from ai_influencer.qc.report import QCRow, read_report

CATEGORIES = ("scene", "lighting", "pose", "outfit", "model")


@dataclass
class Joined:
    record: ImageRecord
    qc: QCRow | None

    @property
    def accepted(self) -> bool:
        return self.qc is not None and self.qc.verdict == "accepted"


def join(synth_dir: Path, qc_report: Path) -> tuple[list[Joined], list[str]]:
    """Every generated image with its QC row (None when QC has not seen it)."""
    records, problems = read_sidecars(synth_dir)
    if not qc_report.is_file():
        raise FileNotFoundError(f"{qc_report} not found: run the QC stage first")
    qc = read_report(qc_report)
    return [Joined(r, qc.get(r.file)) for r in records], problems


@dataclass
class CostRow:
    group: str  # run id or model
    images: int
    checked: int
    accepted: int
    spend_usd: float
    unpriced: int  # images whose cost is unknown (recovered sidecars)
    estimate_usd: float | None  # what the price lines said before paying (None: no image had an estimate)
    cost_per_accepted_usd: float | None
    acceptance_rate: float | None

    def as_dict(self) -> dict:
        return asdict(self)


def _cost_rows(items: list[Joined], key: str) -> list[CostRow]:
    groups: dict[str, list[Joined]] = defaultdict(list)
    for j in items:
        groups[str(getattr(j.record, key) or "unknown")].append(j)
    rows = []
    for name, group in sorted(groups.items()):
        spend = sum(j.record.cost_usd or 0.0 for j in group)
        estimates = [j.record.estimate_usd for j in group if j.record.estimate_usd is not None]
        accepted = sum(j.accepted for j in group)
        checked = sum(j.qc is not None for j in group)
        rows.append(
            CostRow(
                group=name,
                images=len(group),
                checked=checked,
                accepted=accepted,
                spend_usd=round(spend, 6),
                unpriced=sum(j.record.cost_usd is None for j in group),
                estimate_usd=round(sum(estimates), 6) if estimates else None,
                cost_per_accepted_usd=round(spend / accepted, 6) if accepted else None,
                acceptance_rate=round(accepted / checked, 4) if checked else None,
            )
        )
    return rows


def cost_report(items: list[Joined]) -> dict[str, list[CostRow]]:
    """Spend, accepted count and cost per accepted image, per run and per model, plus a total row."""
    return {
        "by_run": _cost_rows(items, "run_id"),
        "by_model": _cost_rows(items, "model"),
        "total": _cost_rows([Joined(j.record.model_copy(update={"run_id": "all"}), j.qc) for j in items], "run_id"),
    }


@dataclass
class DriftRow:
    category: str
    value: str
    n: int  # images QC has seen with this value
    accepted: int
    acceptance_rate: float
    score_median: float | None
    score_p10: float | None
    score_mean: float | None
    no_face: int
    reasons: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


def drift_report(items: list[Joined]) -> list[DriftRow]:
    """Per prompt-bank value (and model): acceptance and identity-score distribution, worst first."""
    groups: dict[tuple[str, str], list[Joined]] = defaultdict(list)
    for j in items:
        if j.qc is None:
            continue
        for cat in CATEGORIES:
            value = getattr(j.record, cat)
            if value:
                groups[(cat, str(value))].append(j)
    rows = []
    for (cat, value), group in groups.items():
        scores = sorted(j.qc.score for j in group if j.qc and j.qc.score is not None)
        reasons: dict[str, int] = defaultdict(int)
        for j in group:
            if j.qc and j.qc.verdict != "accepted":
                reasons[(j.qc.reason or j.qc.verdict).split(":")[0]] += 1
        accepted = sum(j.accepted for j in group)
        rows.append(
            DriftRow(
                category=cat,
                value=value,
                n=len(group),
                accepted=accepted,
                acceptance_rate=round(accepted / len(group), 4),
                score_median=round(statistics.median(scores), 4) if scores else None,
                score_p10=round(_quantile(scores, 0.10), 4) if scores else None,
                score_mean=round(statistics.fmean(scores), 4) if scores else None,
                no_face=sum(1 for j in group if j.qc and j.qc.faces == 0),
                reasons=dict(reasons),
            )
        )
    rows.sort(key=lambda r: (r.acceptance_rate, r.score_median or 0.0, r.category, r.value))
    return rows


def _quantile(sorted_values: list[float], q: float) -> float:
    """Linear-interpolated quantile (numpy's default), without numpy for a handful of numbers."""
    if len(sorted_values) == 1:
        return sorted_values[0]
    pos = q * (len(sorted_values) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def downweight_failing(
    bank: PromptBank, drift: list[DriftRow], *, min_n: int = 4, below_rate: float = 0.34, factor: float = 0.5
) -> tuple[PromptBank, list[str]]:
    """A copy of the bank where values that keep failing QC get ``factor`` times their weight.

    Only values seen at least ``min_n`` times with an acceptance rate under ``below_rate``
    are touched, so one unlucky image does not change the next round. Scenes are left
    alone: every scene gets its images by design (per_scene). Returns (bank, changes).
    """
    failing = {
        (r.category, r.value) for r in drift if r.category in ("lighting", "pose", "outfit") and r.n >= min_n
        and r.acceptance_rate < below_rate
    }  # fmt: skip
    changes: list[str] = []
    data = bank.model_dump()
    plural = {"lighting": "lighting", "pose": "poses", "outfit": "outfits"}
    for cat, key in plural.items():
        options = data.get(key)
        if not isinstance(options, list):
            continue
        for opt in options:
            if (cat, opt.get("name")) in failing:
                old = opt.get("weight", 1.0)
                opt["weight"] = round(old * factor, 6)
                changes.append(f"{cat} {opt['name']}: weight {old:g} -> {opt['weight']:g}")
    return type(bank).model_validate(data), changes


def write_downweighted_bank(bank: PromptBank, drift: list[DriftRow], out: Path, **kw: float) -> tuple[Path, list[str]]:
    """Write the down-weighted bank as YAML (for the next generation round); returns (path, changes)."""
    import yaml

    from ai_influencer.io import atomic_write_text

    adjusted, changes = downweight_failing(bank, drift, **kw)  # type: ignore[arg-type]
    text = "# written by ai-influencer: values that kept failing QC have lower weights\n"
    text += "\n".join(f"# {c}" for c in changes) + ("\n" if changes else "")
    text += yaml.safe_dump(adjusted.model_dump(mode="json"), sort_keys=False, allow_unicode=True)
    return atomic_write_text(out, text), changes
