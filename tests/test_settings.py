from __future__ import annotations

from pathlib import Path

import pytest

from ai_influencer.settings import MissingApiKeyError, Settings


def test_env_names_match_the_manual(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENROUTER_API_KEY", "sk-or-secret-value")
    monkeypatch.setenv("OPENROUTER_BASE_URL", "http://127.0.0.1:9/api/v1")
    monkeypatch.setenv("OPENROUTER_APP_TITLE", "Persona Lab")
    monkeypatch.setenv("INFLUENCER_DATA_ROOT", "/srv/data")
    s = Settings(_env_file=None)
    assert s.require_api_key().get_secret_value() == "sk-or-secret-value"
    assert s.openrouter_base_url == "http://127.0.0.1:9/api/v1"
    assert s.openrouter_app_title == "Persona Lab"
    assert s.data_root == Path("/srv/data")
    assert "sk-or-secret-value" not in repr(s) and "sk-or-secret-value" not in s.model_dump_json()


def test_dotenv_file_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENROUTER_API_KEY", raising=False)
    env = tmp_path / ".env"
    env.write_text("OPENROUTER_API_KEY=sk-or-from-dotenv\nINFLUENCER_TEXT_MODEL=x/y\n")
    s = Settings(_env_file=env)
    assert s.require_api_key().get_secret_value() == "sk-or-from-dotenv"
    assert s.text_model == "x/y"


def test_missing_key_error_says_what_to_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENROUTER_API_KEY", raising=False)
    with pytest.raises(MissingApiKeyError, match="OPENROUTER_API_KEY"):
        Settings(_env_file=None).require_api_key()
