"""Load SDXL fully offline from the user's files (no hub access ever)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


class BaseModelError(FileNotFoundError):
    """The base SDXL model (or its local config) is missing or unusable."""


def load_sdxl(base: Path, config_dir: Path | None = None, dtype: Any = None) -> Any:
    """A StableDiffusionXLPipeline from a diffusers folder or a single .safetensors checkpoint.

    A single file needs the diffusers configs and tokenizers next to it (``config_dir``,
    default ``<base folder>/sdxl_config``): without them diffusers would fetch them from
    the hub. We refuse that and say which folder is missing instead.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from diffusers import StableDiffusionXLPipeline

    base = Path(base)
    if base.is_dir():
        if not (base / "model_index.json").is_file():
            raise BaseModelError(f"{base} is a folder but not a diffusers model (model_index.json missing)")
        return StableDiffusionXLPipeline.from_pretrained(base, torch_dtype=dtype, local_files_only=True)
    if not base.is_file():
        raise BaseModelError(
            f"base model {base} not found: put an SDXL checkpoint there (e.g. sd_xl_base_1.0.safetensors) "
            "or pass a diffusers folder"
        )
    cfg = Path(config_dir) if config_dir else base.parent / "sdxl_config"
    if not (cfg / "model_index.json").is_file():
        raise BaseModelError(
            f"{base} is a single file; its diffusers config folder {cfg} (model_index.json, unet/, vae/, "
            "text_encoder*/, tokenizer*/, scheduler/) is missing. See docs/training.md."
        )
    return StableDiffusionXLPipeline.from_single_file(
        str(base), config=str(cfg), local_files_only=True, torch_dtype=dtype
    )
