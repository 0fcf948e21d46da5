"""Global concurrency limits on the Prefect server: creating them, and leases that outlive a killed run."""

from __future__ import annotations

import contextlib
import contextvars
import logging
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
from prefect.settings import get_current_settings, temporary_settings

from ai_influencer.pacing import StopFlag
from shared_limits.lease_holders import HOLDERS
from shared_limits.prefect_compat import FILESYSTEM_LEASES, expired_filesystem_leases, post_increment_with_lease


def context_thread(target: Callable[[], object], name: str) -> threading.Thread:
    """A daemon thread that runs ``target`` inside a copy of the caller's context.

    Why: Prefect keeps its settings (``temporary_settings``: the lease storage and API URL of the
    embedded server), the flow run's logger and its client context in contextvars, which a plain
    ``threading.Thread`` does not inherit. A background loop started that way saw Prefect's defaults:
    ``reclaim_expired_leases`` found the in-memory lease storage there and silently freed nothing, so
    a run resumed after a kill waited for the dead run's slots for good (seen in CI). Make the thread
    where the context is set (``__init__``/``__enter__`` on the flow's thread).
    """
    return threading.Thread(target=contextvars.copy_context().run, args=(target,), name=name, daemon=True)


def ensure_limit(name: str, limit: int, slot_decay_per_second: float = 0.0) -> tuple[str, int, float]:
    """Create the global concurrency limit if it is missing; an existing one (maybe tuned by an operator) is kept.

    Returns ("created" | "exists", limit, slot_decay_per_second) as the server has them. Two workers
    starting at once both see it missing: the one whose create loses reads the other's.
    """
    with get_client(sync_client=True) as client:
        try:
            found = client.read_global_concurrency_limit_by_name(name)
            return "exists", int(found.limit), float(found.slot_decay_per_second or 0.0)
        except ObjectNotFound:
            pass
        try:
            client.create_global_concurrency_limit(
                GlobalConcurrencyLimitCreate(
                    name=name, limit=limit, active=True, slot_decay_per_second=slot_decay_per_second
                )
            )
            return "created", limit, slot_decay_per_second
        except ObjectAlreadyExists:
            found = client.read_global_concurrency_limit_by_name(name)
            return "exists", int(found.limit), float(found.slot_decay_per_second or 0.0)


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


PAGE = 200  # the most global concurrency limits the server returns per call (more is a 422)


def all_global_limits(client: SyncPrefectClient) -> list[Any]:
    """Every global concurrency limit on the server, read a page at a time.

    Why pages: a server with many limits (32 seats per shared limit, one per task tag) has more than
    one page, and a seat missing from the first page would be a run nobody counts.
    """
    found: list[Any] = []
    while True:
        page = client.read_global_concurrency_limits(limit=PAGE, offset=len(found))
        found.extend(page)
        if len(page) < PAGE:
            return found


def reclaim_expired_leases(client: SyncPrefectClient) -> dict[str, int]:
    """Free the slots of expired concurrency leases kept on disk; returns the slots freed per limit name.

    This is the server's lease repossessor done by the client, for servers that run none (the embedded
    one, ``prefect_test_harness``) and keep leases in the filesystem storage shared through
    ``PREFECT_HOME``. Each lease is released through the API (``decrement-with-lease``), so the server
    decrements the right limits by the lease's own slot count. A lease that is still being renewed
    is not expired and is left alone. Does nothing with any other lease storage.
    """
    if get_current_settings().server.concurrency.lease_storage != FILESYSTEM_LEASES:
        return {}
    freed: dict[str, int] = {}
    names: dict[Any, str] | None = None
    for lease_id, slots, limit_ids in expired_filesystem_leases():
        if slots and limit_ids:  # leases without limits (a task's tags match none) free nothing
            if names is None:
                names = {g.id: g.name for g in all_global_limits(client)}
            for limit_id in limit_ids:
                name = names.get(limit_id, str(limit_id))
                freed[name] = freed.get(name, 0) + slots
        client.release_concurrency_slots_with_lease(lease_id)
    return freed


# ---- sharing one provider limit among the runs of many workers ------------------------------------
SEAT_PREFIX = "-seat-"
REFRESH_S = 1.0
RECLAIM_EVERY_S = 5.0  # how often a seat looks for expired leases while it shares (servers without a repossessor)


class RunSeat:
    """This run's seat among the generate runs that share one rate and one in-flight limit.

    Why seats: a run used to hold ``min(max_inflight, images)`` in-flight slots for its whole
    duration, so a one-image request from the hub waited until a 300-image run had finished. Each
    run now claims a seat (a global concurrency limit ``<base>-seat-<i>`` of size 1, under a renewed
    lease) and reads every seat about once a second in one API call: the number of active seats is
    the number of runs, the position of its seat its rank, and ``share(total)`` its whole share of a
    limit (``ai_influencer.pacing.fair_share``: the shares of all runs sum to the limit). A killed
    run's seat is freed when its lease expires (the server's repossessor, or ``reclaim_expired_leases``
    on the embedded server), and the others' shares grow back.

    A run that joins while others are sending waits ``settle_s`` before its first send, so the others
    have read the new count and shrunk their shares first (no second where both send at full share).
    """

    def __init__(
        self,
        base: str,
        *,
        lease_s: float = 60.0,
        max_seats: int = 32,
        stop: StopFlag | None = None,
        logger: logging.Logger | logging.LoggerAdapter | None = None,
        workspace: str | None = None,
    ) -> None:
        self.base = base
        self.workspace = workspace
        self.lease_s = lease_s
        self.max_seats = max_seats
        self.stop = stop
        self.logger = logger
        self.index: int | None = None
        self.lease_id: Any = None
        self.runs = 1
        self.rank = 0
        self.limits: dict[str, tuple[int, float]] = {}  # every limit's (limit, active slots) at the last read
        self.joined_at = 0.0
        self.settle_s = 0.0
        self._client: SyncPrefectClient | None = None
        self._lock = threading.Lock()
        self._halt = threading.Event()
        self._thread = context_thread(self._loop, f"seat-{base}")

    def seat_name(self, i: int) -> str:
        return f"{self.base}{SEAT_PREFIX}{i}"

    def __enter__(self) -> RunSeat:
        self._client = get_client(sync_client=True).__enter__()
        HOLDERS.workspace = self.workspace or HOLDERS.workspace
        self._reclaim_dead()
        self._claim()
        self.refresh()
        if self.runs > 1:
            self.settle_s = 2 * REFRESH_S + 0.1
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._halt.set()
        if self._thread.is_alive():
            self._thread.join()
        assert self._client is not None
        if self.lease_id is not None:
            try:
                self._client.release_concurrency_slots_with_lease(self.lease_id)
                HOLDERS.forget(self.lease_id)
            except Exception as error:  # the lease expires anyway
                if self.logger is not None:
                    self.logger.warning("could not free seat %s: %s", self.seat_name(self.index or 0), error)
        self._client.__exit__(*exc)
        self._client = None

    def _claim(self) -> None:
        assert self._client is not None
        waiting = False
        while True:
            if self.stop is not None:
                self.stop.check()
            self._log_freed(reclaim_expired_leases(self._client))
            for i in range(self.max_seats):
                ensure_limit(self.seat_name(i), 1)
                try:
                    seat = self.seat_name(i)
                    response = post_increment_with_lease(self._client, seat, 1, "concurrency", self.lease_s)
                except Exception as error:  # 423: this seat is taken
                    if getattr(getattr(error, "response", None), "status_code", None) == 423:
                        continue
                    raise
                if response.status_code == 423:
                    continue
                response.raise_for_status()
                self.index, self.lease_id = i, response.json()["lease_id"]
                HOLDERS.record(self.lease_id, self.seat_name(i))
                self.joined_at = time.monotonic()
                return
            if not waiting and self.logger is not None:
                self.logger.info("all %d seats of %s are taken: waiting for a run to end", self.max_seats, self.base)
            waiting = True
            time.sleep(REFRESH_S)

    def _reclaim_dead(self) -> None:
        """Free at once what runs killed on this host held (``shared_limits.lease_holders``): their leases would
        keep the seat and the in-flight slots for up to a minute."""
        assert self._client is not None
        for dead in HOLDERS.reclaim_dead(self._client):
            if self.logger is not None and dead["slots"]:
                said = ", ".join(f"{n}: {k}" for n, k in sorted(dead["slots"].items()))
                self.logger.info(
                    "freed the slots of a killed run (pid %s on this host, workspace %s): %s",
                    dead["pid"], dead["workspace"] or "?", said,
                )  # fmt: skip

    def _log_freed(self, freed: dict[str, int]) -> None:
        if freed and self.logger is not None:
            said = ", ".join(f"{n}: {k}" for n, k in sorted(freed.items()))
            self.logger.info("freed slots whose lease expired (a killed run held them): %s", said)

    def refresh(self) -> None:
        """Read every limit once; recount the runs and this run's rank."""
        assert self._client is not None
        limits = {g.name: (int(g.limit), float(g.active_slots)) for g in all_global_limits(self._client)}
        prefix = self.base + SEAT_PREFIX
        active = sorted(int(n[len(prefix) :]) for n, (_, used) in limits.items() if n.startswith(prefix) and used >= 1)
        if self.index not in active:
            active = sorted({*active, self.index or 0})
        with self._lock:
            self.limits = limits
            self.runs, self.rank = len(active), active.index(self.index or 0)

    def share(self, total: int) -> int:
        """This run's whole share of ``total`` now (``pacing.fair_share``: the shares sum to ``total``)."""
        from ai_influencer.pacing import fair_share

        with self._lock:
            return fair_share(total, self.runs, self.rank)

    def rate_share(self, total: int) -> int:
        """This run's requests per second now: ``fair_share`` with the extra ones passed round in turns
        (``pacing.rotating_share``), so every run averages the same rate."""
        from ai_influencer.pacing import rotating_share

        with self._lock:
            return rotating_share(total, self.runs, self.rank, time.time())

    def limit_size(self, name: str, default: int) -> int:
        with self._lock:
            return self.limits.get(name, (default, 0.0))[0]

    def _loop(self) -> None:
        assert self._client is not None
        renewed = reclaimed = time.monotonic()
        while not self._halt.wait(REFRESH_S):
            try:
                if time.monotonic() - renewed > self.lease_s / 4:
                    self._client.renew_concurrency_lease(self.lease_id, self.lease_s)
                    renewed = time.monotonic()
                if self.runs > 1 and time.monotonic() - reclaimed > RECLAIM_EVERY_S:
                    # A killed run's seat would halve this run's share until the end on a server
                    # without a repossessor, even when no in-flight slot is missing; one killed on
                    # this host is known dead before its leases expire.
                    reclaimed = time.monotonic()
                    self._reclaim_dead()
                    self._log_freed(reclaim_expired_leases(self._client))
                self.refresh()
            except Exception as error:  # a slow or restarting server: keep the last shares, try again
                if self.logger is not None:
                    self.logger.warning("seat %s: %s", self.seat_name(self.index or 0), error)


class InflightPool:
    """The run's slots of the in-flight limit: its fair share, and never more than it still needs.

    Each slot is one lease of one slot, so the pool grows and shrinks one slot at a time: when
    another run joins, this one gives back what exceeds its new share as its requests complete; when
    its remaining work is smaller than its share it gives the rest back at once. Leases are renewed
    in the background; a killed run's slots come back when they expire.
    """

    def __init__(
        self,
        name: str,
        seat: RunSeat,
        default_limit: int,
        *,
        lease_s: float = 60.0,
        stop: StopFlag | None = None,
    ) -> None:
        self.name = name
        self.seat = seat
        self.default_limit = default_limit
        self.lease_s = lease_s
        self.stop = stop
        self.demand = 0  # requests this run still has to send or is waiting on
        self.in_use = 0
        self._leases: list[Any] = []
        self._reclaimed_at = 0.0
        self._cond = threading.Condition()
        self._halt = threading.Event()
        self._client: SyncPrefectClient | None = None
        self._thread = context_thread(self._loop, f"inflight-{name}")

    def __enter__(self) -> InflightPool:
        self._client = get_client(sync_client=True).__enter__()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._halt.set()
        with self._cond:
            self._cond.notify_all()
        self._thread.join()
        with self._cond:
            leases, self._leases = self._leases, []
        for lease in leases:
            self._free(lease)
        assert self._client is not None
        self._client.__exit__(*exc)
        self._client = None

    @property
    def held(self) -> int:
        with self._cond:
            return len(self._leases)

    def target(self) -> int:
        return min(self.seat.share(self.seat.limit_size(self.name, self.default_limit)), self.demand)

    def acquire(self) -> None:
        """Block until one of this run's slots is free for a request (``StopRequested`` on stop)."""
        with self._cond:
            while self.in_use >= len(self._leases):
                if self.stop is not None and self.stop.is_set():
                    self.stop.check()
                self._cond.wait(0.2)
            self.in_use += 1

    def release(self) -> None:
        """A request finished: its slot serves the next one, or goes back (in the background) if the
        run's share shrank."""
        with self._cond:
            self.in_use -= 1
            self.demand = max(0, self.demand - 1)
            self._cond.notify_all()

    def _take_one(self) -> bool:
        assert self._client is not None
        try:
            response = post_increment_with_lease(self._client, self.name, 1, "concurrency", self.lease_s)
        except Exception as error:
            if getattr(getattr(error, "response", None), "status_code", None) == 423:
                return False  # the limit is full: other runs hold it
            raise
        if response.status_code == 423:
            return False
        response.raise_for_status()
        lease = response.json()["lease_id"]
        HOLDERS.record(lease, self.name)
        with self._cond:
            self._leases.append(lease)
            self._cond.notify_all()
        return True

    def _free(self, lease: Any) -> None:
        assert self._client is not None
        with contextlib.suppress(Exception):  # an unreleased lease expires on its own
            self._client.release_concurrency_slots_with_lease(lease)
        HOLDERS.forget(lease)

    def _rebalance(self) -> None:
        target = self.target()
        while True:
            with self._cond:
                spare = len(self._leases) - max(target, self.in_use)
                lease = self._leases.pop() if spare > 0 else None
            if lease is None:
                break
            self._free(lease)
        while self.held < target and not self._halt.is_set():
            if not self._take_one():
                self._reclaim()
                break

    def _reclaim(self) -> None:
        """The limit is full: on a server without a repossessor, free what killed runs left behind."""
        now = time.monotonic()
        if now - self._reclaimed_at < 2.0:
            return
        self._reclaimed_at = now
        assert self._client is not None
        self.seat._log_freed(reclaim_expired_leases(self._client))

    def _loop(self) -> None:
        assert self._client is not None
        renewed = time.monotonic()
        while not self._halt.wait(0.25):
            try:
                self._rebalance()
            except Exception as error:  # a slow or restarting server: keep what is held, try again
                if self.seat.logger is not None:
                    self.seat.logger.warning("in-flight slots of %s: %s", self.name, error)
            if time.monotonic() - renewed > self.lease_s / 4:
                with self._cond:
                    leases = list(self._leases)
                for lease in leases:
                    try:
                        self._client.renew_concurrency_lease(lease, self.lease_s)
                    except Exception:  # expired: the slot is gone, another is taken next round
                        HOLDERS.forget(lease)
                        with self._cond:
                            if lease in self._leases:
                                self._leases.remove(lease)
                renewed = time.monotonic()
