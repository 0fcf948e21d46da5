"""How a LoRA can be traced to how it was made: the run key, the run's ``config.json`` and the kohya metadata
written into every exported file."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path

from ai_influencer.io import atomic_write_json
from ai_influencer.training.components import Plan
from ai_influencer.training.config import TrainConfig
from ai_influencer.training.data import Item
from ai_influencer.training.lora_format import kohya_metadata

RUN_INDEPENDENT = {
    "output_dir", "resume", "sample_every", "sample_prompts", "sample_steps", "sample_resolution",
    "checkpoint_every", "keep_checkpoints", "cache_dir", "device", "max_train_steps", "epochs",
}  # fmt: skip


def run_key(cfg: TrainConfig, items: list[Item]) -> str:
    """Identifies a training run: same data + same hyper-parameters = same run, so it may be resumed.

    Step count and epochs are left out on purpose: asking for more steps continues the run.
    """
    fields = cfg.model_dump(mode="json", exclude=RUN_INDEPENDENT)
    data = sorted((it.digest, it.caption, it.repeats) for it in items)
    return hashlib.sha256(json.dumps([fields, data], sort_keys=True).encode()).hexdigest()[:12]


def run_dir(cfg: TrainConfig, key: str) -> Path:
    return cfg.checkpoints_dir / key


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("torch", "diffusers", "peft", "accelerate", "transformers", "ai-influencer"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def write_run_config(folder: Path, cfg: TrainConfig, items: list[Item], plan: Plan, resumed_from: int) -> Path:
    """The run's full configuration, data and library versions, so a LoRA can be traced to how it was made."""
    return atomic_write_json(
        folder / "config.json",
        {
            "run": folder.name,
            "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "resumed_from": resumed_from,
            "total_steps": plan.total,
            "steps_per_epoch": plan.per_epoch,
            "config": cfg.model_dump(mode="json"),
            "data": [
                {"path": str(it.path), "sha256_24": it.digest, "caption": it.caption, "repeats": it.repeats}
                for it in items
            ],
            "versions": _versions(),
        },
    )


def lora_metadata(cfg: TrainConfig, items: list[Item], step: int, total: int, per_epoch: int) -> dict[str, str]:
    """The ``ss_*`` and ``modelspec.*`` header kohya's tools and the web UIs read (tag frequency included)."""
    tags: dict[str, int] = {}
    for it in items:
        for tag in (t.strip() for t in it.caption.split(",")):
            if tag:
                tags[tag] = tags.get(tag, 0) + 1
    return kohya_metadata(
        network_module="networks.lora",
        network_dim=cfg.rank,
        network_alpha=cfg.alpha,
        network_args={},
        network_train_unet_only=not cfg.train_text_encoder,
        base_model_version="sdxl_base_v1-0",
        resolution=f"({cfg.resolution}, {cfg.resolution})",
        num_train_images=sum(it.repeats for it in items),
        num_reg_images=0,
        steps=step,
        max_train_steps=total,
        epoch=step // max(1, per_epoch),
        learning_rate=cfg.unet_lr,
        unet_lr=cfg.unet_lr,
        text_encoder_lr=cfg.text_encoder_lr if cfg.train_text_encoder else 0,
        optimizer=cfg.optimizer,
        lr_scheduler=cfg.lr_scheduler,
        mixed_precision=cfg.mixed_precision,
        gradient_checkpointing=cfg.gradient_checkpointing,
        cache_latents=True,
        noise_offset=cfg.noise_offset,
        min_snr_gamma=cfg.min_snr_gamma or 0,
        seed=cfg.seed,
        enable_bucket=True,
        min_bucket_reso=cfg.min_bucket_reso,
        max_bucket_reso=cfg.max_bucket_reso,
        sd_model_name=cfg.base_model.name,
        tag_frequency={cfg.dataset.name: tags},
        dataset_dirs={cfg.dataset.name: {"n_repeats": max(it.repeats for it in items), "img_count": len(items)}},
        training_finished_at=datetime.now(UTC).isoformat(timespec="seconds"),
        **{
            "modelspec.sai_model_spec": "1.0.1",
            "modelspec.architecture": "stable-diffusion-xl-v1-base/lora",
            "modelspec.implementation": "https://github.com/Stability-AI/generative-models",
            "modelspec.title": cfg.output_name,
            "modelspec.resolution": f"{cfg.resolution}x{cfg.resolution}",
            "ss_training_comment": json.dumps({"trainer": "ai-influencer"}),
        },
    )
