from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ai_influencer.prompt_bank import PromptBankError, compose_prompts, load_prompt_bank, parse_prompt_bank
from tests.conftest import REPO

DEFAULT = REPO / "prompt_bank" / "default.yaml"


def test_default_bank_loads_with_all_sections() -> None:
    bank = load_prompt_bank(DEFAULT)
    assert bank.persona.trigger_token == "ohwx"
    assert len(bank.scenes) >= 5 and bank.lighting and bank.poses and bank.outfits
    assert "blurry" in bank.negative_prompt
    assert bank.creative_controls.min_caption_seeds >= 5


def test_composition_is_deterministic_per_seed_and_varies_across_seeds() -> None:
    bank = load_prompt_bank(DEFAULT)
    a, b = compose_prompts(bank, 12, seed=7), compose_prompts(bank, 12, seed=7)
    assert a == b
    assert len(a) == 12 * len(bank.scenes)
    assert a != compose_prompts(bank, 12, seed=8)
    assert all(s.prompt.startswith("Photo of ohwx woman") for s in a)
    assert {s.lighting for s in a} == {o.name for o in bank.lighting}


def test_adding_a_scene_keeps_existing_prompts_stable() -> None:
    data = yaml.safe_load(DEFAULT.read_text())
    before = compose_prompts(parse_prompt_bank(yaml.safe_dump(data)), 4, seed=1)
    data["scenes"].append("rooftop bar at night")
    after = compose_prompts(parse_prompt_bank(yaml.safe_dump(data)), 4, seed=1)
    assert after[: len(before)] == before
    assert after[-1].scene == "rooftop bar at night"


def test_yaml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bank.yaml"
    bad.write_text("persona:\n  name: A\n  description: x\nscenes: [a, b\nlighting: [l]\nposes: {p: 1\n")
    with pytest.raises(PromptBankError) as info:
        load_prompt_bank(bad)
    msg = str(info.value)
    assert str(bad) in msg and ":5:" in msg and "YAML syntax error" in msg


def test_schema_error_names_line_field_and_expectation(tmp_path: Path) -> None:
    bad = tmp_path / "bank.yaml"
    bad.write_text(
        "persona:\n  name: A\n  description: x\n"
        "scenes: [beach]\nlighting: [soft]\nposes: [smile]\n"
        "outfits:\n  - name: dress\n    prompt: red dress\n    weight: -1\n"
    )
    with pytest.raises(PromptBankError) as info:
        load_prompt_bank(bad)
    msg = str(info.value)
    assert f"{bad}:10" in msg
    assert "outfits.0.weight" in msg and "greater than 0" in msg


def test_missing_section_and_unknown_key_are_reported(tmp_path: Path) -> None:
    bad = tmp_path / "bank.yaml"
    bad.write_text("persona:\n  name: A\n  description: x\n  colour: red\nscenes: [beach]\nposes: [p]\noutfits: [o]\n")
    with pytest.raises(PromptBankError) as info:
        load_prompt_bank(bad)
    msg = str(info.value)
    assert "field 'lighting': Field required" in msg
    assert "field 'persona.colour': Extra inputs are not permitted" in msg
    assert f"{bad}:4" in msg


def test_duplicate_names_and_missing_file() -> None:
    with pytest.raises(PromptBankError, match="duplicate name 'a'"):
        parse_prompt_bank(
            "persona: {name: A, description: x}\nscenes: [a, a]\nlighting: [l]\nposes: [p]\noutfits: [o]\n"
        )
    with pytest.raises(PromptBankError, match="not found"):
        load_prompt_bank("/nonexistent/bank.yaml")
    with pytest.raises(PromptBankError, match="mapping at the top level"):
        parse_prompt_bank("- just\n- a list\n")
