"""The built-in SDXL LoRA trainer (diffusers + peft + accelerate).

Why these choices: latents and text-encoder outputs are computed once and cached
(the VAE and the text encoders then leave the GPU), which is what makes SDXL LoRA
fit and run fast; LoRA weights stay fp32 under bf16/fp16 autocast; min-SNR
weighting and a small noise offset are the kohya defaults users expect; the data
order is a pure function of (seed, epoch), and checkpoints are accelerate states
(optimizer, scheduler and the RNG of every device, CUDA included), so a resumed
run continues exactly where the checkpoint left off, on a GPU as on the CPU.
Checkpoint layout and retention: ``checkpoints.py``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ai_influencer.io import atomic_write, atomic_write_json
from ai_influencer.training.checkpoints import (
    STATE_DIR,
    latest_checkpoint,
    prune_checkpoints,
    step_folder,
    write_state,
)
from ai_influencer.training.config import TEXT_TARGETS, UNET_TARGETS, TrainConfig
from ai_influencer.training.data import Item, discover, epoch_batches, make_buckets, nearest_bucket, prepare_image
from ai_influencer.training.loading import load_sdxl
from ai_influencer.training.lora_format import export_kohya_lora, kohya_metadata

log = logging.getLogger(__name__)
LORA_STATE = "lora.safetensors"  # inside a checkpoint's state/: the PEFT weights in fp32, for an exact resume
OnStep = Callable[[int, int, float], None]
OnSample = Callable[[int, list[Path]], None]


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

        cpu = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
        atomic_write(path, lambda tmp: save_file(cpu, str(tmp)))


def _base_id(base: Path) -> str:
    st = base.stat()
    return f"{base.resolve()}:{st.st_size}:{int(st.st_mtime)}"


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


def _dtype(name: str) -> Any:
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16, "no": torch.float32}[name]


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("torch", "diffusers", "peft", "accelerate", "transformers", "ai-influencer"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def write_run_config(folder: Path, cfg: TrainConfig, items: list[Item], plan: _Plan, resumed_from: int) -> Path:
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


@dataclass
class _Plan:
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
    def make(cls, cfg: TrainConfig, items: list[Item], buckets: list[tuple[int, int]]) -> _Plan:
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


class _Progress:
    """The optimizer step count, saved and restored by accelerate together with the rest of the state."""

    def __init__(self) -> None:
        self.step = 0

    def state_dict(self) -> dict[str, int]:
        return {"step": self.step}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.step = int(state["step"])


def _cache_latents(pipe: Any, items: list[Item], buckets: list[tuple[int, int]], cache: _Cache, device: Any) -> list:
    """VAE latents per item (VAE in fp32: the SDXL VAE overflows in fp16) plus SDXL's size conditioning."""
    import torch

    vae = pipe.vae
    vae.to(device, dtype=torch.float32)
    latents = []
    for it, bucket in zip(items, buckets, strict=True):
        path = cache.path("latent", it.digest, bucket)
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
    return latents


def _cache_text(pipe: Any, items: list[Item], cache: _Cache, device: Any) -> list:
    import torch

    text = []
    for it in items:
        path = cache.path("text", it.caption)
        entry = cache.get(path)
        if entry is None:
            with torch.no_grad():
                emb, pooled = _encode_text(pipe, [it.caption], device)
            entry = {"prompt_embeds": emb[0].float(), "pooled": pooled[0].float()}
            cache.put(path, entry)
        text.append(entry)
    return text


def _add_lora(cfg: TrainConfig, pipe: Any) -> list[dict[str, Any]]:
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


def _optimizer(cfg: TrainConfig, groups: list[dict[str, Any]]) -> Any:
    import torch

    if cfg.optimizer == "adamw8bit":
        try:
            import bitsandbytes as bnb
        except ImportError:
            raise RuntimeError("optimizer adamw8bit needs bitsandbytes (pip install bitsandbytes)") from None
        return bnb.optim.AdamW8bit(groups, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)


def _accelerator(cfg: TrainConfig, folder: Path) -> Any:
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


class _Session:
    """One call of ``train_lora``: the loaded models, their state, and what happens at each step."""

    def __init__(self, cfg: TrainConfig, items: list[Item], folder: Path, result: TrainResult) -> None:
        self.cfg, self.items, self.folder, self.result = cfg, items, folder, result
        # the base model first: a missing one must fail before a run folder and its logs exist
        self.pipe = load_sdxl(cfg.base_model, cfg.base_config if not cfg.base_model.is_dir() else None)
        folder.mkdir(parents=True, exist_ok=True)
        self.accelerator = acc = _accelerator(cfg, folder)
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
        self.device, self.weight_dtype = acc.device, _dtype(cfg.mixed_precision)
        set_seed(cfg.seed)
        for module in (pipe.unet, pipe.vae, pipe.text_encoder, pipe.text_encoder_2):
            module.requires_grad_(False)
        self.tes = (pipe.text_encoder, pipe.text_encoder_2)
        self.unet_config = pipe.unet.config

        buckets = make_buckets(cfg.resolution, cfg.min_bucket_reso, cfg.max_bucket_reso, cfg.bucket_step)
        item_bucket = [nearest_bucket(it.size, buckets) for it in items]
        cache = _Cache(cfg.cache_dir or cfg.output_dir / "cache", _base_id(cfg.base_model))
        self.latents = _cache_latents(pipe, items, item_bucket, cache, self.device)
        if cfg.sample_every is None:
            pipe.vae.to("cpu")
        for te in self.tes:
            te.to(self.device, dtype=torch.float32 if cfg.train_text_encoder else self.weight_dtype)
        self.text = [] if cfg.train_text_encoder else _cache_text(pipe, items, cache, self.device)
        if not cfg.train_text_encoder and cfg.sample_every is None:
            for te in self.tes:
                te.to("cpu")

        pipe.unet.to(self.device, dtype=self.weight_dtype)
        self.groups = _add_lora(cfg, pipe)
        self.plan = _Plan.make(cfg, items, item_bucket)
        optimizer = _optimizer(cfg, self.groups)
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
        meta = _metadata(self.cfg, self.items, self.progress.step, self.plan.total, self.plan.per_epoch)
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
            emb, pooled = _encode_text(self.pipe, [self.items[i].caption for i in batch_idx], dev)
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


def train_lora(
    cfg: TrainConfig,
    *,
    on_step: OnStep | None = None,
    on_sample: OnSample | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train (or resume training) the LoRA described by ``cfg``; writes ``cfg.output_file``.

    ``on_step(step, total, loss)`` runs after every optimizer step, ``on_sample(step, images)``
    after each round of sample images (the Prefect task publishes them as artifacts).
    """
    started = time.perf_counter()
    items, problems = discover(cfg.dataset, cfg.repeats, cfg.default_caption, cfg.captions_dir)
    for p in problems:
        log.warning("skipped %s", p)
    folder = run_dir(cfg, run_key(cfg, items))
    result = TrainResult(cfg.output_file, 0, 0, problems=problems, run_dir=folder)
    session = _Session(cfg, items, folder, result)
    try:
        result.resumed_from = session.resume()
        write_run_config(folder, cfg, items, session.plan, result.resumed_from)
        _loop(session, on_step, on_sample, progress)
        session.export(cfg.output_file)
    finally:
        session.accelerator.end_training()
    result.steps = session.progress.step
    result.seconds = time.perf_counter() - started
    return result


def _loop(session: _Session, on_step: OnStep | None, on_sample: OnSample | None, progress: bool) -> None:
    from tqdm.auto import tqdm

    cfg, plan, state, result = session.cfg, session.plan, session.progress, session.result
    if state.step >= plan.total:
        log.info("already trained %d of %d steps", state.step, plan.total)
    bar = tqdm(total=plan.total, initial=state.step, desc="train", unit="step", disable=not progress)
    session.unet.train()
    micro = state.step * cfg.grad_accum  # micro-batches consumed so far, identical on resume
    tick = time.perf_counter()
    while state.step < plan.total:
        micro, value = session.optimizer_step(micro)
        state.step += 1
        if not math.isfinite(value):
            hint = "try mixed_precision bf16 or a lower lr"
            raise FloatingPointError(f"loss became {value} at step {state.step}; {hint}")
        now = time.perf_counter()
        lr = session.lr_scheduler.get_last_lr()[0]
        session.accelerator.log({"loss": value, "lr": lr, "it_per_s": 1.0 / max(now - tick, 1e-9)}, step=state.step)
        result.losses.append(value)
        bar.update(1)
        bar.set_postfix(loss=f"{value:.4f}", lr=f"{lr:.2e}")
        if on_step:
            on_step(state.step, plan.total, value)
        last = state.step == plan.total
        # samples before the checkpoint: the state saved then is the one the next step starts from
        if cfg.sample_every and (state.step % cfg.sample_every == 0 or last):
            images = session.sample()
            if on_sample and images:
                on_sample(state.step, images)
        if state.step % cfg.checkpoint_every == 0 or last:
            session.checkpoint()
        tick = time.perf_counter()
    bar.close()


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
