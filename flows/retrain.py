"""Scheduled end-to-end retraining: top up the dataset, retrain, evaluate, promote only if better.

The new LoRA is trained under another name (``influencer_lora_candidate``), then it,
its checkpoints and the live ``influencer_lora.safetensors`` are evaluated together
(same prompts, same seeds). The best candidate replaces the live file only if its
identity score beats the live one's; the previous live file is kept as
``influencer_lora.prev-<time>.safetensors``. Every evaluation lands in the identity
history (models/lora/identity_history.sqlite).
"""

from __future__ import annotations

from prefect import flow
from pydantic import Field

from ai_influencer.dataset.workspace import LORA_NAME
from ai_influencer.settings import Settings
from ai_influencer.usecases.evaluate import best_among, run_candidates, score_of
from flows.params import AugmentParams, EvaluateParams, GenerateParams, Paths, QCParams, RunParams, TrainParams
from flows.results import RetrainSummary
from flows.rounds import generate_until_flow
from flows.stages import augment_flow, evaluate_flow, train_flow
from tasks.training import promote_task

CANDIDATE = f"{LORA_NAME}_candidate"


class RetrainParams(RunParams):
    paths: Paths = Field(default_factory=Paths)
    target_accepted: int = Field(default=40, ge=1, description="Top the dataset up to this many QC-passed images.")
    max_rounds: int = Field(default=3, ge=1)
    downweight_failing: bool = False
    generate: GenerateParams = Field(default_factory=lambda: GenerateParams(per_scene=4, budget_usd=2.0))
    qc: QCParams = Field(default_factory=QCParams)
    augment: AugmentParams = Field(default_factory=AugmentParams)
    train: TrainParams = Field(default_factory=TrainParams)
    evaluate: EvaluateParams = Field(default_factory=EvaluateParams)


@flow(name="retrain", log_prints=True)
def retrain_flow(params: RetrainParams = RetrainParams()) -> RetrainSummary:
    p = params.resolve(Settings())
    ws = p.paths.workspace()
    base = p.train.base_path(ws)
    if not base.exists():
        raise FileNotFoundError(f"retraining needs the base SDXL model at {base}")
    top_up = generate_until_flow(
        target=p.target_accepted, generate=p.generate, qc=p.qc, paths=p.paths, max_rounds=p.max_rounds,
        downweight_failing=p.downweight_failing,
    )  # fmt: skip
    augmented = augment_flow(p.augment, p.paths)
    trained = train_flow(p.train, p.paths, output_name=CANDIDATE)
    live = ws.lora_file
    candidates = run_candidates(trained.output, trained.run_dir)
    loras = candidates + ([str(live)] if live.is_file() else [])
    ev = evaluate_flow(p.evaluate, p.paths, p.train, loras=loras)
    best = best_among(ev.candidates, candidates)  # the rule pick_best uses, among the new ones
    live_score = score_of(ev.candidates, str(live))
    promotion = promote_task(
        candidate=best.lora,
        candidate_score=best.score,
        live=str(live),
        live_score=live_score.score if live_score else None,
        history_db=str(ws.identity_history),
        candidate_history_id=best.history_id,
    )
    print(f"retrain: {promotion.model_dump()}")
    return RetrainSummary(top_up=top_up, augment=augmented, train=trained, evaluate=ev, promotion=promotion)
