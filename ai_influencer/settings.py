"""The single configuration object of the project.

Every layer (CLI, flows, hub, GUI) reads configuration through ``Settings`` so
a value has exactly one name and one default. Values come from the process
environment first, then from a ``.env`` file in the working directory. The
OpenRouter variables keep the exact names users know from the manual
(``OPENROUTER_API_KEY`` ...); everything else is prefixed ``INFLUENCER_``.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_BASE_URL = "https://openrouter.ai/api/v1"


class Settings(BaseSettings):
    """Process-wide configuration; see README "Configuration" for every variable."""

    model_config = SettingsConfigDict(
        env_prefix="INFLUENCER_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        populate_by_name=True,
    )

    # --- OpenRouter (names match the manual users come from) -------------------
    openrouter_api_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("OPENROUTER_API_KEY", "openrouter_api_key")
    )
    openrouter_base_url: str = Field(
        default=DEFAULT_BASE_URL, validation_alias=AliasChoices("OPENROUTER_BASE_URL", "openrouter_base_url")
    )
    openrouter_app_title: str = Field(
        default="ai-influencer",
        validation_alias=AliasChoices("OPENROUTER_APP_TITLE", "openrouter_app_title"),
    )
    openrouter_app_url: str | None = Field(
        default=None, validation_alias=AliasChoices("OPENROUTER_APP_URL", "openrouter_app_url")
    )
    openrouter_timeout_s: float = 120.0
    openrouter_max_retries: int = Field(default=5, ge=0, le=20)
    openrouter_retry_cap_s: float = Field(default=60.0, gt=0)
    models_cache_ttl_s: float = Field(default=600.0, ge=0)

    credentials_block: str = "openrouter"

    # --- Prefect orchestration defaults ---------------------------------------------
    image_rate_limit_name: str = "openrouter-image-rate"
    image_rate_per_s: float = Field(default=2.0, gt=0)
    image_inflight_limit_name: str = "openrouter-image-inflight"
    image_max_inflight: int = Field(default=8, ge=1)
    task_retries: int = Field(default=3, ge=0)
    task_retry_delay_s: float = Field(default=10.0, ge=0)

    # --- default models ----------------------------------------------------------
    text_model: str = "meta-llama/llama-3.1-70b-instruct"
    image_model: str = "google/gemini-2.5-flash-image"
    vision_model: str = "google/gemini-2.5-flash"

    # --- filesystem roots ----------------------------------------------------------
    data_root: Path = Path("data")
    models_root: Path = Path("models")
    prompt_bank: Path = Path("prompt_bank/default.yaml")

    # --- vision ---------------------------------------------------------------------
    # dlib (public-domain models) unless InsightFace is chosen by name: its buffalo_l models are NON-COMMERCIAL.
    # "auto" is accepted for old .env files and means dlib.
    face_backend: Literal["auto", "dlib", "insightface"] = "dlib"
    insightface_root: Path = Path("models/insightface")
    onnx_providers: list[str] = Field(default_factory=lambda: ["CPUExecutionProvider"])
    rembg_model: str = "u2net_human_seg"
    rembg_home: Path = Path("models/rembg")

    # --- control hub -------------------------------------------------------------------
    hub_token: SecretStr | None = None  # required on every POST; `influencer hub` makes one per start if unset
    hub_host: str = "127.0.0.1"
    hub_port: int = 8000
    hub_max_upload_mb: float = 10.0
    hub_deployment: str = "hybrid/hybrid-local"

    # --- training ---------------------------------------------------------------------
    kohya_path: Path | None = None  # an sd-scripts checkout: train with kohya instead of the built-in trainer

    def require_api_key(self) -> SecretStr:
        """Return the key or fail with the exact variable to set (never the value)."""
        if self.openrouter_api_key is None or not self.openrouter_api_key.get_secret_value().strip():
            raise MissingApiKeyError(
                "No OpenRouter API key configured: set OPENROUTER_API_KEY in the environment or .env, "
                "or store it with `influencer set-key`."
            )
        return self.openrouter_api_key


class MissingApiKeyError(RuntimeError):
    """Raised when a paid call is attempted without any configured key."""


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Cached settings for long-lived processes; tests build ``Settings(...)`` directly."""
    return Settings()
