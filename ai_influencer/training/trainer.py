"""The built-in SDXL LoRA trainer (diffusers + peft + accelerate).

Why these choices: latents and text-encoder outputs are computed once and cached
(the VAE and the text encoders then leave the GPU), which is what makes SDXL LoRA
fit and run fast; LoRA weights stay fp32 under bf16/fp16 autocast; min-SNR
weighting and a small noise offset are the kohya defaults users expect; the data
order is a pure function of (seed, epoch), so a resumed run continues exactly
where the checkpoint left off.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ai_influencer.training.config import TEXT_TARGETS, UNET_TARGETS, TrainConfig
from ai_influencer.training.data import Item, discover, epoch_batches, make_buckets, nearest_bucket, prepare_image
from ai_influencer.training.loading import load_sdxl
from ai_influencer.training.lora_format import kohya_metadata, save_kohya, to_kohya

log = logging.getLogger(__name__)
STEP_DIR = re.compile(r"^step-(\d+)$")


@dataclass
class TrainResult:
    output: Path
    steps: int
    resumed_from: int
    run_dir: Path | None = None
    losses: list[float] = field(default_factory=list)
    checkpoints: list[Path] = field(default_factory=list)
    samples: list[Path] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0


def _encode_text(pipe: Any, captions: list[str], device: Any) -> tuple[Any, Any]:
    """SDXL conditioning: penultimate hidden states of both encoders concatenated, pooled from encoder 2."""
    import torch

    embeds = []
    pooled = None
    for tokenizer, encoder in ((pipe.tokenizer, pipe.text_encoder), (pipe.tokenizer_2, pipe.text_encoder_2)):
        ids = tokenizer(
            captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
        ).input_ids.to(device)
        out = encoder(ids, output_hidden_states=True)
        embeds.append(out.hidden_states[-2])
        pooled = out[0]  # text_embeds of CLIPTextModelWithProjection
    return torch.cat(embeds, dim=-1), pooled


class _Cache:
    """Latents and text embeddings per (image content, bucket, caption, base model), on disk as safetensors."""

    def __init__(self, folder: Path, base_id: str) -> None:
        self.folder = folder
        self.base_id = base_id
        folder.mkdir(parents=True, exist_ok=True)

    def path(self, kind: str, *parts: object) -> Path:
        digest = hashlib.sha256(":".join(map(str, (self.base_id, kind, *parts))).encode()).hexdigest()[:32]
        return self.folder / f"{kind}-{digest}.safetensors"

    def get(self, path: Path) -> dict[str, Any] | None:
        from safetensors.torch import load_file

        return load_file(str(path)) if path.is_file() else None

    def put(self, path: Path, tensors: dict[str, Any]) -> None:
        from safetensors.torch import save_file

        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp))
        os.replace(tmp, path)


def _base_id(base: Path) -> str:
    st = base.stat()
    return f"{base.resolve()}:{st.st_size}:{int(st.st_mtime)}"


RUN_INDEPENDENT = {"output_dir", "resume", "sample_every", "sample_prompts", "sample_steps", "sample_resolution",
                   "checkpoint_every", "cache_dir", "device", "max_train_steps", "epochs"}  # fmt: skip


def run_key(cfg: TrainConfig, items: list[Item]) -> str:
    """Identifies a training run: same data + same hyper-parameters = same run, so it may be resumed.

    Step count and epochs are left out on purpose: asking for more steps continues the run.
    """
    fields = cfg.model_dump(mode="json", exclude=RUN_INDEPENDENT)
    data = sorted((it.digest, it.caption, it.repeats) for it in items)
    return hashlib.sha256(json.dumps([fields, data], sort_keys=True).encode()).hexdigest()[:12]


def run_dir(cfg: TrainConfig, key: str) -> Path:
    return cfg.checkpoints_dir / key


def checkpoint_files(folder: Path) -> list[Path]:
    """The LoRA file of every complete checkpoint in a run folder, oldest first."""
    if not folder.is_dir():
        return []
    steps = sorted((int(m.group(1)), p) for p in folder.iterdir() if (m := STEP_DIR.match(p.name)))
    return [f for _, p in steps if (p / "state.pt").is_file() for f in p.glob("*.safetensors")]


def latest_checkpoint(folder: Path) -> Path | None:
    if not folder.is_dir():
        return None
    steps = [(int(m.group(1)), p) for p in folder.iterdir() if (m := STEP_DIR.match(p.name))]
    done = [(s, p) for s, p in steps if (p / "state.pt").is_file()]
    return max(done)[1] if done else None


def _dtype(name: str) -> Any:
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16, "no": torch.float32}[name]


def train_lora(
    cfg: TrainConfig,
    *,
    on_step: Callable[[int, int, float], None] | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train (or resume training) the LoRA described by ``cfg``; writes ``cfg.output_file``."""
    import torch
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from diffusers import DDPMScheduler
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import cast_training_params, compute_snr
    from peft import LoraConfig, inject_adapter_in_model
    from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
    from tqdm.auto import tqdm

    started = time.perf_counter()
    items, problems = discover(cfg.dataset, cfg.repeats, cfg.default_caption, cfg.captions_dir)
    for p in problems:
        log.warning("skipped %s", p)
    accelerator = Accelerator(
        mixed_precision=cfg.mixed_precision,
        gradient_accumulation_steps=cfg.grad_accum,
        cpu=cfg.device == "cpu",
    )
    device = accelerator.device
    set_seed(cfg.seed)
    weight_dtype = _dtype(cfg.mixed_precision)
    pipe = load_sdxl(cfg.base_model, cfg.base_config if not cfg.base_model.is_dir() else None)
    unet, vae = pipe.unet, pipe.vae
    for module in (unet, vae, pipe.text_encoder, pipe.text_encoder_2):
        module.requires_grad_(False)

    # ---- cache latents (VAE in fp32: the SDXL VAE overflows in fp16) and text embeddings ----
    buckets = make_buckets(cfg.resolution, cfg.min_bucket_reso, cfg.max_bucket_reso, cfg.bucket_step)
    item_bucket = [nearest_bucket(it.size, buckets) for it in items]
    cache = _Cache(cfg.cache_dir or cfg.output_dir / "cache", _base_id(cfg.base_model))
    vae.to(device, dtype=torch.float32)
    latents: list[dict[str, Any]] = []
    for it, bucket in zip(items, item_bucket, strict=True):
        digest = it.digest
        path = cache.path("latent", digest, bucket)
        entry = cache.get(path)
        if entry is None:
            prep = prepare_image(it.path, bucket)
            px = torch.from_numpy(prep.pixels.copy()).permute(2, 0, 1)[None].float().div(127.5).sub(1.0).to(device)
            with torch.no_grad():
                lat = vae.encode(px).latent_dist.mode()[0] * vae.config.scaling_factor
            entry = {
                "latent": lat,
                "time_ids": torch.tensor([*prep.original_size, *prep.crop_top_left, *prep.target_size]).float(),
            }
            cache.put(path, entry)
        latents.append(entry)
    if cfg.sample_every is None:
        vae.to("cpu")
    text_cache: list[dict[str, Any]] = []
    te_modules = (pipe.text_encoder, pipe.text_encoder_2)
    for te in te_modules:
        te.to(device, dtype=torch.float32 if cfg.train_text_encoder else weight_dtype)
    if not cfg.train_text_encoder:
        for it in items:
            path = cache.path("text", it.caption)
            entry = cache.get(path)
            if entry is None:
                with torch.no_grad():
                    emb, pooled = _encode_text(pipe, [it.caption], device)
                entry = {"prompt_embeds": emb[0].float(), "pooled": pooled[0].float()}
                cache.put(path, entry)
            text_cache.append(entry)
        if cfg.sample_every is None:
            for te in te_modules:
                te.to("cpu")

    # ---- LoRA adapters ----
    unet.to(device, dtype=weight_dtype)
    unet.add_adapter(
        LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, init_lora_weights="gaussian", target_modules=list(UNET_TARGETS))
    )
    trained = [unet]
    if cfg.train_text_encoder:
        for te in te_modules:
            # peft directly: transformers' add_adapter insists on a newer peft than diffusers needs.
            inject_adapter_in_model(
                LoraConfig(
                    r=cfg.rank, lora_alpha=cfg.alpha, init_lora_weights="gaussian", target_modules=list(TEXT_TARGETS)
                ),
                te,
            )
            trained.append(te)
    if cfg.mixed_precision != "no":
        cast_training_params(trained, dtype=torch.float32)
    if cfg.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
        if cfg.train_text_encoder:
            for te in te_modules:
                te.gradient_checkpointing_enable()
    groups = [{"params": [p for p in unet.parameters() if p.requires_grad], "lr": cfg.unet_lr}]
    if cfg.train_text_encoder:
        te_params = [p for te in te_modules for p in te.parameters() if p.requires_grad]
        groups.append({"params": te_params, "lr": cfg.text_encoder_lr})
    if cfg.optimizer == "adamw8bit":
        try:
            import bitsandbytes as bnb
        except ImportError:
            raise RuntimeError("optimizer adamw8bit needs bitsandbytes (pip install bitsandbytes)") from None
        optimizer = bnb.optim.AdamW8bit(groups, weight_decay=cfg.weight_decay)
    else:
        optimizer = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)

    # ---- schedule ----
    reps = [(i, item_bucket[i]) for i, it in enumerate(items) for _ in range(it.repeats)]
    epoch_len = len(epoch_batches(reps, cfg.batch_size, cfg.seed, 0))  # batches per epoch: same every epoch
    per_epoch = math.ceil(epoch_len / cfg.grad_accum)
    total = cfg.max_train_steps or per_epoch * cfg.epochs
    lr_scheduler = get_scheduler(
        cfg.lr_scheduler, optimizer=optimizer, num_warmup_steps=cfg.lr_warmup_steps, num_training_steps=total
    )
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    unet, optimizer, lr_scheduler = accelerator.prepare(unet, optimizer, lr_scheduler)

    step = 0
    folder_of_run = run_dir(cfg, run_key(cfg, items))
    ckpt = latest_checkpoint(folder_of_run) if cfg.resume else None
    if ckpt is not None:
        state = torch.load(ckpt / "state.pt", map_location="cpu", weights_only=False)
        set_peft_model_state_dict(accelerator.unwrap_model(unet), state["unet"])
        for te, key in zip(te_modules, ("te1", "te2"), strict=True):
            if key in state:
                set_peft_model_state_dict(te, state[key])
        optimizer.load_state_dict(state["optimizer"])
        lr_scheduler.load_state_dict(state["lr_scheduler"])
        torch.set_rng_state(state["rng"])
        step = state["step"]
        log.info("resumed from %s (step %d)", ckpt, step)
    resumed_from = step
    result = TrainResult(cfg.output_file, step, resumed_from, problems=problems, run_dir=folder_of_run)
    if step >= total:
        log.info("already trained %d of %d steps", step, total)

    def export(path: Path, at_step: int) -> Path:
        tensors = to_kohya(
            get_peft_model_state_dict(accelerator.unwrap_model(unet)),
            "lora_unet",
            cfg.alpha,
            layers_per_block=pipe.unet.config.layers_per_block,
        )
        if cfg.train_text_encoder:
            tensors |= to_kohya(get_peft_model_state_dict(te_modules[0]), "lora_te1", cfg.alpha)
            tensors |= to_kohya(get_peft_model_state_dict(te_modules[1]), "lora_te2", cfg.alpha)
        return save_kohya(path, tensors, _metadata(cfg, items, at_step, total, per_epoch))

    def checkpoint(at_step: int) -> Path:
        folder = folder_of_run / f"step-{at_step:06d}"
        folder.mkdir(parents=True, exist_ok=True)
        export(folder / f"{cfg.output_name}.safetensors", at_step)
        state = {
            "unet": get_peft_model_state_dict(accelerator.unwrap_model(unet)),
            "optimizer": optimizer.state_dict(),
            "lr_scheduler": lr_scheduler.state_dict(),
            "rng": torch.get_rng_state(),
            "step": at_step,
        }
        if cfg.train_text_encoder:
            state["te1"] = get_peft_model_state_dict(te_modules[0])
            state["te2"] = get_peft_model_state_dict(te_modules[1])
        tmp = folder / ".state.pt.tmp"
        torch.save(state, tmp)
        os.replace(tmp, folder / "state.pt")  # state.pt last: its presence marks a complete checkpoint
        result.checkpoints.append(folder)
        return folder

    def sample(at_step: int) -> None:
        if not cfg.sample_prompts:
            return
        unet.eval()
        res = cfg.sample_resolution or cfg.resolution
        pipe.unet = accelerator.unwrap_model(unet)
        vae.to(device, dtype=torch.float32)
        folder = cfg.output_dir / "samples" / cfg.output_name
        folder.mkdir(parents=True, exist_ok=True)
        with torch.no_grad(), accelerator.autocast():
            for i, prompt in enumerate(cfg.sample_prompts):
                gen = torch.Generator("cpu").manual_seed(cfg.seed + i)
                image = pipe(prompt, num_inference_steps=cfg.sample_steps, height=res, width=res, generator=gen).images[
                    0
                ]
                out = folder / f"step-{at_step:06d}-{i}.png"
                image.save(out)
                result.samples.append(out)
        unet.train()

    bar = tqdm(total=total, initial=step, desc="train", unit="step", disable=not progress)
    unet.train()
    micro = step * cfg.grad_accum  # micro-batches consumed so far, identical on resume
    order: tuple[int, list[list[int]]] = (-1, [])  # (epoch, its batches): shuffled once per epoch
    while step < total:
        epoch, pos = divmod(micro, epoch_len)
        if order[0] != epoch:
            order = (epoch, epoch_batches(reps, cfg.batch_size, cfg.seed, epoch))
        batch_idx = order[1][pos]
        micro += 1
        with accelerator.accumulate(unet):
            lat = torch.stack([latents[i]["latent"] for i in batch_idx]).to(device, dtype=weight_dtype)
            time_ids = torch.stack([latents[i]["time_ids"] for i in batch_idx]).to(device, dtype=weight_dtype)
            if cfg.train_text_encoder:
                emb, pooled = _encode_text(pipe, [items[i].caption for i in batch_idx], device)
            else:
                emb = torch.stack([text_cache[i]["prompt_embeds"] for i in batch_idx]).to(device)
                pooled = torch.stack([text_cache[i]["pooled"] for i in batch_idx]).to(device)
            noise = torch.randn_like(lat)
            if cfg.noise_offset:
                noise = noise + cfg.noise_offset * torch.randn(lat.shape[0], lat.shape[1], 1, 1, device=device)
            t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (lat.shape[0],), device=device).long()
            noisy = noise_scheduler.add_noise(lat, noise, t)
            with accelerator.autocast():
                pred = unet(
                    noisy,
                    t,
                    encoder_hidden_states=emb.to(weight_dtype),
                    added_cond_kwargs={"text_embeds": pooled.to(weight_dtype), "time_ids": time_ids},
                ).sample
            v_pred = noise_scheduler.config.prediction_type == "v_prediction"
            target = noise_scheduler.get_velocity(lat, noise, t) if v_pred else noise
            per_sample = torch.nn.functional.mse_loss(pred.float(), target.float(), reduction="none")
            per_sample = per_sample.mean(dim=(1, 2, 3))
            if cfg.min_snr_gamma:
                snr = compute_snr(noise_scheduler, t)
                weight = torch.clamp(snr, max=cfg.min_snr_gamma) / (snr + 1 if v_pred else snr)
                per_sample = per_sample * weight
            loss = per_sample.mean()
            accelerator.backward(loss)
            if accelerator.sync_gradients and cfg.max_grad_norm:
                accelerator.clip_grad_norm_([p for g in groups for p in g["params"]], cfg.max_grad_norm)
            optimizer.step()
            lr_scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        if not accelerator.sync_gradients:
            continue
        step += 1
        value = float(loss.detach())
        if not math.isfinite(value):
            raise FloatingPointError(f"loss became {value} at step {step}; try mixed_precision bf16 or a lower lr")
        result.losses.append(value)
        bar.update(1)
        bar.set_postfix(loss=f"{value:.4f}", lr=f"{lr_scheduler.get_last_lr()[0]:.2e}")
        if on_step:
            on_step(step, total, value)
        if step % cfg.checkpoint_every == 0 or step == total:
            checkpoint(step)
        if cfg.sample_every and (step % cfg.sample_every == 0 or step == total):
            sample(step)
    bar.close()
    export(cfg.output_file, step)
    result.steps = step
    result.seconds = time.perf_counter() - started
    return result


def _metadata(cfg: TrainConfig, items: list[Item], step: int, total: int, per_epoch: int) -> dict[str, str]:
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
