"""README's configuration table and the .env template are generated from the Settings model."""

from __future__ import annotations

from ai_influencer.settings import Settings, env_name, env_template, settings_table
from tests.conftest import REPO

START, END = "<!-- settings-table:start -->", "<!-- settings-table:end -->"


def test_readme_configuration_table_matches_the_settings_model() -> None:
    readme = (REPO / "README.md").read_text()
    assert START in readme and END in readme, "README needs the generated configuration table"
    shown = readme.split(START, 1)[1].split(END, 1)[0].strip() + "\n"
    assert shown == settings_table(), (
        "README's configuration table is out of date: replace it with "
        "`python -c 'from ai_influencer.settings import settings_table; print(settings_table())'`"
    )


def test_every_setting_is_documented_and_in_the_env_template() -> None:
    template = env_template()
    for field, info in Settings.model_fields.items():
        assert info.description, f"setting {field} has no description"
        assert f"# {env_name(field)}=" in template
    assert "OPENROUTER_API_KEY" in settings_table() and "INFLUENCER_IMAGE_RATE_PER_S" in settings_table()


def test_the_checkout_prompt_bank_is_the_one_init_writes() -> None:
    packaged = REPO / "ai_influencer" / "templates" / "prompt_bank.yaml"
    assert (REPO / "prompt_bank" / "default.yaml").read_text() == packaged.read_text()
