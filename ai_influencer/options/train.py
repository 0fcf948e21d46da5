"""The train stage's options: the manual's ``train_lora.sh`` defaults (dim 32, alpha 16, 1024 px).

``training.config.TrainConfig`` extends these with every other trainer setting (paths, buckets, optimizer,
samples); the flow's form shows these and takes the rest as ``overrides``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class TrainOptions(BaseModel):
    rank: int = Field(default=32, ge=1, le=1024, description="network_dim (LoRA rank).")
    alpha: float = Field(default=16.0, gt=0, description="network_alpha; the LoRA scale is alpha / rank.")
    resolution: int = Field(default=1024, ge=16, le=4096, description="Training resolution in pixels.")
    max_train_steps: int | None = Field(default=None, ge=1, description="Overrides epochs when set.")
    epochs: int = Field(default=10, ge=1, description="Passes over the dataset.")
    unet_lr: float = Field(default=1e-4, gt=0, description="UNet learning rate.")
    batch_size: int = Field(default=1, ge=1, description="Images per step.")
    mixed_precision: Literal["no", "fp16", "bf16"] = Field(default="bf16", description="no | fp16 | bf16")
    train_text_encoder: bool = Field(default=False, description="Also train the text encoders' LoRA.")
    checkpoint_every: int = Field(default=250, ge=1, description="Save a resumable checkpoint every N steps.")
    keep_checkpoints: int = Field(
        default=5, ge=1, description="Keep the newest N checkpoints of a run (older ones are deleted)."
    )
