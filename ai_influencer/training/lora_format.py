"""Kohya-format LoRA files: the format ComfyUI, A1111 and diffusers all load.

PEFT keeps LoRA weights under diffusers module names (``down_blocks.1.attentions.0…
to_q.lora_A.weight``) without alpha. Kohya files name UNet modules the SGM way
(``lora_unet_input_blocks_4_1_…_to_q.lora_down.weight``) and carry an explicit
``.alpha`` per module, which every loader uses for the scale alpha/rank (ComfyUI
uses 1.0 when it is missing, so a file without it is too strong). diffusers'
own ``convert_state_dict_to_kohya`` writes alpha = rank and keeps diffusers block
names, so we convert here; the SGM numbering comes from the UNet's config
(``sdxl_layout``). How the result is checked against the real consumers:
docs/lora-compatibility.md.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ai_influencer.io import atomic_write
from ai_influencer.training.sdxl_layout import SgmLayout

PEFT_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.default)?\.weight$")


def unet_module_to_sgm(module: str, unet_config: Mapping[str, Any] | Any) -> str:
    """diffusers UNet module path -> SGM (original SDXL) path, numbered for this UNet's topology."""
    return SgmLayout.from_config(unet_config).to_sgm(module)


def to_kohya(
    peft_state: Mapping[str, Any], prefix: str, alpha: float, *, unet_config: Mapping[str, Any] | Any = None
) -> dict[str, Any]:
    """One model's PEFT LoRA state dict -> kohya keys with ``prefix`` (lora_unet / lora_te1 / lora_te2).

    UNet modules are renamed to SGM names when ``unet_config`` is given (it must be for lora_unet).
    """
    import torch

    if prefix == "lora_unet" and unet_config is None:
        raise ValueError("kohya UNet names depend on the UNet's topology: pass its config (unet.config)")
    layout = SgmLayout.from_config(unet_config) if unet_config is not None else None
    out: dict[str, Any] = {}
    for key, tensor in peft_state.items():
        m = PEFT_KEY.match(key)
        if not m:
            raise ValueError(f"unexpected PEFT LoRA key {key!r}")
        module = m.group("module")
        if layout is not None:
            module = layout.to_sgm(module)
        elif prefix.startswith("lora_te") and not module.startswith("text_model."):
            # transformers 5's CLIPTextModel has no ``text_model`` wrapper (the WithProjection one has); kohya keeps it.
            module = f"text_model.{module}"
        name = f"{prefix}_{module.replace('.', '_')}"
        out[f"{name}.lora_{'down' if m.group('ab') == 'A' else 'up'}.weight"] = tensor
        out[f"{name}.alpha"] = torch.tensor(float(alpha))
    return out


def _peft_state(model_or_state: Any) -> Mapping[str, Any]:
    if isinstance(model_or_state, Mapping):
        return model_or_state
    from peft.utils import get_peft_model_state_dict

    return get_peft_model_state_dict(model_or_state)


def export_kohya_lora(
    path: Path,
    unet: Any,
    unet_config: Mapping[str, Any] | Any,
    *,
    alpha: float,
    text_encoders: tuple[Any, Any] | None = None,
    metadata: Mapping[str, str] | None = None,
    dtype: str | None = "fp16",
) -> Path:
    """Write a kohya-format SDXL LoRA file (atomically, mode 0666 & ~umask).

    ``unet`` and each of ``text_encoders`` (te1, te2) is a model with PEFT LoRA layers or its
    PEFT state dict (``get_peft_model_state_dict``); ``unet_config`` is the UNet's config,
    which fixes the SGM block numbering. ``alpha`` is the trained lora_alpha (the file's
    scale is alpha / rank).
    """
    tensors = to_kohya(_peft_state(unet), "lora_unet", alpha, unet_config=unet_config)
    if text_encoders is not None:
        for prefix, te in zip(("lora_te1", "lora_te2"), text_encoders, strict=True):
            if te is not None:
                tensors |= to_kohya(_peft_state(te), prefix, alpha)
    return save_kohya(path, tensors, dict(metadata or {}), dtype)


def save_kohya(path: Path, tensors: dict[str, Any], metadata: dict[str, str], dtype: str | None = "fp16") -> Path:
    """Write atomically; safetensors metadata values must be strings."""
    import torch
    from safetensors.torch import save_file

    cast = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32, None: None}[dtype]
    tensors = {
        k: (v.detach().to("cpu", cast if cast is not None and k.endswith(".weight") else v.dtype).contiguous())
        for k, v in tensors.items()
    }
    meta = {k: str(v) for k, v in metadata.items()}
    return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))


def read_kohya(path: Path) -> tuple[dict[str, Any], dict[str, str]]:
    from safetensors import safe_open

    tensors: dict[str, Any] = {}
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        for k in f.keys():  # noqa: SIM118 - safe_open has keys(), not __iter__
            tensors[k] = f.get_tensor(k)
    return tensors, meta


def kohya_metadata(**fields: Any) -> dict[str, str]:
    """ss_* fields as kohya writes them (all strings; dicts/lists as JSON)."""
    meta = {}
    for k, v in fields.items():
        meta[k if k.startswith(("ss_", "modelspec.", "sshs_")) else f"ss_{k}"] = (
            json.dumps(v) if isinstance(v, dict | list) else str(v)
        )
    return meta
