"""Per-process OpenRouter clients for the tasks, and the process's stop flag.

Why pooled: a run makes hundreds of requests from many task threads; one httpx client per
credentials keeps connections alive, and the key is resolved (block, then environment) once a
minute, not once per image.
"""

from __future__ import annotations

import hashlib
import threading
import time

from ai_influencer.openrouter import OpenRouterClient
from ai_influencer.pacing import StopFlag
from ai_influencer.settings import Settings
from blocks.openrouter import resolve_settings

# Set when the flow process is asked to stop (SIGTERM from a cancellation, Ctrl-C): no task of this
# process sends a new paid request after it; requests already sent finish and are saved.
RUN_STOP = StopFlag()

_clients: dict[tuple[str, str], OpenRouterClient] = {}
_clients_lock = threading.Lock()


_resolved: dict[tuple[str, str, str], tuple[float, Settings]] = {}
RESOLVE_TTL_S = 60.0


def _resolved_settings() -> Settings:
    """Credentials resolution cached per process for a minute: one block lookup per minute, not per image."""
    env = Settings()
    env_key = env.openrouter_api_key.get_secret_value() if env.openrouter_api_key else ""
    ident = (env.credentials_block, env.openrouter_base_url, hashlib.sha256(env_key.encode()).hexdigest())
    now = time.monotonic()
    with _clients_lock:
        hit = _resolved.get(ident)
        if hit and now - hit[0] < RESOLVE_TTL_S:
            return hit[1]
    resolved = resolve_settings(env)[0]
    with _clients_lock:
        _resolved[ident] = (now, resolved)
    return resolved


def openrouter_client(settings: Settings | None = None) -> OpenRouterClient:
    """One pooled client per process and credentials (block first, then environment)."""
    resolved = resolve_settings(settings)[0] if settings is not None else _resolved_settings()
    key = resolved.require_api_key().get_secret_value()
    ident = (resolved.openrouter_base_url, hashlib.sha256(key.encode()).hexdigest())
    with _clients_lock:
        client = _clients.get(ident)
        if client is None:
            client = OpenRouterClient.from_settings(resolved)
            _clients[ident] = client
        return client
