"""The generation engine's dispatch loop, one for the CLI and the Prefect flow.

Why it is separate from ``generation.engine`` (which makes and keeps one image): this is the policy of
*when* a request may be paid for. A request is submitted only once it holds an in-flight slot and
its send time, and every path that does not submit gives back what it took, so a stop, a refused
budget or "enough images accepted" takes effect before anything else is paid. Where the slots come
from is the caller's: ``LocalSlots`` in one process, the Prefect server's shared limits in a flow.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from ai_influencer.pacing import StopFlag, StopRequested


class Owed(Protocol):
    """What ``dispatch`` needs of a request: how many images it asks for (``engine.ImageRequest``)."""

    @property
    def n(self) -> int: ...


R = TypeVar("R", bound=Owed)


class FutureLike(Protocol):
    """What ``dispatch`` needs of a submitted request: a ``concurrent.futures.Future`` or a Prefect future."""

    def add_done_callback(self, fn: Callable[[Any], None]) -> None: ...

    def result(self) -> Any: ...


class Slots(Protocol):
    """Where a run's permission to have a request in flight, and when to send it, comes from.

    ``LocalSlots`` for one process (the CLI); the Prefect flow's slots come from the server's shared
    limits (``shared_limits.limits.InflightPool`` + ``shared_limits.rate.RateDispatcher``), fairly shared among runs.
    """

    demand: int  # requests this run still has to send or is waiting on (it never holds more slots)

    def acquire(self) -> None:
        """Block until a request may be in flight; ``StopRequested`` if the run is stopping."""
        ...

    def release(self) -> None: ...

    def next_send_time(self) -> float:
        """The ``time.monotonic()`` at which the acquired request may be sent."""
        ...


class LocalSlots:
    """A fixed number of requests in flight in this process; each request's pacer spaces the sends."""

    def __init__(self, concurrency: int, stop: StopFlag | None = None) -> None:
        self.capacity = max(1, concurrency)
        self.stop = stop
        self.demand = 0
        self.in_use = 0
        self._cond = threading.Condition()

    def acquire(self) -> None:
        with self._cond:
            while self.in_use >= self.capacity:
                if self.stop is not None:
                    self.stop.check()
                self._cond.wait(0.25)
            self.in_use += 1

    def release(self) -> None:
        with self._cond:
            self.in_use -= 1
            self.demand = max(0, self.demand - 1)
            self._cond.notify_all()

    def next_send_time(self) -> float:
        return time.monotonic()


class Window(Protocol):
    """Admission before the in-flight slot (see ``dispatch``), counted in images: a request for n
    images takes n places."""

    def enter(self, images: int = 1) -> None: ...

    def leave(self) -> None: ...


def _give_back(slots: Slots, window: Window | None, *, acquired: bool) -> None:
    """A request that will not be submitted returns what it took."""
    if acquired:
        slots.release()
    if window is not None:
        window.leave()


@dataclass
class Dispatched(Generic[R]):
    results: list[Any]  # of the submitted requests, in submission order (failed ones left out)
    errors: list[str]  # one line per submitted request that failed
    not_sent: list[R]  # never submitted: the run stopped, or ``keep_going`` said enough

    @property
    def not_sent_images(self) -> int:
        return sum(r.n for r in self.not_sent)


def dispatch(
    todo: Sequence[R],
    *,
    submit: Callable[[R, float], FutureLike],
    slots: Slots,
    stop: StopFlag | None = None,
    keep_going: Callable[[], bool] | None = None,
    on_done: Callable[[FutureLike, R], None] | None = None,
    window: Window | None = None,
) -> Dispatched[R]:
    """The generation engine's loop, the same for the CLI and the Prefect flow.

    It counts requests (one in-flight slot and one send time each, whatever ``n`` they ask for);
    ``window`` counts the images they ask for. Each request is submitted only once it holds an
    in-flight slot and has its send time, so a stop
    (``stop``: a signal) or an end (``keep_going`` returning False: a budget refused, a fatal error,
    enough images accepted) takes effect before anything else is paid; requests already submitted
    finish and are kept. ``window`` (generate-until-N, ``qc.stream.UntilAccepted``) is entered before
    the slot; its ``on_done`` leaves it once the image is checked.
    """
    futures: list[FutureLike] = []
    slots.demand = len(todo)
    try:
        for request in todo:
            if keep_going is not None and not keep_going():
                break
            if window is not None:
                window.enter(request.n)
            acquired = False
            try:
                slots.acquire()
                acquired = True
                ending = (stop is not None and stop.is_set()) or (keep_going is not None and not keep_going())
                send_at = None if ending else slots.next_send_time()
            except BaseException:
                _give_back(slots, window, acquired=acquired)
                raise
            if send_at is None:
                _give_back(slots, window, acquired=True)
                break
            future = submit(request, send_at)

            def done(f: FutureLike, request: R = request) -> None:
                slots.release()
                if on_done is not None:
                    on_done(f, request)

            future.add_done_callback(done)
            futures.append(future)
    except StopRequested:
        pass  # stopped while waiting for a slot
    slots.demand = 0  # nothing more will be sent: spare slots can go back now
    results, errors = [], []
    for future in futures:
        try:
            results.append(future.result())
        except Exception as exc:  # one failed image never stops the others
            errors.append(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    return Dispatched(results, errors, list(todo[len(futures) :]))
