"""Orchestration helpers shared by the tasks: retry condition, cache keys, clients, limits."""

from __future__ import annotations

import hashlib
import logging
import math
import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from typing import Any, ClassVar

from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.concurrency.sync import concurrency
from prefect.exceptions import ObjectNotFound
from prefect.settings import get_current_settings, temporary_settings

from ai_influencer.costs import BudgetExceededError, RunHaltedError
from ai_influencer.openrouter import OpenRouterClient, OpenRouterError
from ai_influencer.pacing import AdaptiveRate, StopFlag, StopRequested
from ai_influencer.prompt_bank import PromptBankError
from ai_influencer.settings import MissingApiKeyError, Settings
from blocks.openrouter import resolve_settings
from tasks.prefect_compat import FILESYSTEM_LEASES, expired_filesystem_leases, post_increment

# Errors a Prefect task retry must not retry. OpenRouter errors: the client already owns them
# (its own jittered retries of 429/5xx/deadline/cut bodies; fatal 4xx are never retried); a task
# retry on top multiplied the attempts (5 client x 3 task retries = up to 24 per image during an
# outage). The rest no retry can fix: budget, a drained run, configuration.
NEVER_RETRY: tuple[type[BaseException], ...] = (
    OpenRouterError,
    StopRequested,
    BudgetExceededError,
    RunHaltedError,
    MissingApiKeyError,
    PromptBankError,
    FileNotFoundError,
    ValueError,
)


def should_retry(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect ``retry_condition_fn``: one retry owner per error class.

    HTTP-level faults belong to the OpenRouter client; Prefect retries what the client cannot
    see (an OSError writing a file, a crashed worker thread, a broken Prefect API call).
    """
    try:
        state.result()
    except NEVER_RETRY:
        return False
    except Exception:
        return True
    return False


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


def durable_local_leases() -> AbstractContextManager[Any]:
    """Settings under which a killed run on the embedded server does not lock its successors out.

    Why: with no ``PREFECT_API_URL``, Prefect starts a temporary server for each process on the same
    SQLite database, keeps concurrency leases in that server's memory and runs no background services,
    so nothing ever repossesses the in-flight slots of a run killed with SIGKILL (or by the OOM killer,
    or a reboot): the next ``influencer run`` waited for them forever (seen here). Kept on disk under
    ``PREFECT_HOME``, the leases outlive the process, and ``reclaim_expired_leases`` frees the expired
    ones. Against a configured server this changes nothing: its own repossessor does that job.
    """
    if get_current_settings().api.url:
        return nullcontext()
    return temporary_settings(updates={"server.concurrency.lease_storage": FILESYSTEM_LEASES})


def reclaim_expired_leases(client: SyncPrefectClient) -> int:
    """Free the slots of expired concurrency leases kept on disk; returns how many slots were freed.

    This is the server's lease repossessor done by the client, for servers that run none (the embedded
    one, ``prefect_test_harness``) and keep leases in the filesystem storage shared through
    ``PREFECT_HOME``. Each lease is released through the API (``decrement-with-lease``), so the server
    decrements the right limits by the lease's own slot count. A lease that is still being renewed
    is not expired and is left alone. Does nothing with any other lease storage.
    """
    if get_current_settings().server.concurrency.lease_storage != FILESYSTEM_LEASES:
        return 0
    freed = 0
    for lease_id, slots in expired_filesystem_leases():
        freed += slots  # leases without limits (a task's tags match none) free nothing
        client.release_concurrency_slots_with_lease(lease_id)
    return freed


INFLIGHT_POLL_S = 2.0


@contextmanager
def inflight_slots(
    name: str,
    occupy: int,
    lease_duration: float,
    logger: logging.Logger | logging.LoggerAdapter | None = None,
    stop: StopFlag | None = None,
) -> Iterator[None]:
    """Hold ``occupy`` slots of the in-flight limit ``name`` for the block, under a renewed lease.

    Until the slots are free it looks again every ``INFLIGHT_POLL_S`` seconds, freeing expired leases
    each time (see ``reclaim_expired_leases``), so a run that resumes right after a killed one starts
    as soon as the dead run's lease runs out (``lease_duration``) instead of never. It asks for the
    slots only once the limit shows them free: a timed-out ``concurrency()`` call makes Prefect log an
    error each time, which would fill the log while another run legitimately holds the slots. A set
    ``stop`` ends the wait with ``StopRequested`` (nothing was sent yet).
    """
    with get_client(sync_client=True) as client, ExitStack() as stack:
        waiting = False
        while True:
            if stop is not None:
                stop.check()
            freed = reclaim_expired_leases(client)
            if freed and logger is not None:
                logger.info("freed %d in-flight slot(s) whose lease expired (a killed run held them)", freed)
            limit = client.read_global_concurrency_limit_by_name(name)
            if limit.limit - limit.active_slots >= occupy:
                try:
                    stack.enter_context(
                        concurrency(
                            name,
                            occupy=occupy,
                            strict=True,
                            lease_duration=lease_duration,
                            timeout_seconds=INFLIGHT_POLL_S,
                        )
                    )
                    break
                except TimeoutError:  # another run took them between the look and the ask
                    pass
            if not waiting and logger is not None:
                logger.info(
                    "waiting for %d of %d slot(s) of in-flight limit %r: other runs hold %d "
                    "(a killed run's lease runs out within %.0f s)",
                    occupy,
                    limit.limit,
                    name,
                    limit.active_slots,
                    lease_duration,
                )
            waiting = True
            time.sleep(INFLIGHT_POLL_S)
        yield


BURST_S = 2.0


def rate_limit_capacity(rate_per_s: float) -> int:
    """Slots of a rate limit we create: two seconds of requests.

    Why two: the dispatcher takes, about once a second, what has decayed since its last grant. When a
    busy server keeps it waiting (SQLite "database is locked" answers, measured up to 1.4 s in a row),
    the late take catches up with everything that decayed meanwhile; a one-second limit would have
    dropped it, since its active slots cannot decay below zero (measured: 7.7 of 9.3 req/s). Sends
    stay paced by the send clock whatever the limit's size.
    """
    return max(1, math.ceil(BURST_S * rate_per_s - 1e-9))


def requests_per_second(rate_per_s: float) -> int:
    """Whole requests in one second at ``rate_per_s`` (at least one): the send clock's window and the
    dispatcher's usual take."""
    return max(1, math.floor(rate_per_s + 1e-9))


# The dispatcher's grid runs at 93% of the configured rate; the send clock's window allows 95%
# (10 requests per 1.05 s at 10/s). The 5% margin absorbs most of the jitter between our send and
# the provider's clock (on a busy 2-core machine with the stub in-process: p90 27 ms, p99 88 ms), so a
# provider counting a strict one-second window seldom sees one request too many (a 429 is retried,
# paced); the 2% between the two lets a task that started late catch up with the grid instead of
# losing its turn.
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
        capacity = requests_per_second(rate_per_s)
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
    client: SyncPrefectClient,
    name: str,
    slots: int | Callable[[], int],
    *,
    timeout_s: float = 600.0,
    block: bool = True,
) -> tuple[float, float]:
    """Take ``slots`` of the global rate limit ``name`` with one POST.

    ``slots`` may be a callable, asked again before every attempt: a caller that takes what has
    decayed so far asks for more after the server kept it waiting.

    Returns ``(0.0, answered_at)``: the ``time.monotonic()`` at which the grant arrived. The server's
    decay clock restarts at its write, somewhere between our send and its answer; a busy server queues
    a request before it writes, so the answer is the bound to count from (counting from the send gave
    a refused early take every few seconds, and each refusal restarts the clock again). While the
    limit is busy (423) this waits the server's Retry-After and asks again, or with ``block=False``
    returns ``(retry_after, answered_at)`` at once, so a caller that still holds slots can go on.

    Why not ``prefect.concurrency.sync.rate_limit``: on a SQLite-backed server a write that meets
    another writer fails with "database is locked", which the server answers with 503, and
    Prefect's HTTP client waits ``2 ** attempt`` seconds before asking again. Measured with 10 req/s
    and 200 images, one increment in eight met a 503, and each one stalled every request behind it by
    2 s. This sends the same ``POST /v2/concurrency_limits/increment`` through the client Prefect
    configured (URL, auth, headers, CSRF token) but retries a 503 after 30-120 ms (see
    ``prefect_compat.post_increment``, which falls back to Prefect's own call).
    """
    deadline = time.monotonic() + timeout_s
    busy = 0
    while True:
        payload = {"names": [name], "slots": slots() if callable(slots) else slots, "mode": "rate_limit"}
        response = post_increment(client, payload)  # the plain send: no 2 s back-off on 503
        answered_at = time.monotonic()
        if response.status_code == 200:
            if not response.json():
                raise RateSlotsError(f"global concurrency limit {name!r} does not exist (or is inactive)")
            return 0.0, answered_at
        if response.status_code == 423:
            wait = max(0.01, float(response.headers.get("Retry-After") or 0.1))
            if not block:
                return wait, answered_at
        elif response.status_code in (502, 503, 504):
            # A locked SQLite write is refused at once, without a write: asking again soon costs nothing.
            wait = min(0.03 * 2**busy, 0.12) * random.uniform(0.75, 1.25)
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
    Retry-After and every refused attempt restarts its decay clock, so many fine-grained waiters reach
    well under the configured rate (measured: 4 of 10 req/s). Here a background thread takes, about
    once a second, every slot that has decayed since its last grant (the server decays
    ``floor(rate * seconds)`` slots from its last write, counted here from the grant's answer, so the
    ask always fits and is never refused for being early), while the dispatch loop hands out send
    times on an even grid at ``rate * SEND_SAFETY``. Slots in hand keep the sends going while a call to
    a busy server (SQLite answers 503 now and then) is slow, and the next take catches up on what
    decayed meanwhile. The server stays the authority shared by all workers: another worker's slots
    make a take fail (423), after which this one waits a second and asks for what has decayed since.
    Use it as a context manager: it runs the thread and holds its API client.
    """

    REFILL_MARGIN_S = 0.03

    def __init__(self, name: str, rate_per_s: float, capacity: int, adaptive: AdaptiveRate | None = None) -> None:
        self.name = name
        self.rate_per_s = rate_per_s
        self.capacity = max(1, capacity)
        # The provider's own limit may be lower than the configured one: 429s lower the send rate of
        # this process (AIMD, see ai_influencer.pacing), and the grid follows it.
        self.adaptive = adaptive or AdaptiveRate(rate_per_s)
        self._tokens = 0
        self._next_send = 0.0
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._client: SyncPrefectClient | None = None
        self._thread = threading.Thread(target=self._refill_loop, name=f"rate-slots-{name}", daemon=True)

    _active: ClassVar[dict[str, RateDispatcher]] = {}
    _active_lock: ClassVar[threading.Lock] = threading.Lock()

    @classmethod
    def active(cls, name: str) -> RateDispatcher | None:
        """The dispatcher spending limit ``name`` in this process, if one is running.

        A retried request in the same process takes its slot here instead of from the server: a take of
        its own would be a second writer on the limit, and every write the server refuses restarts the
        limit's decay clock, starving the dispatcher (measured: five retries stalled all sends for 2 s).
        """
        with cls._active_lock:
            return cls._active.get(name)

    def __enter__(self) -> RateDispatcher:
        self._client = get_client(sync_client=True).__enter__()
        with self._active_lock:
            self._active.setdefault(self.name, self)
        return self

    def __exit__(self, *exc: object) -> None:
        with self._active_lock:
            if self._active.get(self.name) is self:
                del self._active[self.name]
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join()
        if self._client is not None:
            self._client.__exit__(*exc)
            self._client = None

    def _refill_loop(self) -> None:
        """Take what has decayed since the last grant, about once a second, while fewer than a second's
        worth of slots are in hand."""
        assert self._client is not None
        step = requests_per_second(self.rate_per_s)  # the usual take
        anchor: float | None = None  # when the server last answered a take of ours (its clock restarted)
        owed = 0  # slots of our last grant the server still counts until they decay
        ask = 0

        def decayed() -> int:
            """Asked again before each attempt: after a slow, refused-as-busy attempt it asks for more."""
            nonlocal ask
            since = step if anchor is None else math.floor(self.rate_per_s * (time.monotonic() - anchor) + 1e-9)
            ask = min(self.capacity, max(1, since))
            return ask

        try:
            while not self._stop.is_set():
                with self._cond:
                    while self._tokens >= step and not self._stop.is_set():
                        self._cond.wait()
                if anchor is not None:
                    due = anchor + max(owed, step) / self.rate_per_s + self.REFILL_MARGIN_S
                    if self._stop.wait(max(0.0, due - time.monotonic())):
                        return
                retry_after, answered_at = take_rate_slots(self._client, self.name, decayed, block=False)
                anchor = answered_at
                if retry_after:
                    # Another worker holds slots. The refusal was a write: the server restarted its decay
                    # clock without decaying, so what we may ask is counted from now.
                    owed = 0
                    continue
                owed = ask
                with self._cond:
                    self._tokens += owed
                    self._cond.notify_all()
        except BaseException as exc:  # surfaced to the dispatch loop, which must not wait forever
            with self._cond:
                self._error = exc
                self._cond.notify_all()

    @property
    def send_rate(self) -> float:
        """The rate sends are spaced at now: the configured one, lowered while the provider answers 429."""
        return min(self.rate_per_s, self.adaptive.rate or self.rate_per_s)

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
            now = time.monotonic()
            send_at = max(now, self._next_send)
            self._next_send = send_at + 1.0 / (self.send_rate * SEND_SAFETY)
            self._cond.notify_all()
        if send_at - lead_s > now:
            time.sleep(send_at - lead_s - now)
        return send_at
