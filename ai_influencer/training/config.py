"""Training parameters: the train stage's options (``options.train``: the manual's train_lora.sh defaults,
dim 32, alpha 16, 1024 px) and every other trainer setting."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from ai_influencer.options.train import TrainOptions

# kohya's coverage: every Linear inside the UNet's transformer blocks (attention, feed-forward,
# proj_in/out), and attention + MLP inside both CLIP text encoders.
UNET_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2")
TEXT_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")


class TrainConfig(TrainOptions):
    """What the trainer runs: the stage's options (inherited) plus paths, buckets, optimizer and samples."""

    base_model: Path = Field(
        default=Path("models/base/sdxl.safetensors"),
        description="SDXL checkpoint (.safetensors single file) or a diffusers folder with model_index.json.",
    )
    base_config: Path | None = Field(
        default=None,
        description="Local diffusers config folder for a single-file checkpoint (default: models/base/sdxl_config).",
    )
    dataset: Path = Field(default=Path("data/augment/kohya"), description="Images + .txt captions (kohya layout ok).")
    captions_dir: Path | None = Field(default=None, description="Where to look for captions not next to images.")
    output_dir: Path = Field(default=Path("models/lora"))
    output_name: str = Field(default="influencer_lora", pattern=r"^[\w.-]+$")

    min_bucket_reso: int = Field(default=256, ge=16)
    max_bucket_reso: int = Field(default=2048, ge=16)
    bucket_step: int = Field(default=64, ge=8)
    repeats: int = Field(default=1, ge=1, description="For folders without a kohya N_name prefix.")
    default_caption: str = Field(default="", description="Used for images without a .txt caption.")

    text_encoder_lr: float = Field(default=1e-5, gt=0)
    grad_accum: int = Field(default=1, ge=1)
    lr_scheduler: Literal["constant", "constant_with_warmup", "cosine", "linear"] = "constant"
    lr_warmup_steps: int = Field(default=0, ge=0)
    optimizer: Literal["adamw", "adamw8bit"] = "adamw"
    weight_decay: float = Field(default=1e-2, ge=0)
    max_grad_norm: float = Field(default=1.0, ge=0)
    gradient_checkpointing: bool = True
    min_snr_gamma: float | None = Field(default=5.0, gt=0)
    noise_offset: float = Field(default=0.0357, ge=0)
    seed: int = 42

    resume: bool = Field(default=True, description="Continue from the newest checkpoint in output_dir.")
    sample_every: int | None = Field(default=None, ge=1, description="Render sample images every N steps.")
    sample_prompts: list[str] = Field(default_factory=list)
    sample_steps: int = Field(default=20, ge=1)
    sample_resolution: int | None = Field(default=None, ge=64)
    cache_dir: Path | None = Field(default=None, description="Latent/text cache (default: output_dir/cache).")
    device: str | None = Field(default=None, description="cuda, cpu, ... (default: what accelerate picks).")

    @model_validator(mode="after")
    def _buckets(self) -> TrainConfig:
        if self.min_bucket_reso > self.resolution:
            raise ValueError(f"min_bucket_reso {self.min_bucket_reso} is larger than resolution {self.resolution}")
        if self.resolution % self.bucket_step:
            raise ValueError(f"resolution {self.resolution} is not a multiple of bucket_step {self.bucket_step}")
        return self

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    @property
    def checkpoints_dir(self) -> Path:
        return self.output_dir / "checkpoints" / self.output_name

    @property
    def output_file(self) -> Path:
        return self.output_dir / f"{self.output_name}.safetensors"

    def config_dir(self) -> Path:
        return self.base_config or self.base_model.parent / "sdxl_config"
