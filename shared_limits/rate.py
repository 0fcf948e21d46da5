"""Spending a server-side rate limit (a Prefect global concurrency limit with slot decay) evenly.

The pacing math (send clock, shares) is in the domain, ``ai_influencer.pacing``; this module
talks to the Prefect server.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

from prefect.client.orchestration import SyncPrefectClient, get_client

from ai_influencer.adaptive_pacing import AdaptiveRate
from ai_influencer.pacing import SEND_SAFETY, SendClock, requests_per_second
from shared_limits.limits import InflightPool, RunSeat, context_thread
from shared_limits.prefect_compat import busy_wait_s, post_increment

# Sends of this process, per rate limit (every task thread of a flow process shares it).
send_clock = SendClock()


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
            wait = busy_wait_s(busy)
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

    def __init__(
        self,
        name: str,
        rate_per_s: float,
        capacity: int,
        adaptive: AdaptiveRate | None = None,
        seat: RunSeat | None = None,
    ) -> None:
        self.name = name
        self.rate_per_s = rate_per_s
        self.capacity = max(1, capacity)
        # Several runs share the limit: this one spends only its share (see RunSeat, fair_share).
        self.seat = seat
        # The provider's own limit may be lower than the configured one: 429s lower the send rate of
        # this process (AIMD, see ai_influencer.pacing), and the grid follows it.
        self.adaptive = adaptive or AdaptiveRate(rate_per_s)
        self._tokens = 0
        self._next_send = 0.0
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._client: SyncPrefectClient | None = None
        self._thread = context_thread(self._refill_loop, f"rate-slots-{name}")

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
        """Take what has decayed since the last grant, about once a second, while fewer than a second's
        worth of slots are in hand."""
        assert self._client is not None
        anchor: float | None = None  # when the server last answered a take of ours (its clock restarted)
        owed = 0  # slots of our last grant the server still counts until they decay
        ask = 0

        def decayed() -> int:
            """Asked again before each attempt: after a slow, refused-as-busy attempt it asks for more."""
            nonlocal ask
            share = self.share_rate()
            step = requests_per_second(share)
            since = step if anchor is None else math.floor(share * (time.monotonic() - anchor) + 1e-9)
            ask = min(self.capacity, max(1, since))
            return ask

        try:
            while not self._stop.is_set():
                share = self.share_rate()
                if share <= 0:  # more runs than requests per second: wait for one to end
                    if self._stop.wait(1.0):
                        return
                    continue
                step = requests_per_second(share)  # the usual take
                with self._cond:
                    while self._tokens >= step and not self._stop.is_set():
                        self._cond.wait(1.0)
                if anchor is not None:
                    due = anchor + max(owed, step) / share + self.REFILL_MARGIN_S
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

    def share_rate(self) -> float:
        """Requests per second this run may send: the whole rate alone, else its whole share of it."""
        if self.seat is None or self.seat.runs <= 1:
            return self.rate_per_s
        return float(self.seat.rate_share(requests_per_second(self.rate_per_s)))

    @property
    def send_rate(self) -> float:
        """The rate sends are spaced at now: this run's share, lowered while the provider answers 429."""
        share = self.share_rate()
        return min(share, self.adaptive.rate or share)

    def next_send_time(self, lead_s: float = 0.6) -> float:
        """Take a slot and return the ``time.monotonic()`` at which to send; returns ``lead_s`` early so
        the task (which waits for that instant itself) has started by then."""
        if self._client is None:
            raise RuntimeError("RateDispatcher must be entered (with RateDispatcher(...) as d:)")
        if self._thread.ident is None:  # started by the first request: a run with nothing to do takes no slot
            self._thread.start()
        with self._cond:
            while self._tokens == 0 or self.send_rate <= 0:
                if self._error is not None:
                    raise RateSlotsError(f"rate limit {self.name!r}: {self._error}") from self._error
                if self.adaptive.stop is not None:
                    self.adaptive.stop.check()
                self._cond.wait(0.5)
            self._tokens -= 1
            now = time.monotonic()
            settled = self.seat.joined_at + self.seat.settle_s if self.seat is not None else 0.0
            send_at = max(now, self._next_send, settled)
            self._next_send = send_at + 1.0 / (self.send_rate * SEND_SAFETY)
            self._cond.notify_all()
        if send_at - lead_s > now:
            time.sleep(send_at - lead_s - now)
        return send_at


class SharedSlots:
    """The engine's ``Slots`` (ai_influencer.generation.engine) for a flow run: in-flight slots from the run's
    share of the server's in-flight limit, send times from its share of the rate limit."""

    def __init__(self, pool: InflightPool, dispatcher: RateDispatcher) -> None:
        self.pool = pool
        self.dispatcher = dispatcher

    @property
    def demand(self) -> int:
        return self.pool.demand

    @demand.setter
    def demand(self, value: int) -> None:
        self.pool.demand = value if value else self.pool.in_use  # at the end: what is still in flight

    def acquire(self) -> None:
        self.pool.acquire()

    def release(self) -> None:
        self.pool.release()

    def next_send_time(self) -> float:
        return self.dispatcher.next_send_time()
