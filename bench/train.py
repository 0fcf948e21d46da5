"""SDXL LoRA training speed and peak memory on the real SDXL UNet architecture (random weights).

    .venv/bin/python -m bench.train [--resolution 1024] [--batches 1 4] [--steps 10] [--rank 32]

Builds the full-size SDXL UNet (kohya's DIFFUSERS_SDXL_UNET_CONFIG: 320/640/1280
channels, 1/2/10 transformer layers, 2048-d cross attention) with random weights,
adds the same LoRA the trainer uses (rank 32, alpha 16, kohya coverage) and times
the trainer's step (cached latents and text embeddings, as in real training) in
bf16 autocast. Rows: batch size x gradient checkpointing; the baseline row is
batch 1 without checkpointing, measured in the same run. Needs a CUDA GPU for
1024 px (on CPU use e.g. --resolution 256 --steps 2 to check that it runs).
"""

from __future__ import annotations

import argparse
import time

from ai_influencer.training.config import UNET_TARGETS
from ai_influencer.training.sdxl_layout import SDXL_UNET_CONFIG


def measure(
    resolution: int, batch: int, steps: int, rank: int, checkpointing: bool, device: str
) -> tuple[float, float]:
    """(steps/s, peak GiB) for one configuration; a fresh UNet each time so memory is comparable."""
    import torch
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from diffusers.training_utils import cast_training_params
    from peft import LoraConfig

    torch.manual_seed(0)
    dtype = torch.bfloat16
    unet = UNet2DConditionModel(**SDXL_UNET_CONFIG).to(device, dtype=dtype)
    unet.requires_grad_(False)
    unet.add_adapter(
        LoraConfig(r=rank, lora_alpha=rank / 2, init_lora_weights="gaussian", target_modules=list(UNET_TARGETS))
    )
    cast_training_params(unet, dtype=torch.float32)
    if checkpointing:
        unet.enable_gradient_checkpointing()
    params = [p for p in unet.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    sched = DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    side = resolution // 8
    lat = torch.randn(batch, 4, side, side, device=device, dtype=dtype)
    emb = torch.randn(batch, 77, 2048, device=device, dtype=dtype)
    pooled = torch.randn(batch, 1280, device=device, dtype=dtype)
    time_ids = torch.tensor(
        [[resolution, resolution, 0, 0, resolution, resolution]] * batch, device=device, dtype=dtype
    )
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()

    def step() -> None:
        noise = torch.randn_like(lat)
        t = torch.randint(0, 1000, (batch,), device=device)
        noisy = sched.add_noise(lat, noise, t)
        with torch.autocast(device, dtype=dtype):
            pred = unet(noisy, t, emb, added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids}).sample
        loss = torch.nn.functional.mse_loss(pred.float(), noise.float())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()  # warm-up (kernels, allocator)
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    rate = steps / (time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else float("nan")
    return rate, peak


def main() -> None:
    import torch

    ap = argparse.ArgumentParser()
    ap.add_argument("--resolution", type=int, default=1024)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--rank", type=int, default=32)
    args = ap.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    name = torch.cuda.get_device_name() if device == "cuda" else "CPU"
    rows = []
    for batch in args.batches:
        for ckpt in (False, True):
            try:
                rate, peak = measure(args.resolution, batch, args.steps, args.rank, ckpt, device)
                if device == "cuda":
                    torch.cuda.empty_cache()  # the UNet of the last row is gone once measure() returned
            except torch.OutOfMemoryError:
                rate, peak = float("nan"), float("nan")
                torch.cuda.empty_cache()
            rows.append((batch, ckpt, rate, peak))
    base = rows[0][2]
    print(f"SDXL LoRA training step, {name}, {args.resolution}px, rank {args.rank}, bf16, cached latents/text")
    print(f"{'batch':>5} | {'grad ckpt':>9} | {'steps/s':>8} | {'images/s':>8} | {'peak GiB':>8} | {'vs b1':>6}")
    print("-" * 60)
    for batch, ckpt, rate, peak in rows:
        ratio = rate * batch / base
        print(f"{batch:>5} | {ckpt!s:>9} | {rate:>8.3f} | {rate * batch:>8.2f} | {peak:>8.2f} | {ratio:>5.2f}x")


if __name__ == "__main__":
    main()
