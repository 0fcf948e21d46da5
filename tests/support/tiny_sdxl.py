"""A tiny random SDXL pipeline saved in diffusers layout, built offline from small configs.

It has the real SDXL architecture classes (UNet2DConditionModel with text-time
conditioning, two CLIP text encoders, AutoencoderKL) and SDXL's real UNet
*topology*: the same down/up block types and counts, two layers per block and
attention in the same levels, so every module name and index (``up_blocks.1.
attentions.2``, ``output_blocks.5.1``) exists exactly as in the full-size model;
only the widths are tiny (and one transformer layer per block), so the real
training, export and generation code runs on CPU in seconds. A smaller topology
once hid a wrong decoder numbering: where indices coincide, bugs hide.

Nothing is downloaded: the tokenizer's BPE files are written here (the same toy
vocabulary the transformers CLIP tokenizer tests use). A built model is reused
only if its recorded fingerprint (all configs below) matches, so changing the
topology can never silently test against an old model.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

VOCAB = [
    "l", "o", "w", "e", "r", "s", "t", "i", "d", "n", "lo", "l</w>", "w</w>", "r</w>", "t</w>",
    "low</w>", "er</w>", "lowest</w>", "newer</w>", "wider", "<unk>", "<|startoftext|>", "<|endoftext|>",
]  # fmt: skip
MERGES = "#version: 0.2\nl o\nlo w</w>\ne r</w>\n"

TINY_UNET: dict[str, Any] = {
    # SDXL's topology (see ai_influencer.training.sdxl_layout.SDXL_UNET_CONFIG) ...
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "layers_per_block": 2,
    "addition_embed_type": "text_time",
    "use_linear_projection": True,
    "in_channels": 4,
    "out_channels": 4,
    # ... with tiny widths and one transformer layer per attention block
    "block_out_channels": [16, 32, 32],
    "norm_num_groups": 8,
    "transformer_layers_per_block": [1, 1, 1],
    "attention_head_dim": [2, 4, 4],
    "cross_attention_dim": 64,  # te1 hidden 32 + te2 hidden 32
    "addition_time_embed_dim": 8,
    "projection_class_embeddings_input_dim": 80,  # 6 time ids x 8 + te2 pooled 32
    "sample_size": 32,
}
TINY_VAE: dict[str, Any] = {
    "block_out_channels": [32, 64],
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 4,
    "sample_size": 128,
    "down_block_types": ["DownEncoderBlock2D"] * 2,
    "up_block_types": ["UpDecoderBlock2D"] * 2,
}
TINY_CLIP: dict[str, Any] = {
    "bos_token_id": 0,
    "eos_token_id": 2,
    "hidden_size": 32,
    "intermediate_size": 37,
    "layer_norm_eps": 1e-5,
    "num_attention_heads": 4,
    "num_hidden_layers": 5,
    "pad_token_id": 1,
    "vocab_size": 1000,
    "hidden_act": "gelu",
    "projection_dim": 32,
}
SCHEDULER: dict[str, Any] = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "steps_offset": 1,
    "beta_schedule": "scaled_linear",
    "timestep_spacing": "leading",
}
BUILD_VERSION = 2  # bump when the build code changes in a way the configs above do not show
MARKER = "tiny_sdxl.json"


def fingerprint(seed: int) -> str:
    spec = [BUILD_VERSION, seed, TINY_UNET, TINY_VAE, TINY_CLIP, SCHEDULER, VOCAB, MERGES]
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def build_tiny_sdxl(out: Path, seed: int = 0) -> Path:
    """Write a tiny SDXL pipeline to ``out`` (diffusers layout) and return ``out``.

    An existing ``out`` is reused only when it was built from the same configs; otherwise
    it is rebuilt. The build goes to a sibling folder renamed into place, so an
    interrupted build is never mistaken for a finished one.
    """
    marker = out / MARKER
    want = fingerprint(seed)
    built = (out / "model_index.json").is_file() and marker.is_file()
    if built and json.loads(marker.read_text()).get("fingerprint") == want:
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        _build(staging, seed)
        (staging / MARKER).write_text(json.dumps({"fingerprint": want, "seed": seed}))
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def _build(out: Path, seed: int) -> None:
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**TINY_UNET)
    vae = AutoencoderKL(**TINY_VAE)
    cfg = CLIPTextConfig(**TINY_CLIP)
    te1, te2 = CLIPTextModel(cfg), CLIPTextModelWithProjection(cfg)
    with tempfile.TemporaryDirectory() as tok_dir:
        vocab, merges = Path(tok_dir) / "vocab.json", Path(tok_dir) / "merges.txt"
        vocab.write_text(json.dumps({t: i for i, t in enumerate(VOCAB)}))
        merges.write_text(MERGES)
        tok = CLIPTokenizer(str(vocab), str(merges), unk_token="<unk>", model_max_length=77)
        pipe = StableDiffusionXLPipeline(
            unet=unet,
            scheduler=EulerDiscreteScheduler(**SCHEDULER),
            vae=vae,
            text_encoder=te1,
            tokenizer=tok,
            text_encoder_2=te2,
            tokenizer_2=tok,
            image_encoder=None,
            feature_extractor=None,
        )
        pipe.save_pretrained(out)
