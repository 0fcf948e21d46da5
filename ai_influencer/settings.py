"""The single configuration object of the project.

Every layer (CLI, flows, hub, GUI) reads configuration through ``Settings`` so
a value has exactly one name and one default. Values come from the process
environment first, then from a ``.env`` file in the working directory. The
OpenRouter variables keep the exact names users know from the manual
(``OPENROUTER_API_KEY`` ...); everything else is prefixed ``INFLUENCER_``.
Settings are read when a run starts (a command, a flow run), never at import:
a deployment must not carry the deploying machine's environment.

The configuration table in README.md and the ``.env`` template ``influencer
init`` writes are generated from this model (``settings_table``, ``env_template``);
a test fails when README and the model drift apart.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_BASE_URL = "https://openrouter.ai/api/v1"
ENV_PREFIX = "INFLUENCER_"


def _manual(name: str) -> AliasChoices:
    """The OpenRouter variables keep the manual's names (no INFLUENCER_ prefix)."""
    return AliasChoices(name, name.lower())


class Settings(BaseSettings):
    """Process-wide configuration; README "Configuration" lists every variable (generated from here)."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        populate_by_name=True,
    )

    # --- OpenRouter (names match the manual users come from) -------------------
    openrouter_api_key: SecretStr | None = Field(
        default=None,
        validation_alias=_manual("OPENROUTER_API_KEY"),
        description="OpenRouter key; better kept in the Prefect block (`influencer set-key`), which wins.",
    )
    openrouter_base_url: str = Field(
        default=DEFAULT_BASE_URL, validation_alias=_manual("OPENROUTER_BASE_URL"), description="API root."
    )
    openrouter_app_title: str = Field(
        default="ai-influencer", validation_alias=_manual("OPENROUTER_APP_TITLE"), description="Sent as X-Title."
    )
    openrouter_app_url: str | None = Field(
        default=None, validation_alias=_manual("OPENROUTER_APP_URL"), description="Sent as HTTP-Referer."
    )
    openrouter_timeout_s: float = Field(
        default=120.0, gt=0, description="Whole-request deadline (connect, upload, wait, download), seconds."
    )
    openrouter_max_retries: int = Field(
        default=5, ge=0, le=20, description="Retries of 429/5xx/deadline/bad images (the client owns them)."
    )
    openrouter_retry_cap_s: float = Field(default=60.0, gt=0, description="Longest wait between two retries.")
    models_cache_ttl_s: float = Field(default=600.0, ge=0, description="How long the model list is cached.")
    credentials_block: str = Field(default="openrouter", description="Name of the OpenRouter credentials block.")

    # --- Prefect orchestration defaults ---------------------------------------------
    image_rate_limit_name: str = Field(
        default="openrouter-image-rate", description="Global concurrency limit (slot decay) shared by all runs."
    )
    image_rate_per_s: float = Field(
        default=2.0,
        gt=0,
        description="Image requests/s of the shared limit when created; `generate` has none unless --rate.",
    )
    image_inflight_limit_name: str = Field(
        default="openrouter-image-inflight", description="Global concurrency limit of image requests in flight."
    )
    image_max_inflight: int = Field(default=8, ge=1, description="Its size when it is created.")
    video_jobs_limit_name: str = Field(
        default="openrouter-video-jobs", description="Global concurrency limit of video jobs waited for at once."
    )
    task_retries: int = Field(default=3, ge=0, description="Prefect retries of non-HTTP task failures.")
    task_retry_delay_s: float = Field(default=10.0, ge=0, description="First delay between those retries.")

    # --- default models ----------------------------------------------------------
    text_model: str = Field(default="meta-llama/llama-3.1-70b-instruct", description="Planning LLM.")
    image_model: str = Field(default="google/gemini-2.5-flash-image", description="Image generator.")
    vision_model: str = Field(default="google/gemini-2.5-flash", description="Captioning VLM (--vlm-captions).")

    # --- filesystem roots ----------------------------------------------------------
    data_root: Path = Field(default=Path("data"), description="Workspace data folder (input_raw/, cleaned/, ...).")
    models_root: Path = Field(default=Path("models"), description="Models folder (base/, lora/).")
    prompt_bank: Path = Field(default=Path("prompt_bank/default.yaml"), description="Prompt bank YAML.")

    # --- vision ---------------------------------------------------------------------
    face_backend: Literal["auto", "dlib", "insightface"] = Field(
        default="dlib",
        description="dlib (public-domain models) or insightface (buffalo_l: NON-COMMERCIAL); auto = dlib.",
    )
    insightface_root: Path = Field(default=Path("models/insightface"), description="Holds models/buffalo_l/*.onnx.")
    onnx_providers: list[str] = Field(
        default_factory=lambda: ["CPUExecutionProvider"], description="onnxruntime providers, JSON list."
    )
    rembg_model: str = Field(default="u2net_human_seg", description="rembg model for --do-rembg.")
    rembg_home: Path = Field(default=Path("models/rembg"), description="Where rembg models are (offline).")

    # --- control hub -------------------------------------------------------------------
    hub_token: SecretStr | None = Field(
        default=None,
        description="Token of every hub route but the pages and API docs (16+ characters off loopback); "
        "`influencer hub` makes one if unset.",
    )
    hub_host: str = Field(default="127.0.0.1", description="Hub bind address.")
    hub_port: int = Field(default=8000, description="Hub port.")
    hub_max_upload_mb: float = Field(
        default=10.0, gt=0, description="Largest upload to /api/influencer (the whole multipart body)."
    )
    hub_max_json_mb: float = Field(default=1.0, gt=0, description="Largest body of every other hub request (JSON).")
    hub_deployment: str = Field(default="hybrid/hybrid-local", description="Deployment the hub's Start runs.")
    video_webhook_secret: SecretStr | None = Field(
        default=None,
        description="OpenRouter's webhook signing secret: /api/video/webhook checks X-OpenRouter-Signature with it "
        "(else the Prefect Secret block `video_webhook_block`; neither: deliveries are taken unverified).",
    )
    video_webhook_block: str = Field(
        default="openrouter-video-webhook", description="Prefect Secret block with the webhook signing secret."
    )
    prefect_local_server: bool = Field(
        default=True,
        description="With no PREFECT_API_URL: keep one Prefect server per workspace (data/.prefect/) that runs and "
        "the hub share; false: a temporary server per run, its runs gone with it.",
    )

    # --- training ---------------------------------------------------------------------
    kohya_path: Path | None = Field(
        default=None, description="An sd-scripts checkout: train with kohya instead of the built-in trainer."
    )

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


def env_name(field: str) -> str:
    alias = Settings.model_fields[field].validation_alias
    if isinstance(alias, AliasChoices):
        return str(alias.choices[0])
    return ENV_PREFIX + field.upper()


def _shown_default(field: str) -> str:
    info = Settings.model_fields[field]
    value: Any = info.default_factory() if info.default_factory else info.default  # type: ignore[call-arg]
    if value is None:
        return ""
    return f"`{value}`" if not isinstance(value, list) else f"`{value}`".replace("'", '"')


def settings_table() -> str:
    """README's configuration table: every variable, its default and what it is for."""
    lines = ["| variable | default | what |", "|---|---|---|"]
    for field, info in Settings.model_fields.items():
        lines.append(f"| `{env_name(field)}` | {_shown_default(field)} | {info.description or ''} |")
    return "\n".join(lines) + "\n"


def env_template() -> str:
    """A commented ``.env`` with every variable at its default (what ``influencer init`` writes)."""
    lines = ["# ai-influencer configuration: uncomment and set what you need (environment variables win)."]
    for field, info in Settings.model_fields.items():
        default = _shown_default(field).strip("`")
        lines.append(f"# {info.description or ''}")
        lines.append(f"# {env_name(field)}={default}")
    return "\n".join(lines) + "\n"
