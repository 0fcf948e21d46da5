"""OpenRouter credentials as a Prefect block.

Why a block: on a Prefect server the key must reach workers on other hosts
without being a flow parameter (parameters are stored and shown in the UI) or
baked into an image. The block stores it encrypted server-side as a
``SecretStr``. Resolution order everywhere: the block named by
``INFLUENCER_CREDENTIALS_BLOCK`` (default ``openrouter``), then the
``OPENROUTER_*`` environment variables / ``.env``.
"""

from __future__ import annotations

from prefect.blocks.core import Block
from pydantic import Field, SecretStr

from ai_influencer.settings import DEFAULT_BASE_URL, Settings

DEFAULT_BLOCK_NAME = "openrouter"


class OpenRouterCredentials(Block):
    """API key and endpoint configuration for OpenRouter."""

    _block_type_name = "OpenRouter Credentials"
    _block_type_slug = "openrouter-credentials"
    _description = "API key (secret), base URL and attribution headers for OpenRouter."
    _logo_url = "https://openrouter.ai/favicon.ico"  # type: ignore[assignment]

    api_key: SecretStr = Field(description="OpenRouter API key (sk-or-...).")
    base_url: str = Field(default=DEFAULT_BASE_URL, description="API root.")
    app_title: str | None = Field(default="ai-influencer", description="Sent as X-Title.")
    app_url: str | None = Field(default=None, description="Sent as HTTP-Referer.")


def resolve_settings(settings: Settings | None = None, block_name: str | None = None) -> tuple[Settings, str]:
    """Settings with the key taken from the block if it exists, else from the environment.

    Returns the settings and where the key came from ("block:<name>", "env" or "none").
    """
    settings = settings or Settings()
    name = block_name or settings.credentials_block
    try:
        creds = OpenRouterCredentials.load(name, validate=True)
    except (ValueError, RuntimeError):  # no such block, or no reachable API to ask
        creds = None
    if creds is not None:
        merged = settings.model_copy(
            update={
                "openrouter_api_key": creds.api_key,
                "openrouter_base_url": creds.base_url,
                "openrouter_app_title": creds.app_title or settings.openrouter_app_title,
                "openrouter_app_url": creds.app_url or settings.openrouter_app_url,
            }
        )
        return merged, f"block:{name}"
    return settings, "env" if settings.openrouter_api_key else "none"


def register_blocks() -> None:
    OpenRouterCredentials.register_type_and_schema()


def save_key(api_key: str, *, name: str = DEFAULT_BLOCK_NAME, base_url: str | None = None) -> None:
    settings = Settings()
    OpenRouterCredentials(
        api_key=SecretStr(api_key),
        base_url=base_url or settings.openrouter_base_url,
        app_title=settings.openrouter_app_title,
        app_url=settings.openrouter_app_url,
    ).save(name, overwrite=True)
