"""Use case: augment the approved images and caption them (the manual's augment_and_caption.py)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ai_influencer.dataset.augment import AugmentResult, augment_and_caption
from ai_influencer.dataset.vlm_captions import CaptionStats, VlmCaptioner
from ai_influencer.openrouter import OpenRouterClient
from ai_influencer.options.augment import AUGMENT_DEFAULTS, AugmentOptions
from ai_influencer.prompt_bank import load_prompt_bank
from ai_influencer.usecases.results import AugmentSummary, VlmCaptionStats


@dataclass
class AugmentOutcome:
    result: AugmentResult
    captions: CaptionStats | None = None  # VLM captioning: paid, cached, fell back

    def summary(self) -> AugmentSummary:
        r, st = self.result, self.captions
        out = AugmentSummary(images=len(r.images), captions=len(r.captions), errors=r.errors)
        if st is not None:  # set only with VLM captions: else ``run``'s exclude_unset JSON has no ``vlm`` at all
            out.vlm = VlmCaptionStats(cached=st.cached, paid=st.paid, fallback=st.fallback, cost_usd=st.cost_usd)
        return out


def augment(
    in_dir: Path,
    out_dir: Path,
    captions_dir: Path,
    *,
    prompt_bank: Path,
    manifest: Path | None = None,
    options: AugmentOptions = AUGMENT_DEFAULTS,
    client: Callable[[], OpenRouterClient] | None = None,
) -> AugmentOutcome:
    """Albumentations variants plus captions from the generation manifest, or from a vision model.

    ``options`` (``options.augment``): with ``vlm_captions``, ``vlm_model`` names the vision model (resolved
    by the caller from the settings) and ``client`` makes the OpenRouter client, asked only then. A manifest
    that does not exist is ignored (captions then come from the prompt bank's defaults).
    """
    bank = load_prompt_bank(prompt_bank)
    captioner = None
    vlm_model = options.vlm_model if options.vlm_captions else None
    if options.vlm_captions and not vlm_model:
        raise ValueError("vlm_model: VLM captions need a vision model")
    if vlm_model:
        if client is None:
            raise ValueError("VLM captions need an OpenRouter client")
        captioner = VlmCaptioner.for_bank(client(), vlm_model, bank, captions_dir)
    result = augment_and_caption(
        in_dir,
        out_dir,
        captions_dir,
        manifest=manifest if manifest is not None and manifest.is_file() else None,
        num_aug=options.num_aug,
        seed=options.seed,
        size=options.size,
        bank=bank,
        kohya_repeats=options.kohya_repeats or None,
        caption_for=captioner,
    )
    return AugmentOutcome(result, captioner.stats if captioner is not None else None)
