"""The built-in SDXL LoRA trainer (diffusers + peft + accelerate).

Why these choices: latents and text-encoder outputs are computed once and cached
(the VAE and the text encoders then leave the GPU), which is what makes SDXL LoRA
fit and run fast; LoRA weights stay fp32 under bf16/fp16 autocast; min-SNR
weighting and a small noise offset are the kohya defaults users expect; the data
order is a pure function of (seed, epoch), and checkpoints are accelerate states
(optimizer, scheduler and the RNG of every device, CUDA included), so a resumed
run continues exactly where the checkpoint left off, on a GPU as on the CPU.

Where each part lives: ``latent_cache.py`` (cached latents and text embeddings),
``components.py`` (data plan, LoRA layers, optimizer, accelerator), ``result.py`` (what a run returns), ``session.py``
(the loaded models, loss, optimizer step, samples, checkpoints), ``provenance.py``
(run key, the run's config.json, kohya metadata), ``checkpoints.py`` (checkpoint
layout and retention). This module runs the loop and is where other code imports
the trainer from.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from pathlib import Path

from ai_influencer.training.config import TrainConfig
from ai_influencer.training.data import discover
from ai_influencer.training.latent_cache import encode_text as _encode_text  # noqa: F401 (tests probe the encoder)
from ai_influencer.training.provenance import RUN_INDEPENDENT, run_dir, run_key, write_run_config
from ai_influencer.training.result import TrainResult
from ai_influencer.training.session import LORA_STATE, Session

__all__ = [
    "LORA_STATE",
    "RUN_INDEPENDENT",
    "OnSample",
    "OnStep",
    "TrainResult",
    "run_dir",
    "run_key",
    "train_lora",
    "write_run_config",
]

log = logging.getLogger(__name__)
OnStep = Callable[[int, int, float], None]
OnSample = Callable[[int, list[Path]], None]


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
    session = Session(cfg, items, folder, result)
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


def _loop(session: Session, on_step: OnStep | None, on_sample: OnSample | None, progress: bool) -> None:
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
