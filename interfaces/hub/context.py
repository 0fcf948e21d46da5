"""What every hub route shares: the settings, the data root, the OpenRouter client, the token check.

Stored on ``app.state`` by ``create_app`` and reached through FastAPI dependencies, so each router
is a plain module.
"""

from __future__ import annotations

import secrets
import threading
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import HTTPException, Request

from ai_influencer.dataset.workspace import Workspace
from ai_influencer.openrouter import OpenRouterClient
from ai_influencer.settings import MissingApiKeyError, Settings

COOKIE = "hub_token"


@dataclass
class HubContext:
    settings: Settings
    client: OpenRouterClient | None = None
    prefect_api_url: str | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def token(self) -> str | None:
        return self.settings.hub_token.get_secret_value() if self.settings.hub_token else None

    @property
    def workspace(self) -> Workspace:
        return Workspace.from_settings(self.settings)

    @property
    def data_root(self) -> Path:
        return Path(self.settings.data_root).resolve()

    @property
    def max_upload(self) -> int:
        return int(self.settings.hub_max_upload_mb * 1024 * 1024)

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

    def inside_data(self, relative: str) -> Path:
        path = (self.data_root / relative).resolve()
        if not path.is_relative_to(self.data_root):
            raise HTTPException(403, detail="path escapes the data root")
        return path


def hub(request: Request) -> HubContext:
    return request.app.state.hub


def sent_token(request: Request) -> str:
    """The token from the header; for reads (GET) also from the session cookie."""
    sent = request.headers.get("x-hub-token") or ""
    auth = request.headers.get("authorization") or ""
    if auth.lower().startswith("bearer "):
        sent = auth[7:]
    if not sent and request.method in ("GET", "HEAD"):
        sent = request.cookies.get(COOKIE) or ""
    return sent


def require_token(request: Request) -> None:
    """Every /api and /files route: the hub token in the header (or, for reads, the session cookie)."""
    token = hub(request).token
    if token is None:
        raise HTTPException(403, detail="the hub has no token configured (set INFLUENCER_HUB_TOKEN)")
    if not secrets.compare_digest(sent_token(request).encode(), token.encode()):
        raise HTTPException(
            401,
            detail="missing or wrong hub token (enter it in the hub token box)",
            headers={"WWW-Authenticate": "Bearer"},
        )
