"""Optional backend: kohya sd-scripts' sdxl_train_network.py through ``accelerate launch``.

This is the manual's train_lora.sh, driven from the same TrainConfig as the built-in
trainer, so users who already trust kohya keep it. The dataset is passed as a
TOML config (kohya ignores folder-name repeats there, so repeats go in the
subset), captions are ``.txt`` (kohya's default extension is ``.caption``), and the
process's output is streamed line by line to a callback.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from ai_influencer.io import atomic_write_text
from ai_influencer.training.config import TrainConfig
from ai_influencer.training.data import KOHYA_DIR, discover


class KohyaError(RuntimeError):
    """sd-scripts is missing or its training run failed (message has the tail of its log)."""


def dataset_toml(cfg: TrainConfig) -> str:
    """kohya's dataset config: one subset per kohya ``N_class`` folder (or the flat folder)."""
    discover(cfg.dataset, cfg.repeats, cfg.default_caption, cfg.captions_dir)  # same validation as the built-in trainer
    subsets = []
    for sub in sorted(p for p in cfg.dataset.iterdir() if p.is_dir() and KOHYA_DIR.match(p.name)):
        m = KOHYA_DIR.match(sub.name)
        assert m is not None
        subsets.append((sub, int(m.group(1)), m.group(2)))
    if not subsets:
        subsets = [(cfg.dataset, cfg.repeats, cfg.default_caption)]
    lines = [
        "[general]",
        "enable_bucket = true",
        'caption_extension = ".txt"',
        "",
        "[[datasets]]",
        f"resolution = {cfg.resolution}",
        f"batch_size = {cfg.batch_size}",
        f"min_bucket_reso = {cfg.min_bucket_reso}",
        f"max_bucket_reso = {cfg.max_bucket_reso}",
        f"bucket_reso_steps = {cfg.bucket_step}",
    ]
    for folder, repeats, class_tokens in subsets:
        lines += ["", "[[datasets.subsets]]", f"image_dir = {_q(folder.resolve())}", f"num_repeats = {repeats}"]
        if class_tokens:
            lines.append(f"class_tokens = {_q(class_tokens)}")
    return "\n".join(lines) + "\n"


def _q(value: object) -> str:
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def kohya_command(cfg: TrainConfig, sd_scripts: Path, dataset_config: Path, accelerate: str | None = None) -> list[str]:
    script = sd_scripts / "sdxl_train_network.py"
    launcher = accelerate or shutil.which("accelerate") or str(Path(sys.executable).with_name("accelerate"))
    cmd = [
        launcher,
        "launch",
        "--num_cpu_threads_per_process",
        "1",
        str(script),
        f"--pretrained_model_name_or_path={cfg.base_model}",
        f"--dataset_config={dataset_config}",
        f"--output_dir={cfg.output_dir}",
        f"--output_name={cfg.output_name}",
        "--save_model_as=safetensors",
        "--network_module=networks.lora",
        f"--network_dim={cfg.rank}",
        f"--network_alpha={cfg.alpha:g}",
        f"--unet_lr={cfg.unet_lr:g}",
        f"--learning_rate={cfg.unet_lr:g}",
        f"--optimizer_type={'AdamW8bit' if cfg.optimizer == 'adamw8bit' else 'AdamW'}",
        f"--lr_scheduler={cfg.lr_scheduler}",
        f"--lr_warmup_steps={cfg.lr_warmup_steps}",
        f"--mixed_precision={cfg.mixed_precision}",
        "--save_precision=fp16",
        "--sdpa",
        "--cache_latents",
        "--cache_latents_to_disk",
        f"--seed={cfg.seed}",
        f"--noise_offset={cfg.noise_offset:g}",
        f"--save_every_n_steps={cfg.checkpoint_every}",
        f"--gradient_accumulation_steps={cfg.grad_accum}",
        f"--max_grad_norm={cfg.max_grad_norm:g}",
    ]
    if cfg.max_train_steps:
        cmd.append(f"--max_train_steps={cfg.max_train_steps}")
    else:
        cmd.append(f"--max_train_epochs={cfg.epochs}")
    if cfg.train_text_encoder:
        cmd.append(f"--text_encoder_lr={cfg.text_encoder_lr:g}")  # one value applies to both encoders
    else:
        cmd += ["--network_train_unet_only", "--cache_text_encoder_outputs", "--cache_text_encoder_outputs_to_disk"]
    if cfg.gradient_checkpointing:
        cmd.append("--gradient_checkpointing")
    if cfg.min_snr_gamma:
        cmd.append(f"--min_snr_gamma={cfg.min_snr_gamma:g}")
    if cfg.mixed_precision == "fp16":
        cmd.append("--no_half_vae")  # the SDXL VAE produces NaNs in fp16
    if cfg.sample_every and cfg.sample_prompts:
        prompts = cfg.output_dir / f"{cfg.output_name}_sample_prompts.txt"
        atomic_write_text(prompts, "\n".join(cfg.sample_prompts) + "\n")
        cmd += [f"--sample_every_n_steps={cfg.sample_every}", f"--sample_prompts={prompts}"]
    if cfg.resume:
        state = latest_kohya_state(cfg)
        if state:
            cmd.append(f"--resume={state}")
    cmd.append("--save_state")
    return cmd


def latest_kohya_state(cfg: TrainConfig) -> Path | None:
    states = sorted(cfg.output_dir.glob(f"{cfg.output_name}-*-state"), key=lambda p: p.stat().st_mtime)
    return states[-1] if states else None


def train_with_kohya(
    cfg: TrainConfig,
    sd_scripts: Path,
    *,
    on_line: Callable[[str], None] = print,
    accelerate: str | None = None,
) -> Path:
    """Run sd-scripts to completion, streaming its output; returns the LoRA file it wrote."""
    if not (sd_scripts / "sdxl_train_network.py").is_file():
        raise KohyaError(f"{sd_scripts} is not a kohya sd-scripts checkout (sdxl_train_network.py missing)")
    cfg.output_dir.mkdir(parents=True, exist_ok=True)
    ds = atomic_write_text(cfg.output_dir / f"{cfg.output_name}_dataset.toml", dataset_toml(cfg))
    cmd = kohya_command(cfg, sd_scripts, ds, accelerate)
    tail: list[str] = []
    with subprocess.Popen(
        cmd, cwd=sd_scripts, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip("\n")
            tail = [*tail[-39:], line]
            on_line(line)
        code = proc.wait()
    if code != 0:
        raise KohyaError(f"sdxl_train_network.py exited with {code}:\n" + "\n".join(tail))
    if not cfg.output_file.is_file():
        raise KohyaError(f"kohya finished but {cfg.output_file} was not written:\n" + "\n".join(tail))
    return cfg.output_file
