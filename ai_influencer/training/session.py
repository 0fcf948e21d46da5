"""One call of ``train_lora``: the loaded models, their state, and what happens at each step.

Checkpoints are accelerate states (optimizer, scheduler and the RNG of every device, CUDA included) plus the
LoRA weights in fp32, so a resumed run continues exactly where the checkpoint left off, on a GPU as on the
CPU. Min-SNR weighting and a small noise offset are the kohya defaults users expect.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ai_influencer.training.checkpoints import STATE_DIR, latest_checkpoint, prune_checkpoints, step_folder, write_state
from ai_influencer.training.components import Plan, add_lora, make_accelerator, make_optimizer, torch_dtype
from ai_influencer.training.config import TrainConfig
from ai_influencer.training.data import Item, make_buckets, nearest_bucket
from ai_influencer.training.latent_cache import LatentCache, base_id, cache_latents, cache_text, encode_text
from ai_influencer.training.loading import load_sdxl
from ai_influencer.training.lora_format import export_kohya_lora
from ai_influencer.training.provenance import lora_metadata

if TYPE_CHECKING:
    from ai_influencer.training.result import TrainResult

log = logging.getLogger(__name__)
LORA_STATE = "lora.safetensors"  # inside a checkpoint's state/: the PEFT weights in fp32, for an exact resume


class _Progress:
    """The optimizer step count, saved and restored by accelerate together with the rest of the state."""

    def __init__(self) -> None:
        self.step = 0

    def state_dict(self) -> dict[str, int]:
        return {"step": self.step}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.step = int(state["step"])


class Session:
    """One call of ``train_lora``: the loaded models, their state, and what happens at each step."""

    def __init__(self, cfg: TrainConfig, items: list[Item], folder: Path, result: TrainResult) -> None:
        self.cfg, self.items, self.folder, self.result = cfg, items, folder, result
        # the base model first: a missing one must fail before a run folder and its logs exist
        self.pipe = load_sdxl(cfg.base_model, cfg.base_config if not cfg.base_model.is_dir() else None)
        folder.mkdir(parents=True, exist_ok=True)
        self.accelerator = acc = make_accelerator(cfg, folder)
        try:
            self._setup()
        except BaseException:
            acc.end_training()  # close the TensorBoard writer
            raise

    def _setup(self) -> None:
        """Seed, cache latents/text, add LoRA, build optimizer and schedules, register the checkpoint hooks."""
        import torch
        from accelerate.utils import set_seed
        from diffusers import DDPMScheduler
        from diffusers.optimization import get_scheduler

        cfg, items, pipe, acc = self.cfg, self.items, self.pipe, self.accelerator
        self.device, self.weight_dtype = acc.device, torch_dtype(cfg.mixed_precision)
        set_seed(cfg.seed)
        for module in (pipe.unet, pipe.vae, pipe.text_encoder, pipe.text_encoder_2):
            module.requires_grad_(False)
        self.tes = (pipe.text_encoder, pipe.text_encoder_2)
        self.unet_config = pipe.unet.config

        buckets = make_buckets(cfg.resolution, cfg.min_bucket_reso, cfg.max_bucket_reso, cfg.bucket_step)
        item_bucket = [nearest_bucket(it.size, buckets) for it in items]
        cache = LatentCache(cfg.cache_dir or cfg.output_dir / "cache", base_id(cfg.base_model))
        self.latents = cache_latents(pipe, items, item_bucket, cache, self.device)
        if cfg.sample_every is None:
            pipe.vae.to("cpu")
        for te in self.tes:
            te.to(self.device, dtype=torch.float32 if cfg.train_text_encoder else self.weight_dtype)
        self.text = [] if cfg.train_text_encoder else cache_text(pipe, items, cache, self.device)
        if not cfg.train_text_encoder and cfg.sample_every is None:
            for te in self.tes:
                te.to("cpu")

        pipe.unet.to(self.device, dtype=self.weight_dtype)
        self.groups = add_lora(cfg, pipe)
        self.plan = Plan.make(cfg, items, item_bucket)
        optimizer = make_optimizer(cfg, self.groups)
        lr_scheduler = get_scheduler(
            cfg.lr_scheduler, optimizer=optimizer, num_warmup_steps=cfg.lr_warmup_steps,
            num_training_steps=self.plan.total,
        )  # fmt: skip
        self.noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
        self.unet, self.optimizer, self.lr_scheduler = acc.prepare(pipe.unet, optimizer, lr_scheduler)
        self.progress = _Progress()
        acc.register_for_checkpointing(self.progress)
        acc.register_save_state_pre_hook(self._save_hook)
        acc.register_load_state_pre_hook(self._load_hook)

    # ---- checkpoints: accelerate keeps optimizer/scheduler/RNG, the hooks keep only the LoRA weights ----
    def _lora_models(self) -> dict[str, Any]:
        models = {"unet": self.accelerator.unwrap_model(self.unet)}
        if self.cfg.train_text_encoder:
            models |= {"te1": self.tes[0], "te2": self.tes[1]}
        return models

    def _save_hook(self, models: list[Any], weights: list[Any], output_dir: str) -> None:
        from peft.utils import get_peft_model_state_dict
        from safetensors.torch import save_file

        weights.clear()  # accelerate would save the whole UNet (GBs); the frozen base is on disk already
        tensors = {
            f"{name}.{k}": v.detach().cpu().contiguous()
            for name, model in self._lora_models().items()
            for k, v in get_peft_model_state_dict(model).items()
        }
        save_file(tensors, str(Path(output_dir) / LORA_STATE))

    def _load_hook(self, models: list[Any], input_dir: str) -> None:
        from peft.utils import set_peft_model_state_dict
        from safetensors.torch import load_file

        models.clear()  # nothing for accelerate to load: the LoRA weights come from our file
        tensors = load_file(str(Path(input_dir) / LORA_STATE))
        for name, model in self._lora_models().items():
            prefix = f"{name}."
            state = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
            if not state:
                raise ValueError(f"checkpoint {input_dir} has no LoRA weights for {name}")
            set_peft_model_state_dict(model, state)

    def resume(self) -> int:
        ckpt = latest_checkpoint(self.folder) if self.cfg.resume else None
        if ckpt is not None:
            self.accelerator.load_state(str(ckpt / STATE_DIR))
            log.info("resumed from %s (step %d)", ckpt, self.progress.step)
        return self.progress.step

    def export(self, path: Path) -> Path:
        lora = self._lora_models()
        tes = (lora["te1"], lora["te2"]) if self.cfg.train_text_encoder else None
        meta = lora_metadata(self.cfg, self.items, self.progress.step, self.plan.total, self.plan.per_epoch)
        return export_kohya_lora(
            path, lora["unet"], self.unet_config, alpha=self.cfg.alpha, text_encoders=tes, metadata=meta
        )

    def checkpoint(self) -> Path:
        """LoRA file first, accelerate state last (its rename marks the checkpoint complete), then retention."""
        folder = step_folder(self.folder, self.progress.step)
        folder.mkdir(parents=True, exist_ok=True)
        self.export(folder / f"{self.cfg.output_name}.safetensors")
        write_state(folder, lambda tmp: self.accelerator.save_state(str(tmp)))
        self.result.checkpoints.append(folder)
        removed = set(prune_checkpoints(self.folder, self.cfg.keep_checkpoints))
        self.result.checkpoints = [c for c in self.result.checkpoints if c not in removed]
        return folder

    def sample(self) -> list[Path]:
        import torch

        from ai_influencer.training.inference import save_images

        cfg, pipe = self.cfg, self.pipe
        if not cfg.sample_prompts:
            return []
        self.unet.eval()
        res = cfg.sample_resolution or cfg.resolution
        pipe.unet = self.accelerator.unwrap_model(self.unet)
        pipe.vae.to(self.device, dtype=torch.float32)
        pipe.set_progress_bar_config(disable=True)
        images = []
        with torch.no_grad(), self.accelerator.autocast():
            for i, prompt in enumerate(cfg.sample_prompts):
                gen = torch.Generator("cpu").manual_seed(cfg.seed + i)
                out = pipe(prompt, num_inference_steps=cfg.sample_steps, height=res, width=res, generator=gen)
                images.append(out.images[0])
        self.unet.train()
        paths = save_images(images, cfg.output_dir / "samples" / cfg.output_name, f"step-{self.progress.step:06d}")
        self.result.samples.extend(paths)
        return paths

    # ---- one optimizer step ----
    def loss(self, batch_idx: list[int]) -> Any:
        """min-SNR weighted denoising loss of one micro-batch (noise offset, epsilon or v-prediction)."""
        import torch
        from diffusers.training_utils import compute_snr

        cfg, dev, dt, sched = self.cfg, self.device, self.weight_dtype, self.noise_scheduler
        lat = torch.stack([self.latents[i]["latent"] for i in batch_idx]).to(dev, dtype=dt)
        time_ids = torch.stack([self.latents[i]["time_ids"] for i in batch_idx]).to(dev, dtype=dt)
        if cfg.train_text_encoder:
            emb, pooled = encode_text(self.pipe, [self.items[i].caption for i in batch_idx], dev)
        else:
            emb = torch.stack([self.text[i]["prompt_embeds"] for i in batch_idx]).to(dev)
            pooled = torch.stack([self.text[i]["pooled"] for i in batch_idx]).to(dev)
        noise = torch.randn_like(lat)
        if cfg.noise_offset:
            noise = noise + cfg.noise_offset * torch.randn(lat.shape[0], lat.shape[1], 1, 1, device=dev)
        t = torch.randint(0, sched.config.num_train_timesteps, (lat.shape[0],), device=dev).long()
        noisy = sched.add_noise(lat, noise, t)
        with self.accelerator.autocast():
            pred = self.unet(
                noisy, t, encoder_hidden_states=emb.to(dt),
                added_cond_kwargs={"text_embeds": pooled.to(dt), "time_ids": time_ids},
            ).sample  # fmt: skip
        v_pred = sched.config.prediction_type == "v_prediction"
        target = sched.get_velocity(lat, noise, t) if v_pred else noise
        per_sample = torch.nn.functional.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
        if cfg.min_snr_gamma:
            snr = compute_snr(sched, t)
            per_sample = per_sample * torch.clamp(snr, max=cfg.min_snr_gamma) / (snr + 1 if v_pred else snr)
        return per_sample.mean()

    def optimizer_step(self, micro: int) -> tuple[int, float]:
        """Micro-batches until the next optimizer step; returns (micro-batches consumed, loss of the last one)."""
        acc = self.accelerator
        while True:
            with acc.accumulate(self.unet):
                loss = self.loss(self.plan.batch(micro))
                micro += 1
                acc.backward(loss)
                if acc.sync_gradients and self.cfg.max_grad_norm:
                    acc.clip_grad_norm_([p for g in self.groups for p in g["params"]], self.cfg.max_grad_norm)
                self.optimizer.step()
                self.lr_scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
            if acc.sync_gradients:
                return micro, float(loss.detach())
