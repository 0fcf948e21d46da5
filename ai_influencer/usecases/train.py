"""Use case: train the SDXL LoRA (the manual's train_lora.sh), with the built-in trainer or kohya."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from ai_influencer.dataset.workspace import Workspace
from ai_influencer.training.config import TrainConfig
from ai_influencer.training.trainer import OnSample, OnStep
from ai_influencer.usecases.results import TrainSummary


def train_config(ws: Workspace, **fields: Any) -> TrainConfig:
    """The training settings for a workspace: base model, augment's kohya layout (else the flat
    augment folder), captions and output folder from the workspace; every other field as given
    (a clear ``ValueError`` names a bad one)."""
    defaults: dict[str, Any] = {
        "base_model": ws.base_model,
        "dataset": ws.training_set,
        "captions_dir": ws.captions,
        "output_dir": ws.lora_dir,
    }
    given = {k: v for k, v in fields.items() if v is not None}
    try:
        return TrainConfig.model_validate({**defaults, **given})
    except ValueError as exc:  # pydantic's multi-line message, as one line naming the field
        raise ValueError(str(exc).replace("\n", " ")) from None


def train(
    cfg: TrainConfig,
    *,
    kohya_path: Path | None = None,
    on_step: OnStep | None = None,
    on_sample: OnSample | None = None,
    on_line: Callable[[str], None] | None = None,
    progress: bool = True,
) -> TrainSummary:
    """Train or resume (a repeated call continues from the newest checkpoint of the same run).

    With ``kohya_path`` (an sd-scripts checkout) kohya's sdxl_train_network.py trains with the same
    settings, its output streamed to ``on_line``; otherwise the built-in diffusers + peft trainer.
    """
    if kohya_path is not None:
        from ai_influencer.training.kohya_backend import train_with_kohya

        out = train_with_kohya(cfg, kohya_path, on_line=on_line or print)
        return TrainSummary(output=str(out), backend="kohya", checkpoints=[])
    from ai_influencer.training.trainer import train_lora

    result = train_lora(cfg, on_step=on_step, on_sample=on_sample, progress=progress)
    return TrainSummary(
        output=str(result.output),
        backend="built-in",
        steps=result.steps,
        resumed_from=result.resumed_from,
        final_loss=result.losses[-1] if result.losses else None,
        seconds=round(result.seconds, 1),
        checkpoints=[str(p) for p in result.checkpoints],
        run_dir=str(result.run_dir) if result.run_dir else None,
        samples=[str(p) for p in result.samples],
        problems=result.problems,
    )


__all__ = ["TrainConfig", "TrainSummary", "train", "train_config"]
