"""Use case: augment the approved images and caption them (the manual's augment_and_caption.py)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ai_influencer.dataset.augment import AugmentResult, augment_and_caption
from ai_influencer.dataset.vlm_captions import CaptionStats, VlmCaptioner
from ai_influencer.openrouter import OpenRouterClient
from ai_influencer.prompt_bank import load_prompt_bank


@dataclass
class AugmentOutcome:
    result: AugmentResult
    captions: CaptionStats | None = None  # VLM captioning: paid, cached, fell back

    def summary(self) -> dict[str, object]:
        out: dict[str, object] = {
            "images": len(self.result.images),
            "captions": len(self.result.captions),
            "errors": self.result.errors,
        }
        if self.captions is not None:
            st = self.captions
            out["vlm"] = {"cached": st.cached, "paid": st.paid, "fallback": st.fallback, "cost_usd": st.cost_usd}
        return out


def augment(
    in_dir: Path,
    out_dir: Path,
    captions_dir: Path,
    *,
    prompt_bank: Path,
    manifest: Path | None = None,
    num_aug: int = 1,
    seed: int = 137,
    size: int = 1024,
    kohya_repeats: int | None = None,
    vlm_model: str | None = None,
    client: Callable[[], OpenRouterClient] | None = None,
) -> AugmentOutcome:
    """Albumentations variants plus captions from the generation manifest, or from a vision model.

    ``client`` makes the OpenRouter client, asked only when ``vlm_model`` is set. A manifest that
    does not exist is ignored (captions then come from the prompt bank's defaults).
    """
    bank = load_prompt_bank(prompt_bank)
    captioner = None
    if vlm_model:
        if client is None:
            raise ValueError("VLM captions need an OpenRouter client")
        captioner = VlmCaptioner.for_bank(client(), vlm_model, bank, captions_dir)
    result = augment_and_caption(
        in_dir,
        out_dir,
        captions_dir,
        manifest=manifest if manifest is not None and manifest.is_file() else None,
        num_aug=num_aug,
        seed=seed,
        size=size,
        bank=bank,
        kohya_repeats=kohya_repeats,
        caption_for=captioner,
    )
    return AugmentOutcome(result, captioner.stats if captioner is not None else None)
