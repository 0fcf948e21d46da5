"""Prompt bank: the YAML file that describes the persona and the content space.

Why a schema: the manual's users edit this file by hand ("add scenes without
breaking the indentation"), so a mistake must be reported with the file, the
line and the field, not as a KeyError deep inside a generation run.

Why deterministic composition: a prompt is part of the content address of a
paid image. The same bank, seed and index must always give the same prompt,
otherwise a re-run would pay again for images it already has. Each scene draws
from its own seeded stream, so adding a scene does not reshuffle the others.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator


class PromptBankError(ValueError):
    """A prompt bank file could not be read; the message names file, line and field."""


class Option(BaseModel):
    """One value of a category (scene, lighting, pose, outfit)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, description="Short id used in captions, manifests and reports.")
    prompt: str = Field(min_length=1, description="Text inserted into the image prompt.")
    weight: float = Field(default=1.0, gt=0, description="Relative sampling weight.")


def _coerce_option(value: Any) -> Any:
    # A bare string is the common hand-written form: "golden hour" -> name and prompt.
    if isinstance(value, str):
        return {"name": value.strip(), "prompt": value.strip()}
    return value


class Persona(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    trigger_token: str = Field(default="ohwx", min_length=1, pattern=r"^\S+$")
    class_word: str = Field(default="woman", min_length=1)
    description: str = Field(min_length=1, description="Identity traits kept in every prompt.")
    personality: str = ""
    niche: str = ""


class CreativeControls(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tone: str = "warm, authentic, aspirational"
    platform: str = "instagram"
    language: str = "en"
    camera: str = "full-frame DSLR, 85mm lens, shallow depth of field"
    style: str = "photorealistic, natural skin texture"
    quality_tags: list[str] = Field(default_factory=lambda: ["high detail", "sharp focus"])
    script_seconds: int = Field(default=30, ge=5, le=600)
    min_caption_seeds: int = Field(default=5, ge=5, le=100)


class PromptBank(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: int = 1
    persona: Persona
    scenes: list[Option] = Field(min_length=1)
    lighting: list[Option] = Field(min_length=1)
    poses: list[Option] = Field(min_length=1)
    outfits: list[Option] = Field(min_length=1)
    negative_prompt: str = ""
    creative_controls: CreativeControls = Field(default_factory=CreativeControls)

    @field_validator("scenes", "lighting", "poses", "outfits", mode="before")
    @classmethod
    def _strings_are_options(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [_coerce_option(v) for v in value]
        return value

    @field_validator("scenes", "lighting", "poses", "outfits")
    @classmethod
    def _unique_names(cls, value: list[Option]) -> list[Option]:
        seen: set[str] = set()
        for opt in value:
            if opt.name in seen:
                raise ValueError(f"duplicate name {opt.name!r}")
            seen.add(opt.name)
        return value


@dataclass(frozen=True)
class PromptSpec:
    """One composed image prompt and the bank values it came from (for captions and drift stats)."""

    scene: str
    lighting: str
    pose: str
    outfit: str
    index: int
    prompt: str
    negative_prompt: str

    def metadata(self) -> dict[str, Any]:
        return {
            "scene": self.scene,
            "lighting": self.lighting,
            "pose": self.pose,
            "outfit": self.outfit,
            "index": self.index,
        }


def _locate(node: yaml.Node | None, loc: tuple[int | str, ...]) -> yaml.Node | None:
    """Walk a composed YAML node tree along a pydantic error location."""
    current = node
    for part in loc:
        if isinstance(current, yaml.MappingNode) and isinstance(part, str):
            nxt = next((v for k, v in current.value if getattr(k, "value", None) == part), None)
        elif isinstance(current, yaml.SequenceNode) and isinstance(part, int) and part < len(current.value):
            nxt = current.value[part]
        else:
            nxt = None
        if nxt is None:
            break
        current = nxt
    return current


def _format_validation(path: Path, root: yaml.Node | None, exc: ValidationError) -> str:
    lines = [f"{path}: invalid prompt bank ({exc.error_count()} problem(s))"]
    for err in exc.errors():
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        node = _locate(root, loc)
        line = f"line {node.start_mark.line + 1}" if node is not None else "line ?"
        field = ".".join(str(p) for p in loc) or "<root>"
        lines.append(f"  {path}:{line.split()[-1]}: field '{field}': {err['msg']}")
    return "\n".join(lines)


def parse_prompt_bank(text: str, source: str | Path = "<string>") -> PromptBank:
    path = Path(source)
    try:
        root = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise PromptBankError(f"{where}: YAML syntax error: {exc.problem or exc}") from None
    except yaml.YAMLError as exc:
        raise PromptBankError(f"{path}: YAML error: {exc}") from None
    if not isinstance(data, dict):
        raise PromptBankError(f"{path}: expected a mapping at the top level (persona, scenes, ...)")
    try:
        return PromptBank.model_validate(data)
    except ValidationError as exc:
        raise PromptBankError(_format_validation(path, root, exc)) from None


def load_prompt_bank(path: str | Path) -> PromptBank:
    """Read and validate a prompt bank file; every failure is a ``PromptBankError``."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PromptBankError(f"{p}: prompt bank file not found") from None
    except UnicodeDecodeError as exc:
        raise PromptBankError(f"{p}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    return parse_prompt_bank(text, p)


def prompt_bank_template(
    *, name: str | None = None, class_word: str | None = None, description: str | None = None
) -> str:
    """The starter prompt bank (``influencer init``) with the persona's name, class word and description
    filled in; what is not given keeps the template's value (and ``doctor`` warns while the persona
    is the template's: captions said ``ohwx woman`` for a male persona).

    The comments and layout of the template are kept (only those lines change), and the result is
    validated like any prompt bank, so a value YAML cannot hold is refused here, not at the first run.
    """
    import json
    import re
    from importlib.resources import files

    text = (files("ai_influencer") / "templates" / "prompt_bank.yaml").read_text(encoding="utf-8")
    for key, value in (("name", name), ("class_word", class_word), ("description", description)):
        if value is None:
            continue
        if not value.strip():
            raise PromptBankError(f"persona.{key} must not be empty")
        # the persona block's own line (two-space indent, right under `persona:`), value as a JSON string:
        # valid YAML for any text
        quoted = json.dumps(value.strip())
        text, n = re.subn(
            rf"^(persona:\n(?:  .*\n)*?  {key}: ).*$", lambda m, q=quoted: m.group(1) + q, text, count=1, flags=re.M
        )
        if n != 1:  # pragma: no cover - the template lost its persona line
            raise PromptBankError(f"the prompt bank template has no persona.{key} line")
    parse_prompt_bank(text, Path("prompt_bank.yaml"))
    return text


def _stream(seed: int, *parts: object) -> random.Random:
    digest = hashlib.sha256(":".join(str(p) for p in (seed, *parts)).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def _pick(rng: random.Random, options: list[Option]) -> Option:
    return rng.choices(options, weights=[o.weight for o in options], k=1)[0]


def identity_phrase(bank: PromptBank) -> str:
    p = bank.persona
    return f"{p.trigger_token} {p.class_word}, {p.description}"


def compose_prompt(bank: PromptBank, scene: Option, lighting: Option, pose: Option, outfit: Option) -> str:
    cc = bank.creative_controls
    parts = [
        f"Photo of {identity_phrase(bank)}",
        scene.prompt,
        f"{pose.prompt}",
        f"wearing {outfit.prompt}",
        f"{lighting.prompt}",
        cc.camera,
        cc.style,
        *cc.quality_tags,
    ]
    return ", ".join(s.strip() for s in parts if s and s.strip())


def compose_prompts(bank: PromptBank, per_scene: int, seed: int) -> list[PromptSpec]:
    """``per_scene`` prompts for every scene, reproducible for a given ``seed``."""
    if per_scene < 1:
        raise ValueError("per_scene must be >= 1")
    specs: list[PromptSpec] = []
    for scene in bank.scenes:
        rng = _stream(seed, scene.name)
        for i in range(per_scene):
            lighting, pose, outfit = (
                _pick(rng, bank.lighting),
                _pick(rng, bank.poses),
                _pick(rng, bank.outfits),
            )
            specs.append(
                PromptSpec(
                    scene=scene.name,
                    lighting=lighting.name,
                    pose=pose.name,
                    outfit=outfit.name,
                    index=i,
                    prompt=compose_prompt(bank, scene, lighting, pose, outfit),
                    negative_prompt=bank.negative_prompt,
                )
            )
    return specs
