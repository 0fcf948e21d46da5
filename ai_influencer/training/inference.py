"""Local generation with the trained LoRA: the user's SDXL, fully offline, LoRA at a chosen strength."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ai_influencer.io import atomic_write_bytes
from ai_influencer.options.evaluate import SampleOptions
from ai_influencer.training.loading import load_sdxl

_SAMPLE = SampleOptions()  # the defaults of local generation (options.evaluate)


@dataclass(frozen=True)
class LocalGenParams:
    steps: int = _SAMPLE.steps
    guidance: float = _SAMPLE.guidance
    width: int = _SAMPLE.size
    height: int = _SAMPLE.size
    strength: float = _SAMPLE.strength
    negative_prompt: str = ""
    seed: int = _SAMPLE.seed

    @classmethod
    def from_options(cls, options: SampleOptions) -> LocalGenParams:
        """Square images of ``options.size``, the options' steps, guidance, LoRA strength and seed."""
        return cls(
            steps=options.steps, guidance=options.guidance, width=options.size, height=options.size,
            strength=options.strength, seed=options.seed,
        )  # fmt: skip


def best_device() -> tuple[str, Any]:
    import torch

    if torch.cuda.is_available():
        return "cuda", torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return "cpu", torch.float32


class LocalGenerator:
    """One loaded SDXL pipeline; LoRA files are swapped in and out without reloading the base."""

    def __init__(self, base: Path, config_dir: Path | None = None, device: str | None = None) -> None:
        dev, dtype = best_device()
        self.device = device or dev
        self.pipe = load_sdxl(base, config_dir, dtype=dtype if self.device != "cpu" else None)
        self.pipe.to(self.device)
        self.pipe.set_progress_bar_config(disable=True)
        self._lora: Path | None = None

    def use_lora(self, lora: Path | None, strength: float = _SAMPLE.strength) -> None:
        if self._lora is not None:
            self.pipe.unload_lora_weights()
            self._lora = None
        if lora is not None:
            if not Path(lora).is_file():
                raise FileNotFoundError(f"LoRA file {lora} not found (train first: influencer train)")
            self.pipe.load_lora_weights(str(lora), adapter_name="persona")
            self.pipe.set_adapters(["persona"], adapter_weights=[strength])
            self._lora = Path(lora)

    def generate(self, prompts: Sequence[str], params: LocalGenParams) -> list[Any]:
        """PIL images, one per prompt; prompt i uses seed ``params.seed + i`` (reproducible per prompt)."""
        import torch

        images = []
        for i, prompt in enumerate(prompts):
            gen = torch.Generator("cpu").manual_seed(params.seed + i)
            out = self.pipe(
                prompt,
                negative_prompt=params.negative_prompt or None,
                num_inference_steps=params.steps,
                guidance_scale=params.guidance,
                width=params.width,
                height=params.height,
                generator=gen,
            )
            images.append(out.images[0])
        return images


def save_images(images: Sequence[Any], out_dir: Path, stem: str) -> list[Path]:
    import io

    paths = []
    for i, im in enumerate(images):
        buf = io.BytesIO()
        im.save(buf, format="PNG")
        paths.append(atomic_write_bytes(out_dir / f"{stem}-{i:03d}.png", buf.getvalue()))
    return paths
