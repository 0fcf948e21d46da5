"""Orchestration helpers shared by the tasks: retry condition, cache keys, clients, limits."""

from __future__ import annotations

import hashlib
import threading
import time
from pathlib import Path
from typing import Any

from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.concurrency.sync import rate_limit
from prefect.exceptions import ObjectNotFound

from ai_influencer.costs import BudgetExceededError, RunHaltedError
from ai_influencer.openrouter import FatalError, OpenRouterClient
from ai_influencer.prompt_bank import PromptBankError
from ai_influencer.settings import MissingApiKeyError, Settings
from blocks.openrouter import resolve_settings

# Errors that no retry can fix; retrying them costs money (auth, credits, moderation, bad request)
# or just time (bad configuration, budget reached).
NEVER_RETRY: tuple[type[BaseException], ...] = (
    FatalError,
    BudgetExceededError,
    RunHaltedError,
    MissingApiKeyError,
    PromptBankError,
    FileNotFoundError,
    ValueError,
)


def should_retry(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect ``retry_condition_fn``: retry transient failures only."""
    try:
        state.result()
    except NEVER_RETRY:
        return False
    except Exception:
        return True
    return False


# Files every run rewrites (derived outputs): they must not change an input fingerprint.
DERIVED_FILES = frozenset({"manifest.json", "qc_report.csv"})


def _file_digest(path: Path, head: int = 1 << 20) -> str:
    with path.open("rb") as fh:
        return hashlib.sha256(fh.read(head)).hexdigest()


def fingerprint(*paths: Path | str | None, extra: Any = None) -> str:
    """Content fingerprint of input files/folders plus parameters, for Prefect cache keys.

    Content (not mtimes) is hashed, so copying or touching files does not invalidate a cache,
    while any changed, added or removed input does.
    """
    h = hashlib.sha256(repr(extra).encode())
    for p in paths:
        if p is None:
            continue
        path = Path(p)
        files = sorted(f for f in path.iterdir() if f.is_file()) if path.is_dir() else [path]
        for f in files:
            if f.name in DERIVED_FILES:
                continue
            if f.is_file():
                h.update(f"{f.name}:{f.stat().st_size}:{_file_digest(f)};".encode())
            else:
                h.update(f"missing:{f}".encode())
    return h.hexdigest()


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


def ensure_limit(name: str, limit: int, slot_decay_per_second: float = 0.0) -> tuple[str, int, float]:
    """Create the global concurrency limit if it is missing; an existing one (maybe tuned by an operator) is kept.

    Returns ("created" | "exists", limit, slot_decay_per_second) as the server has them.
    """
    with get_client(sync_client=True) as client:
        try:
            found = client.read_global_concurrency_limit_by_name(name)
            return "exists", int(found.limit), float(found.slot_decay_per_second or 0.0)
        except ObjectNotFound:
            client.create_global_concurrency_limit(
                GlobalConcurrencyLimitCreate(
                    name=name, limit=limit, active=True, slot_decay_per_second=slot_decay_per_second
                )
            )
            return "created", limit, slot_decay_per_second


def rate_limit_burst(rate_per_s: float) -> int:
    """Slots of the rate limit: half a second of requests, so the dispatcher asks the server twice a second."""
    return max(1, round(rate_per_s / 2))


class _SendClock:
    """Per-process spacing of actual sends: a task that started late must not fire right after another."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}

    def wait(self, name: str, not_before: float, interval: float) -> None:
        with self._lock:
            # Spaced from the previous *actual* send: late tasks must not all fire at once.
            at = max(not_before, self._last.get(name, float("-inf")) + interval, time.monotonic())
            self._last[name] = at
        delay = at - time.monotonic()
        if delay > 0:
            time.sleep(delay)


send_clock = _SendClock()


class RateDispatcher:
    """Spends a server-side rate limit (global concurrency limit with slot decay) evenly.

    Why not one ``rate_limit()`` call per request: the server answers a busy limit with a jittered
    Retry-After and every denied attempt restarts its decay clock, so many fine-grained waiters reach
    well under the configured rate (measured: 4 of 10 req/s). This takes ``batch`` slots at a time,
    never before the previous batch has decayed, and spaces the requests of a batch at 1/rate, so the
    server stays the authority shared by all workers while this process sends at the limit, evenly.
    """

    # Send at 97% of the configured rate: a few ms of network/thread jitter must never push an 11th
    # request into a provider's strict 1-second window of 10.
    SAFETY = 0.97

    def __init__(self, name: str, rate_per_s: float, batch: int) -> None:
        self.name = name
        self.interval = 1.0 / (rate_per_s * self.SAFETY)
        self.batch = max(1, batch)
        self._tokens = 0
        self._next_send = 0.0
        self._next_acquire = 0.0

    def next_send_time(self, lead_s: float = 0.2) -> float:
        """Take a slot and return the ``time.monotonic()`` at which to send; returns ``lead_s`` early so
        the task (which waits for that instant itself) starts in time and its start-up jitter cannot
        bunch requests together."""
        if self._tokens == 0:
            now = time.monotonic()
            if now < self._next_acquire:
                time.sleep(self._next_acquire - now)
            rate_limit(self.name, occupy=self.batch, strict=True)
            self._tokens = self.batch
            self._next_acquire = time.monotonic() + self.batch * self.interval + 0.02
        now = time.monotonic()
        send_at = max(now, self._next_send)
        if send_at - lead_s > now:
            time.sleep(send_at - lead_s - now)
        self._next_send = send_at + self.interval
        self._tokens -= 1
        return send_at
