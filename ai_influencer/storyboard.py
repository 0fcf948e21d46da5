"""Creative planning (manual step 2): storyboard, spoken script, caption seeds.

The LLM is asked for structured output against the ``Storyboard`` schema, so
the result is validated (>= ``min_caption_seeds`` caption seeds, one shot per
scene) instead of being scraped out of free text.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field

from ai_influencer.io import atomic_write_json
from ai_influencer.openrouter import ChatResult, OpenRouterClient
from ai_influencer.prompt_bank import PromptBank


class Shot(BaseModel):
    scene: str = Field(description="Scene name from the prompt bank.")
    description: str = Field(description="What happens in the shot.")
    lighting: str = Field(description="Lighting name from the prompt bank.")
    outfit: str = Field(description="Outfit name from the prompt bank.")
    pose: str = Field(description="Pose name from the prompt bank.")
    on_screen_text: str = Field(description="Short overlay text, may be empty.")


class Storyboard(BaseModel):
    title: str
    concept: str = Field(description="One-paragraph creative concept.")
    shots: list[Shot] = Field(min_length=1)
    spoken_script: str = Field(description="The voice-over script, in the requested language.")
    caption_seeds: list[str] = Field(min_length=5, description="Social captions to seed post copy.")
    hashtags: list[str]


def planning_messages(bank: PromptBank) -> list[dict[str, str]]:
    p, cc = bank.persona, bank.creative_controls
    options = {
        "scenes": [s.name for s in bank.scenes],
        "lighting": [o.name for o in bank.lighting],
        "outfits": [o.name for o in bank.outfits],
        "poses": [o.name for o in bank.poses],
    }
    system = (
        "You are the creative director of a virtual influencer. Answer only with JSON matching the schema. "
        "Use only the scene, lighting, outfit and pose names you are given."
    )
    user = (
        f"Persona: {p.name} ({p.class_word}), {p.description}. Personality: {p.personality or 'n/a'}. "
        f"Niche: {p.niche or 'n/a'}.\n"
        f"Platform: {cc.platform}. Tone: {cc.tone}. Language: {cc.language}.\n"
        f"Plan one short video/photo set: one shot per scene, a spoken script of about {cc.script_seconds} "
        f"seconds, at least {cc.min_caption_seeds} caption seeds and a few hashtags.\n"
        f"Allowed values: {options}"
    )
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


class PlanError(ValueError):
    """The storyboard came back but does not satisfy the prompt bank's own constraints."""


def plan_storyboard(
    client: OpenRouterClient, bank: PromptBank, model: str, *, temperature: float = 0.8
) -> tuple[Storyboard, ChatResult]:
    board, result = client.chat_json(model, planning_messages(bank), Storyboard, temperature=temperature)
    need = bank.creative_controls.min_caption_seeds
    if len(board.caption_seeds) < need:
        raise PlanError(f"storyboard has {len(board.caption_seeds)} caption seeds, the prompt bank asks for {need}")
    return board, result


def write_storyboard(board: Storyboard, result: ChatResult, out: Path) -> Path:
    payload = board.model_dump(mode="json")
    payload["_meta"] = {"model": result.model, "generation_id": result.id, "usage": result.usage.model_dump()}
    return atomic_write_json(out, payload)
