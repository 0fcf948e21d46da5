"""Orchestration helpers shared by the tasks: retry condition, cache keys, clients, limits."""

from __future__ import annotations

import hashlib
import math
import threading
import time
from pathlib import Path
from typing import Any

import httpx
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
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


def rate_limit_capacity(rate_per_s: float) -> int:
    """Slots of a rate limit we create: one second of requests, the burst a provider allows."""
    return max(1, math.ceil(rate_per_s - 1e-9))


# The dispatcher's grid runs at 93% of the configured rate; the send clock's window allows 95%
# (10 requests per 1.05 s at 10/s). The 5% margin absorbs the jitter between our send and the
# provider's clock (measured up to 60 ms on a busy 2-core machine), so a provider counting a strict
# one-second window never sees one request too many; the 2% between the two lets a task that started
# late catch up with the grid instead of losing its turn.
SEND_SAFETY = 0.93
WINDOW_SAFETY = 0.95


class _SendClock:
    """Per-process pacing of actual sends: never more than the rate allows in any one-second window.

    Each task waits for its own send time on the dispatcher's even grid (``1 / (rate * SEND_SAFETY)``
    apart). A task that starts late (thread start-up, the GIL, a garbage collection) sends as soon as
    it may instead of pushing every later send back, which lost ~10% of the rate; it may not, though,
    make any ``capacity + 1`` consecutive sends closer together than ``capacity / (rate *
    WINDOW_SAFETY)`` seconds (1.05 s at 10/s), so a provider counting ``capacity`` requests per
    strict second never sees one too many.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sent: dict[str, list[float]] = {}

    @staticmethod
    def window(rate_per_s: float) -> tuple[int, float]:
        """(capacity, span): at most ``capacity`` sends within any ``span`` seconds."""
        capacity = max(1, math.floor(rate_per_s + 1e-9))
        return capacity, capacity / (rate_per_s * WINDOW_SAFETY)

    @staticmethod
    def _fits(times: list[float], t: float, capacity: int, span: float) -> bool:
        near = sorted([x for x in times if abs(x - t) < span] + [t])
        i = near.index(t)
        for first in range(max(0, i - capacity), i + 1):
            last = first + capacity
            if last < len(near) and near[last] - near[first] < span - 1e-6:
                return False
        return True

    def reserve(self, name: str, not_before: float, rate_per_s: float) -> float:
        """The earliest ``time.monotonic()`` >= ``not_before`` (and now) at which this process may send."""
        capacity, span = self.window(rate_per_s)
        with self._lock:
            now = time.monotonic()
            times = [x for x in self._sent.get(name, []) if x > now - span]
            at = max(not_before, now)
            if not self._fits(times, at, capacity, span):
                at = next(c for c in sorted(x + span for x in times) if c > at and self._fits(times, c, capacity, span))
            times.append(at)
            self._sent[name] = times
        return at

    def wait(self, name: str, not_before: float, rate_per_s: float) -> None:
        delay = self.reserve(name, not_before, rate_per_s) - time.monotonic()
        if delay > 0:
            time.sleep(delay)


send_clock = _SendClock()


class RateSlotsError(RuntimeError):
    """The rate limit is missing, or its slots could not be taken in time."""


def take_rate_slots(
    client: SyncPrefectClient, name: str, slots: int, *, timeout_s: float = 600.0, block: bool = True
) -> tuple[float, float]:
    """Take ``slots`` of the global rate limit ``name`` with one POST.

    Returns ``(0.0, sent_at)``: the ``time.monotonic()`` at which the granted request was sent (the
    server's decay clock starts then, not at the first, refused attempt). While the limit is busy
    (423) this waits the server's Retry-After and asks again, or with ``block=False`` returns
    ``(retry_after, sent_at)`` at once, so a caller that still holds slots can go on.

    Why not ``prefect.concurrency.sync.rate_limit``: on a SQLite-backed server a write that meets
    another writer fails with "database is locked", which the server answers with 503, and
    Prefect's HTTP client waits ``2 ** attempt`` seconds before asking again. Measured with 10 req/s
    and 200 images, one increment in eight met a 503, and each one stalled every request behind it by
    2 s. This sends the same ``POST /v2/concurrency_limits/increment`` through the client Prefect
    configured (URL, auth, headers, CSRF token) but retries a 503 after 50-250 ms. Should a future
    Prefect client lack those internals, it falls back to Prefect's own call.
    """
    http = getattr(client, "_client", None)
    add_csrf = getattr(http, "_add_csrf_headers", None)
    direct = isinstance(http, httpx.Client) and callable(add_csrf)
    payload = {"names": [name], "slots": slots, "mode": "rate_limit"}
    deadline = time.monotonic() + timeout_s
    busy = 0
    while True:
        sent_at = time.monotonic()
        if direct:
            assert isinstance(http, httpx.Client)
            request = http.build_request("POST", "/v2/concurrency_limits/increment", json=payload)
            add_csrf(request)  # type: ignore[misc]  # a token if the server asks for one, as Prefect does
            response = httpx.Client.send(http, request)  # the plain send: no 2 s back-off on 503
        else:
            response = client.increment_concurrency_slots(names=[name], slots=slots, mode="rate_limit")
        if response.status_code == 200:
            if not response.json():
                raise RateSlotsError(f"global concurrency limit {name!r} does not exist (or is inactive)")
            return 0.0, sent_at
        if response.status_code == 423:
            wait = max(0.01, float(response.headers.get("Retry-After") or 0.1))
            if not block:
                return wait, sent_at
        elif response.status_code in (502, 503, 504):
            wait = min(0.05 * 2**busy, 0.25)
            busy += 1
        else:
            response.raise_for_status()
            raise RateSlotsError(f"unexpected answer {response.status_code} for rate limit {name!r}")
        if time.monotonic() + wait > deadline:
            raise RateSlotsError(f"no slot of rate limit {name!r} within {timeout_s:.0f} s")
        time.sleep(wait)


class RateDispatcher:
    """Spends a server-side rate limit (global concurrency limit with slot decay) evenly.

    Why not one ``rate_limit()`` call per request: the server answers a busy limit with a jittered
    Retry-After and every denied attempt restarts its decay clock, so many fine-grained waiters reach
    well under the configured rate (measured: 4 of 10 req/s). Here a background thread takes the
    limit's whole ``capacity`` each time the server has refilled it (``capacity / rate`` later:
    the server decays ``floor(rate * seconds)`` slots from its last write, so fewer, larger takes
    lose less to rounding), while the dispatch loop hands out send times on an even grid at
    ``rate * SEND_SAFETY``, under the refill. Up to one capacity of slots stays in hand, so a slow or
    refused call to the server (a busy SQLite server answers 503 now and then, measured up to 1.5 s
    in a row) seldom delays a send. The server stays the authority shared by all workers.
    Use it as a context manager: it runs the thread and holds its API client.
    """

    REFILL_MARGIN_S = 0.03

    def __init__(self, name: str, rate_per_s: float, capacity: int) -> None:
        self.name = name
        self.rate_per_s = rate_per_s
        self.interval = 1.0 / (rate_per_s * SEND_SAFETY)
        self.capacity = max(1, capacity)
        self._tokens = 0
        self._next_send = 0.0
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._client: SyncPrefectClient | None = None
        self._thread = threading.Thread(target=self._refill_loop, name=f"rate-slots-{name}", daemon=True)

    def __enter__(self) -> RateDispatcher:
        self._client = get_client(sync_client=True).__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join()
        if self._client is not None:
            self._client.__exit__(*exc)
            self._client = None

    def _refill_loop(self) -> None:
        """Take the capacity whenever the server has refilled it, while fewer than ``capacity`` are in hand."""
        assert self._client is not None
        slots, next_acquire = self.capacity, 0.0  # the whole capacity each time it has decayed
        try:
            while not self._stop.is_set():
                with self._cond:
                    while self._tokens >= self.capacity and not self._stop.is_set():
                        self._cond.wait()
                if self._stop.wait(max(0.0, next_acquire - time.monotonic())):
                    return
                retry_after, sent_at = take_rate_slots(self._client, self.name, slots, block=False)
                if retry_after:
                    # Early on the server's clock, or shared with another worker: the slots in hand keep
                    # the sends going; each refused try restarts the server's decay, so do not hammer.
                    next_acquire = time.monotonic() + min(retry_after, 0.5 * self.capacity / self.rate_per_s)
                    continue
                with self._cond:
                    self._tokens += slots
                    self._cond.notify_all()
                next_acquire = sent_at + self.capacity / self.rate_per_s + self.REFILL_MARGIN_S
        except BaseException as exc:  # surfaced to the dispatch loop, which must not wait forever
            with self._cond:
                self._error = exc
                self._cond.notify_all()

    def next_send_time(self, lead_s: float = 0.6) -> float:
        """Take a slot and return the ``time.monotonic()`` at which to send; returns ``lead_s`` early so
        the task (which waits for that instant itself) has started by then."""
        if self._client is None:
            raise RuntimeError("RateDispatcher must be entered (with RateDispatcher(...) as d:)")
        if self._thread.ident is None:  # started by the first request: a run with nothing to do takes no slot
            self._thread.start()
        with self._cond:
            while self._tokens == 0:
                if self._error is not None:
                    raise RateSlotsError(f"rate limit {self.name!r}: {self._error}") from self._error
                self._cond.wait(0.5)
            self._tokens -= 1
            self._cond.notify_all()
        now = time.monotonic()
        send_at = max(now, self._next_send)
        if send_at - lead_s > now:
            time.sleep(send_at - lead_s - now)
        self._next_send = send_at + self.interval
        return send_at
