"""What a training session is built from: the data plan, the LoRA layers, the optimizer and the accelerator.

LoRA weights stay fp32 under bf16/fp16 autocast, and the data order is a pure function of (seed, epoch), so a
resumed run sees exactly the batches the uninterrupted run would have seen.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ai_influencer.training.config import TEXT_TARGETS, UNET_TARGETS, TrainConfig
from ai_influencer.training.data import Item, epoch_batches

log = logging.getLogger(__name__)


@dataclass
class Plan:
    """The data order and step budget: batch b of epoch e is a pure function of (seed, e), so resume is exact."""

    reps: list[tuple[int, tuple[int, int]]]
    batch_size: int
    seed: int
    grad_accum: int
    epoch_len: int = 0
    per_epoch: int = 0
    total: int = 0
    _order: tuple[int, list[list[int]]] = field(default_factory=lambda: (-1, []))

    @classmethod
    def make(cls, cfg: TrainConfig, items: list[Item], buckets: list[tuple[int, int]]) -> Plan:
        reps = [(i, buckets[i]) for i, it in enumerate(items) for _ in range(it.repeats)]
        plan = cls(reps, cfg.batch_size, cfg.seed, cfg.grad_accum)
        plan.epoch_len = len(epoch_batches(reps, cfg.batch_size, cfg.seed, 0))  # the same every epoch
        plan.per_epoch = math.ceil(plan.epoch_len / cfg.grad_accum)
        plan.total = cfg.max_train_steps or plan.per_epoch * cfg.epochs
        return plan

    def batch(self, micro: int) -> list[int]:
        """Item indices of micro-batch number ``micro`` (counted from the start of the run)."""
        epoch, pos = divmod(micro, self.epoch_len)
        if self._order[0] != epoch:
            self._order = (epoch, epoch_batches(self.reps, self.batch_size, self.seed, epoch))
        return self._order[1][pos]


def torch_dtype(name: str) -> Any:
    """The weight dtype for ``mixed_precision`` (bf16, fp16 or no)."""
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16, "no": torch.float32}[name]


def add_lora(cfg: TrainConfig, pipe: Any) -> list[dict[str, Any]]:
    """LoRA layers on the UNet (and both text encoders if asked); returns the optimizer's parameter groups."""
    import torch
    from diffusers.training_utils import cast_training_params
    from peft import LoraConfig, inject_adapter_in_model

    unet, tes = pipe.unet, (pipe.text_encoder, pipe.text_encoder_2)
    unet.add_adapter(
        LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, init_lora_weights="gaussian", target_modules=list(UNET_TARGETS))
    )
    trained = [unet]
    if cfg.train_text_encoder:
        for te in tes:
            # peft directly: transformers' add_adapter insists on a newer peft than diffusers needs.
            te_config = LoraConfig(
                r=cfg.rank, lora_alpha=cfg.alpha, init_lora_weights="gaussian", target_modules=list(TEXT_TARGETS)
            )
            inject_adapter_in_model(te_config, te)
            trained.append(te)
    if cfg.mixed_precision != "no":
        cast_training_params(trained, dtype=torch.float32)
    if cfg.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
        if cfg.train_text_encoder:
            for te in tes:
                te.gradient_checkpointing_enable()
    groups = [{"params": [p for p in unet.parameters() if p.requires_grad], "lr": cfg.unet_lr}]
    if cfg.train_text_encoder:
        te_params = [p for te in tes for p in te.parameters() if p.requires_grad]
        groups.append({"params": te_params, "lr": cfg.text_encoder_lr})
    return groups


def make_optimizer(cfg: TrainConfig, groups: list[dict[str, Any]]) -> Any:
    import torch

    if cfg.optimizer == "adamw8bit":
        try:
            import bitsandbytes as bnb
        except ImportError:
            raise RuntimeError("optimizer adamw8bit needs bitsandbytes (pip install bitsandbytes)") from None
        return bnb.optim.AdamW8bit(groups, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)


def make_accelerator(cfg: TrainConfig, folder: Path) -> Any:
    """TensorBoard logs go to ``<run>/tensorboard`` when tensorboard is installed (the ``train`` extra has it)."""
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration, is_tensorboard_available

    tensorboard = is_tensorboard_available()
    if not tensorboard:
        log.warning("tensorboard is not installed: no loss/lr curves are logged (pip install tensorboard)")
    accelerator = Accelerator(
        mixed_precision=cfg.mixed_precision,
        gradient_accumulation_steps=cfg.grad_accum,
        cpu=cfg.device == "cpu",
        log_with="tensorboard" if tensorboard else None,
        project_config=ProjectConfiguration(project_dir=str(folder), logging_dir=str(folder)),
    )
    if tensorboard:
        accelerator.init_trackers("tensorboard")
    return accelerator
