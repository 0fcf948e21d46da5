"""Where each diffusers UNet module lives in SDXL's original (SGM/LDM) UNet, derived from the UNet's config.

kohya, ComfyUI and A1111 name UNet modules the way Stability's SGM code builds the
UNet: ``input_blocks.N`` / ``middle_block.N`` / ``output_blocks.N``, each a list of
layers (``.0`` resnet, ``.1`` transformer, ``.1``/``.2`` up- or downsampler). diffusers
groups the same modules by resolution level (``down_blocks.i.attentions.j``). The
numbering that connects them depends on the topology, so it is computed here from
the UNet's own config, never from a constant:

* encoder: ``input_blocks.0`` is conv_in; each down level i contributes
  ``layers_per_block[i]`` blocks (resnet, + transformer if the level has attention),
  then one block holding the downsampler, except after the last level;
* middle: resnet, transformer, resnet;
* decoder: up level i contributes ``reversed(layers_per_block)[i] + 1`` blocks (diffusers'
  up blocks have one resnet more than the down blocks: they also consume the
  skip connection of the downsampler); the upsampler sits in the level's last block.

For SDXL (layers_per_block 2) that gives ``up_blocks.i.attentions.j ->
output_blocks.{3i + j}.1``; ``i * (layers_per_block + 2) + j`` is wrong for i > 0.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# The full-size SDXL base UNet (stabilityai/stable-diffusion-xl-base-1.0 unet/config.json; kohya's
# DIFFUSERS_SDXL_UNET_CONFIG): used to check names on the real topology (meta device, no weights).
SDXL_UNET_CONFIG: dict[str, Any] = {
    "sample_size": 128,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    "block_out_channels": (320, 640, 1280),
    "layers_per_block": 2,
    "transformer_layers_per_block": (1, 2, 10),
    "attention_head_dim": (5, 10, 20),
    "cross_attention_dim": 2048,
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816,
}
# CLIP ViT-L/14 (te1) and OpenCLIP ViT-bigG/14 (te2), as transformers configures them for SDXL.
SDXL_TE1_CONFIG: dict[str, Any] = {
    "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
    "projection_dim": 768, "hidden_act": "quick_gelu",
}  # fmt: skip
SDXL_TE2_CONFIG: dict[str, Any] = {
    "hidden_size": 1280, "intermediate_size": 5120, "num_hidden_layers": 32, "num_attention_heads": 20,
    "projection_dim": 1280, "hidden_act": "gelu",
}  # fmt: skip

# diffusers ResnetBlock2D layer -> SGM ResBlock layer
RESNET_TO_SGM = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
# modules outside the block structure: diffusers name -> SGM name
PLAIN_TO_SGM = {
    "conv_in": "input_blocks.0.0",
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}


class NoSgmNameError(ValueError):
    """A diffusers UNet module that has no counterpart in the SGM UNet of this topology."""


def config_dict(config: Mapping[str, Any] | Any) -> dict[str, Any]:
    """A diffusers config (FrozenDict, dict, or an object with attributes) as a plain dict."""
    if isinstance(config, Mapping):
        return dict(config)
    if hasattr(config, "to_dict"):
        return dict(config.to_dict())
    return dict(vars(config))


def _per_level(value: int | list[int] | tuple[int, ...], levels: int, name: str) -> list[int]:
    if isinstance(value, int):
        return [value] * levels
    if len(value) != levels:
        raise ValueError(f"UNet config: {name} has {len(value)} entries for {levels} levels")
    return [int(v) for v in value]


def _has_attention(block_type: str) -> bool:
    # CrossAttnDownBlock2D, AttnDownBlock2D, SimpleCrossAttnUpBlock2D, ... all put a transformer at SGM slot 1
    return "Attn" in block_type


@dataclass(frozen=True)
class SgmLayout:
    """diffusers container prefix (``up_blocks.1.attentions.0``) -> (SGM prefix, kind) for one UNet topology."""

    blocks: dict[str, tuple[str, str]]

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | Any) -> SgmLayout:
        cfg = config_dict(config)
        down, up = list(cfg["down_block_types"]), list(cfg["up_block_types"])
        if len(down) != len(up):
            raise ValueError(f"UNet config: {len(down)} down blocks but {len(up)} up blocks")
        layers = _per_level(cfg.get("layers_per_block", 2), len(down), "layers_per_block")
        blocks: dict[str, tuple[str, str]] = {}
        n = 1  # input_blocks.0 is conv_in
        for i, kind in enumerate(down):
            for j in range(layers[i]):
                blocks[f"down_blocks.{i}.resnets.{j}"] = (f"input_blocks.{n}.0", "resnet")
                if _has_attention(kind):
                    blocks[f"down_blocks.{i}.attentions.{j}"] = (f"input_blocks.{n}.1", "attention")
                n += 1
            if i < len(down) - 1:
                blocks[f"down_blocks.{i}.downsamplers.0"] = (f"input_blocks.{n}.0", "downsampler")
                n += 1
        mid = cfg.get("mid_block_type", "UNetMidBlock2DCrossAttn")
        if mid is not None:
            blocks["mid_block.resnets.0"] = ("middle_block.0", "resnet")
            if _has_attention(mid):
                blocks["mid_block.attentions.0"] = ("middle_block.1", "attention")
                blocks["mid_block.resnets.1"] = ("middle_block.2", "resnet")
            else:
                blocks["mid_block.resnets.1"] = ("middle_block.1", "resnet")
        n = 0
        for i, (kind, lpb) in enumerate(zip(up, reversed(layers), strict=True)):
            per_level = lpb + 1
            for j in range(per_level):
                blocks[f"up_blocks.{i}.resnets.{j}"] = (f"output_blocks.{n}.0", "resnet")
                slot = 1
                if _has_attention(kind):
                    blocks[f"up_blocks.{i}.attentions.{j}"] = (f"output_blocks.{n}.1", "attention")
                    slot = 2
                if j == per_level - 1 and i < len(up) - 1:
                    blocks[f"up_blocks.{i}.upsamplers.0"] = (f"output_blocks.{n}.{slot}", "upsampler")
                n += 1
        for name, sgm in PLAIN_TO_SGM.items():
            blocks[name] = (sgm, "plain")
        return cls(blocks)

    def to_sgm(self, module: str) -> str:
        """diffusers module path (``up_blocks.1.attentions.0.proj_in``) -> SGM path (``output_blocks.3.1.proj_in``)."""
        parts = module.split(".")
        for size in (4, 3, 2, 1):
            hit = self.blocks.get(".".join(parts[:size]))
            if hit is None:
                continue
            sgm, kind = hit
            rest = parts[size:]
            if kind == "attention":  # transformer internals keep their names in SGM
                return ".".join([sgm, *rest])
            if kind == "resnet" and rest and rest[0] in RESNET_TO_SGM:
                return ".".join([sgm, RESNET_TO_SGM[rest[0]], *rest[1:]])
            if kind == "downsampler" and rest == ["conv"]:
                return f"{sgm}.op"
            if kind == "upsampler" and rest == ["conv"]:
                return f"{sgm}.conv"
            if kind == "plain" and not rest:
                return sgm
            break
        raise NoSgmNameError(
            f"UNet module {module!r} has no SGM (kohya/ComfyUI) name in this UNet's layout; "
            "only modules that exist in SDXL's original UNet can be exported"
        )


def sgm_section(name: str) -> str:
    """Report bucket of an SGM UNet module: input / middle / output / other."""
    head = name.split(".", 1)[0]
    return {"input_blocks": "input", "middle_block": "middle", "output_blocks": "output"}.get(head, "other")
