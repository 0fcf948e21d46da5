"""Kohya-format LoRA files: the format ComfyUI, A1111 and diffusers all load.

PEFT keeps LoRA weights under diffusers module names (``down_blocks.1.attentions.0…
to_q.lora_A.weight``) without alpha. Kohya files name UNet modules the SGM way
(``lora_unet_input_blocks_4_1_…_to_q.lora_down.weight``) and carry an explicit
``.alpha`` per module, which every loader uses for the scale alpha/rank (ComfyUI
uses 1.0 when it is missing, so a file without it is too strong). diffusers'
own ``convert_state_dict_to_kohya`` writes alpha = rank and keeps diffusers block
names, so we convert here.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

PEFT_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.default)?\.weight$")


def unet_module_to_sgm(module: str, layers_per_block: int) -> str:
    """diffusers UNet module path -> SGM (original SDXL) path, for the transformer blocks LoRA targets."""
    parts = module.split(".")
    if parts[0] == "down_blocks" and parts[2] == "attentions":
        i, j = int(parts[1]), int(parts[3])
        return ".".join(["input_blocks", str(1 + i * (layers_per_block + 1) + j), "1", *parts[4:]])
    if parts[0] == "up_blocks" and parts[2] == "attentions":
        i, j = int(parts[1]), int(parts[3])
        return ".".join(["output_blocks", str(i * (layers_per_block + 2) + j), "1", *parts[4:]])
    if parts[0] == "mid_block" and parts[1] == "attentions":
        return ".".join(["middle_block", "1", *parts[3:]])
    raise ValueError(f"no SGM name for UNet module {module!r} (LoRA only targets transformer blocks)")


def to_kohya(
    peft_state: dict[str, Any], prefix: str, alpha: float, *, layers_per_block: int | None = None
) -> dict[str, Any]:
    """One model's PEFT LoRA state dict -> kohya keys with ``prefix`` (lora_unet / lora_te1 / lora_te2)."""
    import torch

    out: dict[str, Any] = {}
    for key, tensor in peft_state.items():
        m = PEFT_KEY.match(key)
        if not m:
            raise ValueError(f"unexpected PEFT LoRA key {key!r}")
        module = m.group("module")
        if layers_per_block is not None:
            module = unet_module_to_sgm(module, layers_per_block)
        elif prefix.startswith("lora_te") and not module.startswith("text_model."):
            # transformers 5 dropped CLIPTextModel's ``text_model`` wrapper; kohya names keep it.
            module = f"text_model.{module}"
        name = f"{prefix}_{module.replace('.', '_')}"
        out[f"{name}.lora_{'down' if m.group('ab') == 'A' else 'up'}.weight"] = tensor
        out[f"{name}.alpha"] = torch.tensor(float(alpha))
    return out


def save_kohya(path: Path, tensors: dict[str, Any], metadata: dict[str, str], dtype: str | None = "fp16") -> Path:
    """Write atomically (temp file + rename); safetensors metadata values must be strings."""
    import torch
    from safetensors.torch import save_file

    cast = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32, None: None}[dtype]
    tensors = {
        k: (v.detach().to("cpu", cast if cast is not None and k.endswith(".weight") else v.dtype).contiguous())
        for k, v in tensors.items()
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata={k: str(v) for k, v in metadata.items()})
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


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
