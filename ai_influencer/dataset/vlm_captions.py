"""Optional VLM captions: an OpenRouter vision model describes each accepted image.

Manifest captions only know what we *asked* for (scene, light, outfit); a vision
model says what the image *shows*, which is what a LoRA should be conditioned on.
The answer is structured JSON (caption + tags) validated with pydantic; the
persona's identity traits are left out on purpose (the trigger token carries
identity), and the trigger phrase is always the caption's start. Results are
cached per image content + model + instruction version, so a re-run never pays
twice; any failure falls back to the manifest caption for that image.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel, Field

from ai_influencer.io import atomic_write_json, file_sha256
from ai_influencer.openrouter import OpenRouterClient, OpenRouterError
from ai_influencer.openrouter.data_urls import image_to_data_url
from ai_influencer.prompt_bank import PromptBank

log = logging.getLogger(__name__)
INSTRUCTION_VERSION = "v1"
INSTRUCTION = (
    "You caption images for training an image model on one person. Describe what is visible: clothing, pose, "
    "expression, setting, lighting, camera framing. Do NOT describe the person's identity traits (face shape, "
    "eye colour, hair colour, skin, ethnicity, age) and do not name anyone. Return JSON with 'caption' (one "
    "line, comma-separated phrases, at most 40 words) and 'tags' (up to 12 short tags)."
)


class VlmCaption(BaseModel):
    caption: str = Field(min_length=3, max_length=600)
    tags: list[str] = Field(default_factory=list, max_length=30)


@dataclass
class CaptionStats:
    cached: int = 0
    paid: int = 0
    fallback: int = 0
    cost_usd: float = 0.0
    errors: list[str] = field(default_factory=list)


class VlmCaptioner:
    """``caption_for`` for augment_and_caption: (image, manifest caption) -> caption."""

    def __init__(self, client: OpenRouterClient, model: str, *, trigger: str, class_word: str, cache_dir: Path) -> None:
        self.client = client
        self.model = model
        self.prefix = f"{trigger} {class_word}"
        self.trigger = trigger
        self.cache_dir = cache_dir
        self.stats = CaptionStats()

    @classmethod
    def for_bank(cls, client: OpenRouterClient, model: str, bank: PromptBank, captions_dir: Path) -> VlmCaptioner:
        """The persona's trigger phrase, and the cache in ``<captions>/.vlm_cache`` (one convention for all callers)."""
        return cls(
            client,
            model,
            trigger=bank.persona.trigger_token,
            class_word=bank.persona.class_word,
            cache_dir=captions_dir / ".vlm_cache",
        )

    def _cache_file(self, image: Path) -> Path:
        digest = file_sha256(image)
        key = hashlib.sha256(f"{digest}:{self.model}:{INSTRUCTION_VERSION}".encode()).hexdigest()[:32]
        return self.cache_dir / f"{key}.json"

    def finish(self, text: str) -> str:
        """Trigger phrase first, exactly once; one line."""
        body = " ".join(text.split())
        body = re.sub(rf"\b{re.escape(self.trigger)}\b\s*", "", body, flags=re.IGNORECASE).strip(" ,")
        return f"{self.prefix}, {body}" if body else self.prefix

    def __call__(self, image: Path, fallback: str) -> str:
        cache = self._cache_file(image)
        if cache.is_file():
            try:
                self.stats.cached += 1
                return self.finish(json.loads(cache.read_text())["caption"])
            except (OSError, ValueError, KeyError):
                log.warning("ignoring unreadable caption cache %s", cache)
        messages = [
            {"role": "system", "content": INSTRUCTION},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Caption this image."},
                    {"type": "image_url", "image_url": {"url": image_to_data_url(image)}},
                ],
            },
        ]
        try:
            answer, result = self.client.chat_json(self.model, messages, VlmCaption)
        except OpenRouterError as exc:
            self.stats.fallback += 1
            self.stats.errors.append(f"{image.name}: {exc}")
            log.warning("VLM caption failed for %s (%s); using the manifest caption", image.name, exc)
            return fallback
        self.stats.paid += 1
        self.stats.cost_usd += result.usage.cost or 0.0
        atomic_write_json(
            cache,
            {
                "caption": answer.caption,
                "tags": answer.tags,
                "model": result.model,
                "generation_id": result.id,
                "cost_usd": result.usage.cost,
                "image": image.name,
            },
        )
        return self.finish(answer.caption)
