"""Waiting for video jobs: polls with backoff, a whole-job deadline, a stop flag, webhook wake-ups.

``JobPoller`` polls many jobs from one thread, each on its own backoff (``poll_initial_s`` growing by
``backoff`` to ``poll_max_s``; OpenRouter's docs poll every 30 s). A job past ``deadline_s`` since its
submit ends the wait with a clear error and stays in the ledger, so a later run polls it again. A
``StopFlag`` ends the waiting at once: nothing is lost, since the job ids are on disk. A webhook note in
the inbox (``webhooks.WebhookInbox``) about a job makes it due at once; polling stays the fallback, and a
note is always confirmed by a poll before anything is recorded. ``wait_for_job`` is the one-job form a
Prefect polling task wraps.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from ai_influencer.openrouter.errors import AuthError, FatalError, OpenRouterError
from ai_influencer.openrouter.videos import VideoAPI
from ai_influencer.options.video import VIDEO_DEFAULTS
from ai_influencer.pacing import StopFlag, StopRequested
from ai_influencer.video.ledger import JobRecord, LedgerError, VideoStore
from ai_influencer.video.webhooks import WebhookInbox

EventCallback = Callable[[str], None]


class VideoJobDeadlineError(TimeoutError):
    """A job did not end within the whole-job deadline; it stays in the ledger and a later run polls it."""


@dataclass(frozen=True)
class WaitPolicy:
    """How to wait for jobs: poll backoff, the whole-job deadline, how often to look at stop and webhooks."""

    poll_initial_s: float = VIDEO_DEFAULTS.poll_initial_s  # the video options' (options.video)
    poll_max_s: float = VIDEO_DEFAULTS.poll_max_s  # OpenRouter's docs poll every 30 s
    backoff: float = 1.5
    deadline_s: float = VIDEO_DEFAULTS.deadline_s  # since the submit
    wake_check_s: float = 0.5

    def validate(self) -> WaitPolicy:
        if not 0 < self.poll_initial_s <= self.poll_max_s:
            raise ValueError(
                f"poll interval must satisfy 0 < initial <= max, got {self.poll_initial_s}/{self.poll_max_s}"
            )
        if self.backoff < 1.0:
            raise ValueError(f"poll backoff must be >= 1, got {self.backoff}")
        if self.deadline_s <= 0:
            raise ValueError(f"job deadline must be > 0 s, got {self.deadline_s}")
        if self.wake_check_s <= 0:
            raise ValueError(f"wake_check_s must be > 0, got {self.wake_check_s}")
        return self


@dataclass
class Waited:
    """A job the poller is done with: ``ended`` (a terminal status), ``deadline`` or ``error``."""

    record: JobRecord
    outcome: str
    error: str | None = None
    exc: BaseException | None = None


def ended_message(record: JobRecord) -> str:
    return f"job {record.job_id or '(unknown id)'} {record.status}: {record.error or 'no reason given'}"


def job_label(record: JobRecord) -> str:
    return f"shot {record.index + 1} [{record.scene}] job {record.job_id}"


class JobPoller:
    """Polls many jobs from one thread: each on its own backoff, all woken early by a webhook note.

    ``step`` polls the jobs that are due and returns those it is done with; ``wait`` sleeps until the next
    one is due, in ``wake_check_s`` slices that look at the stop flag and the webhook inbox. A poll that
    still fails after the client's retries is tried again at the next interval, until the deadline.
    """

    def __init__(
        self,
        api: VideoAPI,
        store: VideoStore,
        *,
        policy: WaitPolicy | None = None,
        stop: StopFlag | None = None,
        inbox: WebhookInbox | None = None,
        on_event: EventCallback | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.api, self.store = api, store
        self.policy = (policy or WaitPolicy()).validate()
        self.stop, self.inbox = stop, inbox
        self.emit = on_event or (lambda _m: None)
        self.clock, self.sleep = clock, sleep
        self.records: dict[str, JobRecord] = {}
        self._due: dict[str, float] = {}
        self._interval: dict[str, float] = {}
        self._inbox_seen: tuple[int, int] | None = None

    @property
    def active(self) -> int:
        return len(self.records)

    def add(self, record: JobRecord) -> None:
        if record.job_id is None:
            raise LedgerError(f"clip {record.key} has no job id to poll")
        self.records[record.key] = record
        self._due[record.key] = self.clock()  # at once: a resumed run learns where its jobs are
        self._interval[record.key] = self.policy.poll_initial_s

    def _drop(self, key: str) -> None:
        self.records.pop(key, None)
        self._due.pop(key, None)
        self._interval.pop(key, None)

    def step(self) -> list[Waited]:
        done: list[Waited] = []
        now = self.clock()
        for key in [k for k, due in self._due.items() if due <= now]:
            record = self.records[key]
            try:
                job = self.api.poll(record.job_id or "")
            except AuthError:
                raise  # every poll would fail the same way
            except FatalError as exc:  # e.g. 404: OpenRouter does not know this job (another key?)
                self._drop(key)
                done.append(Waited(record, "error", f"{job_label(record)}: {exc}", exc))
                continue
            except OpenRouterError as exc:
                self.emit(f"{job_label(record)}: poll failed ({exc}); trying again")
                job = None
            if job is not None:
                record.polls += 1
                if record.update(job):
                    self.store.save_job(record)
                    self.emit(f"{job_label(record)}: {record.status}" + (f" ({record.error})" if record.error else ""))
                if job.terminal:
                    self._drop(key)
                    done.append(Waited(record, "ended"))
                    continue
            age = time.time() - (record.submitted_at or time.time())
            if age > self.policy.deadline_s:
                self._drop(key)
                message = (
                    f"{job_label(record)} still {record.status} {age:.0f} s after its submit (deadline "
                    f"{self.policy.deadline_s:g} s); it stays in the ledger: run again to keep waiting"
                )
                done.append(Waited(record, "deadline", message))
                continue
            interval = min(self.policy.poll_max_s, self._interval[key] * self.policy.backoff)
            self._interval[key] = interval
            self._due[key] = self.clock() + self._interval[key] * random.uniform(0.9, 1.1)
        return done

    def wait(self) -> None:
        if not self._due:
            return
        wake = min(self._due.values())
        while True:
            now = self.clock()
            if now >= wake or (self.stop is not None and self.stop.is_set()) or self._woken(now):
                return
            self.sleep(min(self.policy.wake_check_s, wake - now))

    def _woken(self, now: float) -> bool:
        """A webhook note about a job that has not ended yet here makes it due now."""
        if self.inbox is None:
            return False
        seen = self.inbox.signature()
        if seen == self._inbox_seen:
            return False
        self._inbox_seen = seen
        by_job = {r.job_id: k for k, r in self.records.items()}
        woke = False
        for job_id, event in self.inbox.events_for(by_job).items():
            key = by_job[job_id]
            if event.data.status != self.records[key].status:
                self._due[key] = now
                woke = True
                self.emit(f"{job_label(self.records[key])}: webhook says {event.data.status}; polling now")
        return woke


def wait_for_job(
    api: VideoAPI,
    store: VideoStore,
    key: str,
    *,
    policy: WaitPolicy | None = None,
    stop: StopFlag | None = None,
    inbox: WebhookInbox | None = None,
    on_event: EventCallback | None = None,
) -> JobRecord:
    """Poll one submitted clip's job until it ends (what a Prefect polling task wraps).

    Returns the ended record (completed, failed, cancelled or expired). Raises ``VideoJobDeadlineError``
    past the deadline and ``StopRequested`` when ``stop`` is set; in both cases the job stays in the
    ledger and a later call resumes it. Free: polls cost nothing.
    """
    record = store.load_job(key)
    if record is None or record.job_id is None:
        raise LedgerError(f"clip {key} has no submitted job in {store.jobs}")
    if record.ended:
        return record
    poller = JobPoller(api, store, policy=policy, stop=stop, inbox=inbox, on_event=on_event)
    poller.add(record)
    while True:
        for waited in poller.step():
            if waited.outcome == "deadline":
                raise VideoJobDeadlineError(waited.error)
            if waited.exc is not None:
                raise waited.exc
            return waited.record
        if stop is not None and stop.is_set():
            raise StopRequested(f"stopped waiting for {job_label(record)}: {stop.reason or 'stop requested'}")
        poller.wait()
