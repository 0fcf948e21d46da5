"""What every hub route shares: the settings, the data root, the OpenRouter client.

Stored on ``app.state`` by ``create_app`` and reached through FastAPI dependencies, so each router
is a plain module. The token itself is checked by ``guard.TokenGuard`` before a route runs;
``token_scheme`` only tells the OpenAPI docs (and their Authorize button) about it.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import HTTPException, Request
from fastapi.security import HTTPBearer
from pydantic import SecretStr

from ai_influencer.dataset.workspace import Workspace
from ai_influencer.openrouter import OpenRouterClient
from ai_influencer.settings import MissingApiKeyError, Settings

token_scheme = HTTPBearer(
    auto_error=False,
    scheme_name="hub token",
    description="INFLUENCER_HUB_TOKEN, as `Authorization: Bearer` (or `X-Hub-Token`); checked before the body is read.",
)


@dataclass
class HubContext:
    settings: Settings
    client: OpenRouterClient | None = None
    prefect_api_url: str | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _webhook_secret: tuple[SecretStr | None] | None = field(default=None, repr=False)

    @property
    def workspace(self) -> Workspace:
        return Workspace.from_settings(self.settings)

    @property
    def data_root(self) -> Path:
        return Path(self.settings.data_root).resolve()

    @property
    def max_upload(self) -> int:
        return int(self.settings.hub_max_upload_mb * 2**20)

    @property
    def max_json(self) -> int:
        return int(self.settings.hub_max_json_mb * 2**20)

    def openrouter(self) -> OpenRouterClient:
        """The hub's client, its key resolved like everywhere else: Prefect block, then environment."""
        with self._lock:
            if self.client is None:
                from blocks.openrouter import resolve_settings

                try:
                    self.client = OpenRouterClient.from_settings(resolve_settings(self.settings)[0])
                except MissingApiKeyError as exc:
                    raise HTTPException(503, detail=str(exc)) from None
            return self.client

    def webhook_secret(self) -> SecretStr | None:
        """The video webhook signing secret (setting, else Prefect Secret block), looked up once."""
        with self._lock:
            if self._webhook_secret is None:
                from blocks.video import resolve_webhook_secret

                self._webhook_secret = (resolve_webhook_secret(self.settings),)
            return self._webhook_secret[0]

    def inside_data(self, relative: str) -> Path:
        """``relative`` under the data root, or 400 (unusable path) / 403 (outside the root)."""
        if "\x00" in relative:
            raise HTTPException(400, detail="the path contains a NUL byte")
        try:
            path = (self.data_root / relative).resolve()
            path.is_file()  # False when missing; raises for a name too long, a parent not readable
        except OSError as exc:  # the message without the path: it holds the data root and may be huge
            raise HTTPException(400, detail=f"unusable path: {exc.strerror or exc.__class__.__name__}") from None
        if not path.is_relative_to(self.data_root):
            raise HTTPException(403, detail="path escapes the data root")
        return path


def hub(request: Request) -> HubContext:
    return request.app.state.hub
