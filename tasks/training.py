"""Prefect tasks of the training side: train, evaluate, promote (thin wrappers around use cases)."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from ai_influencer import usecases
from ai_influencer.options import EvaluateOptions
from ai_influencer.settings import Settings
from ai_influencer.training.config import TrainConfig
from shared_limits.artifacts import ProgressArtifact, samples_markdown, sheet_markdown
from shared_limits.retry import retry_options
from tasks.results import EvaluateSummary, PromotionResult, TrainSummary

RETRY = retry_options()


@task(name="train", tags=["gpu", "train"], task_run_name="train {output_name}", **RETRY)
def train_task(config: TrainConfig, output_name: str, kohya_path: str | None = None) -> TrainSummary:
    """Trains or resumes (a retry continues from the last checkpoint, it does not start over)."""
    cfg = TrainConfig.model_validate({**config.model_dump(), "output_name": output_name})
    logger = get_run_logger()
    progress = ProgressArtifact("train-progress", "LoRA training steps")

    def on_step(step: int, total: int, loss: float) -> None:
        if step == total or step % max(1, total // 50) == 0:
            progress(step, total)
            logger.info("step %d/%d loss %.4f", step, total, loss)

    def on_sample(step: int, images: list[Path]) -> None:
        create_markdown_artifact(
            samples_markdown(images, f"{output_name}: samples at step {step}"),
            key="train-samples",
            description=f"LoRA sample images at step {step}",
        )

    summary = usecases.train(
        cfg,
        kohya_path=Path(kohya_path) if kohya_path else None,
        on_step=on_step,
        on_sample=on_sample,
        on_line=logger.info,
        progress=False,
    )
    for problem in summary.problems:
        logger.warning("skipped %s", problem)
    return summary


@task(name="evaluate", tags=["gpu", "evaluate"], **RETRY)
def evaluate_task(
    loras: list[str],
    base_model: str,
    refs_dir: str,
    out_dir: str,
    prompt_bank: str,
    options: EvaluateOptions,
    history_db: str | None = None,
    dataset_dir: str | None = None,
    train_params: dict | None = None,
) -> EvaluateSummary:
    """Scores every LoRA on the same prompts and seeds; each result also goes into the identity history."""
    outcome = usecases.evaluate(
        Settings(),
        [Path(p) for p in loras],
        base=Path(base_model),
        prompt_bank=Path(prompt_bank),
        refs_dir=Path(refs_dir),
        out_dir=Path(out_dir),
        options=options,
        history_db=Path(history_db) if history_db else None,
        dataset_dir=Path(dataset_dir) if dataset_dir else None,
        train_params=train_params,
    )
    create_table_artifact(outcome.rows, key="identity-evaluation", description="Identity score per LoRA checkpoint")
    sheet = outcome.contact_sheet(Path(out_dir))
    if sheet.is_file():
        create_markdown_artifact(
            sheet_markdown(sheet, f"Samples of the best LoRA ({outcome.best.name})"), key="identity-contact-sheet"
        )
    return EvaluateSummary(best=str(outcome.best), candidates=outcome.rows)


@task(name="promote", tags=["train"], **RETRY)
def promote_task(
    candidate: str,
    candidate_score: tuple[float | None, float | None],
    live: str,
    live_score: tuple[float | None, float | None] | None,
    history_db: str,
    candidate_history_id: int | None,
) -> PromotionResult:
    from ai_influencer.analytics.history import IdentityHistory
    from ai_influencer.training.promote import promote_if_better

    result = promote_if_better(Path(candidate), candidate_score, Path(live), live_score)
    if result.promoted and candidate_history_id:
        IdentityHistory(Path(history_db)).mark_promoted(candidate_history_id)
    get_run_logger().info(result.reason)
    return PromotionResult(
        promoted=result.promoted,
        reason=result.reason,
        live=str(result.live),
        previous=str(result.previous) if result.previous else None,
    )
