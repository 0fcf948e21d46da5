"""OpenRouter credentials as a Prefect block.

Why a block: on a Prefect server the key must reach workers on other hosts
without being a flow parameter (parameters are stored and shown in the UI) or
baked into an image. The block stores it encrypted server-side as a
``SecretStr``. Resolution order everywhere: the block named by
``INFLUENCER_CREDENTIALS_BLOCK`` (default ``openrouter``), then the
``OPENROUTER_*`` environment variables / ``.env``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import httpx
from prefect.blocks.core import Block
from prefect.exceptions import PrefectHTTPStatusError
from prefect.settings import get_current_settings
from pydantic import Field, SecretStr

from ai_influencer.settings import DEFAULT_BASE_URL, Settings

log = logging.getLogger(__name__)

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


def blocks_possible() -> bool:
    """Whether a block can exist at all: a configured Prefect API, or the embedded server's database.

    Why ask: with no ``PREFECT_API_URL`` a block lookup starts Prefect's embedded server (seconds on
    a small machine); on a machine where ``set-key`` never ran there is nothing to find.
    """
    settings = get_current_settings()
    if settings.api.url:
        return True
    url = settings.server.database.connection_url
    raw = url.get_secret_value() if url is not None else ""
    if raw.startswith("sqlite"):
        db = raw.split(":///", 1)[-1]
        return db == ":memory:" or Path(db).is_file()
    return True


def resolve_settings(settings: Settings | None = None, block_name: str | None = None) -> tuple[Settings, str]:
    """Settings with the key taken from the block if it exists, else from the environment.

    The one key resolver of every entry point (CLI commands, the hub, the GUI's child processes, the
    flows): block first, then ``OPENROUTER_API_KEY``. An unreachable Prefect API is not fatal here:
    the environment's key is used and a warning says why. Returns the settings and where the key came
    from ("block:<name>", "env" or "none").
    """
    settings = settings or Settings()
    name = block_name or settings.credentials_block
    creds = None
    if blocks_possible():
        try:
            creds = OpenRouterCredentials.load(name, validate=True)
        except (ValueError, RuntimeError):  # no such block
            creds = None
        except (httpx.HTTPError, PrefectHTTPStatusError, OSError) as exc:
            log.warning("Prefect API unreachable (%s); using OPENROUTER_API_KEY from the environment", exc)
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
