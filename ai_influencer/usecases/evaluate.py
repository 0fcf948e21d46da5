"""Use case: identity evaluation of trained LoRAs, recorded in the identity history."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ai_influencer.analytics.history import IdentityHistory, dataset_version_of, record_choice
from ai_influencer.options.evaluate import EVALUATE_DEFAULTS, EvaluateOptions
from ai_influencer.prompt_bank import load_prompt_bank
from ai_influencer.qc.analysis import EngineSpec
from ai_influencer.settings import Settings
from ai_influencer.training.evaluate import CheckpointChoice, default_candidates, evaluate_loras, ranking, report_dir
from ai_influencer.training.inference import LocalGenParams
from ai_influencer.usecases.results import LoraScore


@dataclass
class EvaluationOutcome:
    choice: CheckpointChoice
    rows: list[dict[str, Any]]  # one per LoRA: median, p10, face rate, best, history_id

    @property
    def best(self) -> Path:
        return self.choice.best

    def contact_sheet(self, out_dir: Path) -> Path:
        return report_dir(out_dir, self.choice.best) / "contact_sheet.png"


def evaluate(
    settings: Settings,
    loras: Sequence[Path],
    *,
    base: Path,
    prompt_bank: Path,
    refs_dir: Path,
    out_dir: Path,
    options: EvaluateOptions = EVALUATE_DEFAULTS,
    history_db: Path | None = None,
    dataset_dir: Path | None = None,
    train_params: dict[str, Any] | None = None,
) -> EvaluationOutcome:
    """The same K (``options.samples``) prompt-bank prompts and seeds for every LoRA, faces scored against
    the references, the best named (``pick_best``); every result goes into the identity history when
    ``history_db``."""
    bank = load_prompt_bank(prompt_bank)
    choice = evaluate_loras(
        list(loras),
        base=base,
        config_dir=None,
        bank=bank,
        refs_dir=refs_dir,
        out_dir=out_dir,
        engine=EngineSpec.from_settings(settings, options.backend).build(),
        k=options.samples,
        params=LocalGenParams.from_options(options),
    )
    rows = choice.rows()
    if history_db is not None:
        ids = record_choice(
            IdentityHistory(history_db),
            choice,
            persona=bank.persona.name,
            dataset_version=dataset_version_of(dataset_dir),
            params=train_params or {},
        )
        for row in rows:
            row["history_id"] = ids[row["lora"]]
    return EvaluationOutcome(choice, rows)


def run_candidates(output: str | Path, run_dir: str | Path | None) -> list[str]:
    """A training run's LoRAs to evaluate: every checkpoint it kept, then its final file."""
    from ai_influencer.training.checkpoints import checkpoint_files

    return [*(str(f) for f in checkpoint_files(Path(run_dir))), str(output)] if run_dir else [str(output)]


def best_among(rows: Sequence[dict[str, Any]], candidates: Sequence[str]) -> LoraScore:
    """The best of ``candidates`` among evaluated ``rows``, by the rule ``pick_best`` uses
    (``training.evaluate.ranking``): retraining picks among the new LoRAs only, not the live one."""
    by_lora = {r["lora"]: r for r in rows}
    return LoraScore.from_row(max((by_lora[c] for c in candidates), key=ranking))


def score_of(rows: Sequence[dict[str, Any]], lora: str) -> LoraScore | None:
    """``lora``'s scores among evaluated ``rows``; None when it was not evaluated."""
    return next((LoraScore.from_row(r) for r in rows if r["lora"] == lora), None)


__all__ = [
    "EvaluationOutcome",
    "LoraScore",
    "best_among",
    "default_candidates",
    "evaluate",
    "run_candidates",
    "score_of",
]
