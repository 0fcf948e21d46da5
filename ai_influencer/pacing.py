"""Client-side pacing of paid requests, and stopping without losing paid work.

Three pieces every generation path shares (the CLI's ``generate``, the Prefect flow):

* ``AdaptiveRate`` (in ``ai_influencer.adaptive_pacing``): spaces request starts, and slows them
  only on evidence that our own rate is what the provider refuses.
* ``StopFlag`` + ``drain_on_signals``: the first SIGTERM/SIGINT stops *new* paid requests;
  requests already sent finish (each bounded by the client's deadline) and are saved. A
  provider bills a request the moment it is accepted, so killing in-flight requests throws
  paid images away (measured: 86 of 389 paid requests lost to kills).
* ``Pacer``: the protocol the OpenRouter client calls around every attempt, retries included.
"""

from __future__ import annotations

import math
import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol


class StopRequested(Exception):
    """The run is draining: this request was not sent (and not paid)."""


class StopFlag:
    """A process-wide "send no more paid requests" flag, set by a signal or by a caller."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.reason: str | None = None
        self.signal: int | None = None

    def request(self, reason: str, sig: int | None = None) -> None:
        if not self._event.is_set():
            self.reason, self.signal = reason, sig
            self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    def check(self) -> None:
        """Raise ``StopRequested`` if a stop was requested."""
        if self._event.is_set():
            raise StopRequested(f"not sent: {self.reason or 'stop requested'}")

    def clear(self) -> None:
        self._event.clear()
        self.reason = self.signal = None


@contextmanager
def drain_on_signals(flag: StopFlag, *, redeliver: bool = True) -> Iterator[StopFlag]:
    """While inside, the first SIGTERM or SIGINT sets ``flag`` instead of ending the process (one that is
    ignored when the block starts stays ignored).

    A second signal of the same kind restores the previous handler and re-sends itself (the
    user insisted: stop now). With ``redeliver``, a signal that only set the flag is sent again
    on exit, to the previous handler: under Prefect that handler turns SIGTERM into the flow
    run's cancellation, after every paid image is on disk. Outside the main thread (signals
    can only be handled there) this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return
    # A signal ignored when the drain starts stays ignored: a job started in the background of a script
    # (or under nohup) ignores SIGINT by POSIX rule; draining on it anyway stopped such a run half done.
    sigs = tuple(s for s in (signal.SIGTERM, signal.SIGINT) if signal.getsignal(s) != signal.SIG_IGN)
    previous: dict[int, Any] = {s: signal.getsignal(s) for s in sigs}

    def handler(sig: int, _frame: object) -> None:
        if flag.is_set() and flag.signal == sig:
            signal.signal(sig, previous[sig])
            os.kill(os.getpid(), sig)
            return
        flag.request(f"{signal.Signals(sig).name} received: finishing the requests already sent", sig)

    for s in sigs:
        signal.signal(s, handler)
    try:
        yield flag
    finally:
        for s in sigs:
            signal.signal(s, previous[s])
        if redeliver and flag.signal is not None:
            pass_on_signal(flag.signal)


def pass_on_signal(sig: int) -> None:
    """Do now, in this thread, what ``sig`` does without us: call its handler (Python's raises
    KeyboardInterrupt, Prefect's SIGTERM handler raises the run's TerminationSignal), or take the default
    action; an ignored signal stays ignored.

    Why not ``os.kill(os.getpid(), sig)`` (as before): that leaves the moment to signal delivery; called
    here, the interrupt leaves the flow's own code while its run is still running, which is where Prefect
    turns it into the run's end."""
    handler = signal.getsignal(sig)
    if callable(handler):
        handler(sig, None)
    elif handler == signal.SIG_DFL:
        os.kill(os.getpid(), sig)


class Pacer(Protocol):
    """Called by the OpenRouter client around every attempt of a request, retries included."""

    def before_send(self) -> None:
        """Wait until this attempt may be sent; raise ``StopRequested`` to not send it."""
        ...

    def on_response(self, rate_limited: bool, retry_after: float | None = None, *, own_limit: bool = False) -> None:
        """What the provider answered: a 429 (with its Retry-After; ``own_limit`` when OpenRouter's own
        limit refused it, ``X-RateLimit-*`` headers) or anything else."""
        ...


# ---- the pacing math of a shared rate limit -------------------------------------------------------
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


class SendClock:
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


def fair_share(total: int, runs: int, rank: int, turn: int = 0) -> int:
    """This run's whole share of ``total`` (slots, or requests per second) among ``runs`` sharing it.

    Shares are integers and sum to ``total`` exactly: ``total % runs`` ranks get one more, the ranks
    ``turn``, ``turn + 1``, ... (mod ``runs``). Why integers: each run enforces its share in every
    one-second window on its own clock, so the provider sees at most the sum of the shares in any
    second, the limit itself. Why a turn: 10 req/s among 4 runs is 3, 3, 2, 2; passing the extra
    ones round (see ``rotating_share``) makes every run average 2.5. With more runs than ``total``
    some shares are 0 in a turn.
    """
    if runs <= 1:
        return total
    base, extra = divmod(max(0, total), runs)
    return base + (1 if (rank - turn) % runs < extra else 0)


ROTATE_S = 15.0  # how long a run keeps an extra request/s before passing it on
ROTATE_GRACE_S = 1.1  # a run gaining one waits this long: the run giving it up has slowed down by then


def rotating_share(total: int, runs: int, rank: int, now: float) -> int:
    """``fair_share`` with the extra shares passed round every ``ROTATE_S`` of wall-clock time.

    All runs read the same clock (hosts keep time with NTP), so they agree on the turn. A run loses
    an extra share at the turn's start but gains one only ``ROTATE_GRACE_S`` later, when the run
    that gave it up has sent its last one-second window at the old share: no second ever sees both.
    """
    turn, before = int(now // ROTATE_S), int((now - ROTATE_GRACE_S) // ROTATE_S)
    return min(fair_share(total, runs, rank, turn), fair_share(total, runs, rank, before))
