"""Latents and text embeddings, computed once per (image content, bucket, caption, base model) and kept on disk.

Caching them is what makes SDXL LoRA fit and run fast: after the first pass the VAE and the text encoders
can leave the GPU, and a resumed or repeated run with the same data skips encoding altogether.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from ai_influencer.io import atomic_write
from ai_influencer.training.data import Item, prepare_image


def encode_text(pipe: Any, captions: list[str], device: Any) -> tuple[Any, Any]:
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


class LatentCache:
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


def base_id(base: Path) -> str:
    """The base model as the cache keys see it: a changed or replaced file invalidates its entries."""
    st = base.stat()
    return f"{base.resolve()}:{st.st_size}:{int(st.st_mtime)}"


def cache_latents(
    pipe: Any, items: list[Item], buckets: list[tuple[int, int]], cache: LatentCache, device: Any
) -> list:
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


def cache_text(pipe: Any, items: list[Item], cache: LatentCache, device: Any) -> list:
    import torch

    text = []
    for it in items:
        path = cache.path("text", it.caption)
        entry = cache.get(path)
        if entry is None:
            with torch.no_grad():
                emb, pooled = encode_text(pipe, [it.caption], device)
            entry = {"prompt_embeds": emb[0].float(), "pooled": pooled[0].float()}
            cache.put(path, entry)
        text.append(entry)
    return text
