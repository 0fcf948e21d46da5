"""The video webhook signing secret: the setting, else a Prefect ``Secret`` block.

Why a block: on a Prefect server the secret must reach the hub (and any other receiver) without sitting in
a file or a flow parameter; ``Secret`` stores it encrypted server-side. The setting
``INFLUENCER_VIDEO_WEBHOOK_SECRET`` wins where it is set (one machine, no server needed).
"""

from __future__ import annotations

import logging

import httpx
from prefect.exceptions import PrefectHTTPStatusError
from pydantic import SecretStr

from ai_influencer.settings import Settings
from blocks.openrouter import blocks_possible

log = logging.getLogger(__name__)


def resolve_webhook_secret(settings: Settings | None = None) -> SecretStr | None:
    """The signing secret, or None when neither the setting nor the block has one (deliveries are then taken
    unverified: a webhook only makes the poller poll early, see ``video.webhooks``)."""
    settings = settings or Settings()
    if settings.video_webhook_secret is not None and settings.video_webhook_secret.get_secret_value():
        return settings.video_webhook_secret
    if not blocks_possible():
        return None
    from prefect.blocks.system import Secret

    try:
        value = Secret.load(settings.video_webhook_block).get()
    except (ValueError, RuntimeError):  # no such block
        return None
    except (httpx.HTTPError, PrefectHTTPStatusError, OSError) as exc:
        log.warning("Prefect API unreachable (%s): video webhooks are taken without a signature check", exc)
        return None
    return SecretStr(str(value)) if value else None
