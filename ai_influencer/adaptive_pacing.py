"""Adaptive pacing of paid requests: slow down only when our own rate is what the provider refuses.

Why a pacer at all: a provider's real limit is often lower than configured (or unknown, as with
``influencer generate`` and no ``--rate``); obeying Retry-After alone left many workers retrying
in lockstep (measured: 368 of 757 requests answered 429 with 8 workers against a 3 req/s limit).
Why only on evidence: see ``AdaptiveRate``. Design notes and numbers: docs/design/rate-limiting.md.
"""

from __future__ import annotations

import collections
import math
import random
import threading
import time
from dataclasses import dataclass

from ai_influencer.pacing import StopFlag


@dataclass
class PacingStats:
    sent: int = 0
    rate_limited: int = 0
    own_limited: int = 0  # of those, OpenRouter's own 429s (X-RateLimit-* headers)
    decreases: int = 0  # times the send rate was lowered (kept or given back after a probe)
    probes: int = 0  # times 429s without headers were tested against a lower rate
    random_verdicts: int = 0  # probes after which the 429s went on as before: not our rate
    settled_rate: float | None = None  # req/s at the end; None: never limited and no ceiling

    def describe(self) -> str:
        rate = "no limit needed" if self.settled_rate is None else f"{self.settled_rate:.2f} req/s"
        upstream = self.rate_limited - self.own_limited
        return (
            f"pacing settled at {rate} ({self.rate_limited} of {self.sent} requests answered 429: "
            f"{self.own_limited} by OpenRouter's own limit, {upstream} by the provider)"
        )


@dataclass
class _Answer:
    sent: float  # when the request was sent (the pacer's clock)
    limited: bool


@dataclass
class _Test:
    """Do the 429s follow our rate? ``SAMPLE`` answers at ``low``, then as many at ``before``.

    Why both halves: the window that started the test was picked for its many 429s, so any window
    after it tends to hold fewer by chance; only a second window at the old rate compares fairly."""

    before: float | None
    low: float
    trigger_share: float  # of the window that started the test (chosen for its 429s: biased high)
    again: bool  # a rate limit was found by an earlier test: a clear drop at the lower rate is enough
    low_share: float | None = None
    low_n: int = 0


class AdaptiveRate:
    """Paces request starts in one process (thread-safe); slows down only on evidence that our own
    send rate is what the provider refuses, and speeds up again within seconds.

    Why evidence: a 429 comes either from OpenRouter's own limits (its answer carries ``X-RateLimit-*``
    headers) or from the upstream provider (no such headers), which is often busy whatever our rate.
    The previous pacer lowered the rate on every 429 window and raised it 1 % per success: 8 random
    upstream 429s in 38 requests took it to 0.08 req/s, 15x slower than not pacing at all (issue 23).

    * OpenRouter's own 429 (``own_limit``): our rate or quota. Every worker holds until its
      Retry-After (or ``X-RateLimit-Reset``), and one burst lowers the rate once, to ``DECREASE`` x
      what we sent; that rate is the known limit the rate grows back to.
    * A 429 without those headers: its own retry honours its Retry-After (the client waits it); the
      rate changes only if such 429s come more often than usual (``_excess``). Then the pacer tests
      whether they follow our rate: ``SAMPLE`` answers (and ``PHASE_S``) at ``PROBE`` x what the
      provider accepted, then as many at the rate before (at most 3x the lower one). Fewer 429s at
      the lower rate (by ``DIFF``, and at most half as many): the provider limits our rate, and we
      send at ``PROBE`` x what it accepted at the higher one. Otherwise they are random: the rate
      goes back, and their share becomes the background later windows are compared with (the same
      noise starts no other test). A half ends early once its answers have decided it.
    * Good answers (429s no more than the background) raise a lowered rate once per second: x1.5 up
      to ``RECOVER_TO`` x the rate the provider accepted, then by ``STEP`` of it (``OWN_STEP`` for an
      OpenRouter limit, whose crossing holds everyone; after ``PLATEAU_S`` of good answers there, or
      twice as long for each crossing at about the same rate, the limit is forgotten), never above the
      ceiling; with no ceiling the cap goes once the rate is ``LIFT`` x that and still good (or, with no
      limit known, twice that far above what we send: our concurrency, not the cap, holds us back).

    ``ceiling``: the configured rate (req/s); ``None`` sends as fast as the caller's concurrency
    allows until there is evidence.
    """

    SAMPLE = 12  # answers behind each decision (the excess that starts a test, each half of a test)
    PHASE_S = 2.0  # each half of a test lasts at least this long
    TRIGGER = 0.4  # the least share of 429s that starts a test, however small the background
    AGAIN = 0.15  # ... once a test found a limit (above it again, the answers' share is lower)
    NOISE_DECAY = 0.1  # per minute: how fast a share of 429s found to be noise may start a test again
    PROBE = 0.9  # the lower rate of a test, and the rate kept after one: this share of what was accepted
    DIFF = 0.3  # a test finds our rate when the share of 429s is this much lower at the lower rate
    DECREASE = 0.8  # OpenRouter's own 429: the new rate, as a share of what we sent
    GROW = 1.5  # a lowered rate grows this much per good second, up to RECOVER_TO x the known limit
    RECOVER_TO = 0.95
    STEP = 0.1  # ... then by this share of the known limit per good second (a 429 above it is one retry)
    OWN_STEP = 0.01  # ... after OpenRouter's own 429 (crossing its limit again holds every worker)
    PLATEAU_S = 3.0  # good answers this long at an own limit: it was a passing burst, forget it ...
    PLATEAU_MAX_S = 60.0  # ... or twice as long for each crossing at the same rate, up to this
    LIFT = 1.5  # no ceiling: the cap goes once the rate is this far above the known limit, still good
    SETTLE_S = 1.0  # after a change, sends this soon still share the provider's window with the old rate's
    WINDOW_S = 4.0  # accepted rates are counted over this many seconds (of the phase)
    SEND_WINDOW_S = 1.0  # send rates over this many (a crossing is judged by the last second's sends)

    def __init__(
        self,
        ceiling: float | None,
        *,
        floor: float = 0.1,
        stop: StopFlag | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if ceiling is not None and ceiling <= 0:
            raise ValueError(f"rate ceiling must be > 0 req/s, got {ceiling}")
        self.ceiling = ceiling
        self.floor = floor
        self.stop = stop
        self._rate = ceiling
        self._last_start = -1e18  # the last spaced send
        self._tickets = 0  # spaced sends go in the order they asked
        self._serving = 0
        self._turns_done: set[int] = set()  # turns that ended out of order (a stop): skipped when reached
        self._pause_until = 0.0
        self._pause_len = 0.0
        self._epoch = -1e18  # answers to requests sent before it tell nothing about the rate now
        self._phase_start = -1e18
        self._answers: collections.deque[_Answer] = collections.deque(maxlen=4 * self.SAMPLE)
        self._sends: collections.deque[float] = collections.deque(maxlen=512)
        self._first_send: float | None = None
        self._ok_sent: collections.deque[float] = collections.deque(maxlen=512)  # send times of good answers
        self._latency = 0.0  # of good answers (moving average)
        self._test: _Test | None = None
        self._random = [0, 0]  # 429s and answers in test halves judged random: the background share
        self._noise = (0.0, 0.0)  # (share of 429s that started the last test judged random, when)
        self._known_limit: float | None = None  # req/s the provider accepted when our rate was the problem
        self._step = self.STEP
        self._plateau_s = self.PLATEAU_S
        self._at_limit_since: float | None = None  # since when the rate has been back at the known limit
        self._grown_at = -1e18
        self._local = threading.local()
        self._lock = threading.Lock()
        self._turns = threading.Condition(self._lock)
        self._rng = rng or random.Random()
        self.stats = PacingStats()

    @property
    def rate(self) -> float | None:
        with self._lock:
            return self._rate

    @property
    def background(self) -> float:
        """The share of 429s seen not to follow our rate (0 until a test says so)."""
        with self._lock:
            return self._background()

    def _background(self) -> float:
        limited, answers = self._random
        return limited / answers if answers else 0.0

    # ---- sending ------------------------------------------------------------------------------
    def before_send(self) -> None:
        self._wait(spaced=True)

    def hold(self) -> None:
        """Wait out a pause only (for callers that space their sends with their own clock)."""
        self._wait(spaced=False)

    def _wait(self, *, spaced: bool) -> None:
        """Wait for this send's turn and time, re-read while waiting: a rate that changes or a pause
        that begins applies to the sends already waiting (fixed reservations kept a send made at 1 req/s
        waiting 10 s after the rate had grown back)."""
        if self.stop is not None:
            self.stop.check()
        jitter = self._rng.uniform(0.0, 0.25)  # of a pause: the workers held together come back spread out
        with self._turns:
            ticket = self._tickets if spaced else None
            self._tickets += spaced
            try:
                while not (self.stop is not None and self.stop.is_set()):  # stopping: the caller raises
                    if ticket is not None and ticket != self._serving:
                        self._turns.wait(0.25)  # sends go in order: the one before has not gone yet
                        continue
                    now = time.monotonic()
                    start = now
                    if self._pause_until > now:
                        start = self._pause_until + jitter * self._pause_len
                    if ticket is not None and self._rate is not None:
                        start = max(start, self._last_start + 1.0 / self._rate)
                    if start <= now:
                        break
                    self._lock.release()
                    try:
                        time.sleep(min(start - now, 0.25))
                    finally:
                        self._lock.acquire()
            finally:
                if ticket is not None:  # this turn is over, however it ended: the next one may go
                    self._turns_done.add(ticket)
                    while self._serving in self._turns_done:
                        self._turns_done.discard(self._serving)
                        self._serving += 1
                    self._turns.notify_all()
            if self.stop is not None:
                self.stop.check()  # not sent
            now = time.monotonic()
            if ticket is not None:
                self._last_start = now
            self.stats.sent += 1
            self._sends.append(now)
            if self._first_send is None:
                self._first_send = now
        self._local.sent = now

    # ---- answers ------------------------------------------------------------------------------
    def on_response(self, rate_limited: bool, retry_after: float | None = None, *, own_limit: bool = False) -> None:
        """What the provider answered to the request this thread sent last.

        ``own_limit``: a 429 with OpenRouter's ``X-RateLimit-*`` headers (``RateLimitError.own_limit``).
        """
        with self._lock:
            now = time.monotonic()
            sent = getattr(self._local, "sent", now)
            if rate_limited:
                self.stats.rate_limited += 1
                self.stats.own_limited += own_limit
            else:
                self._ok_sent.append(sent)
                self._latency = 0.8 * self._latency + 0.2 * (now - sent) if self._latency else now - sent
            if rate_limited and own_limit:
                self._own_limit(now, sent, retry_after)
                return
            if sent < self._epoch:
                return  # sent before the last change had settled: it tells nothing about the rate now
            self._answers.append(_Answer(sent, rate_limited))
            if self._test is not None:
                self._judge(now)
            elif self._excess(now):
                self._start_test(now)
            elif not rate_limited:
                self._grow(now)

    @staticmethod
    def _share(answers: list[_Answer]) -> float:
        return sum(a.limited for a in answers) / len(answers) if answers else 0.0

    def _send_rate(self, now: float, window: float) -> float | None:
        """What we sent per second over the last ``window`` s of this phase (since the last change),
        never above the cap; None: too short to tell (under half a second)."""
        start = max(now - window, self._phase_start, self._first_send if self._first_send is not None else now)
        if now - start < 0.5:
            return self._rate
        measured = sum(1 for t in self._sends if start < t <= now) / (now - start)
        return measured if self._rate is None else min(measured, self._rate)

    def _excess(self, now: float) -> bool:
        """The last ``SAMPLE`` answers hold more 429s than chance would give at the background share:
        two standard deviations of such a window above it, plus 0.1, and at least ``TRIGGER``; and 0.1
        above the share that started the last test found random (less ``NOISE_DECAY`` a minute). Judged
        once the rate has held for ``SEND_WINDOW_S``, so what we send can be measured."""
        recent = list(self._answers)[-self.SAMPLE :]
        start = self._phase_start if self._first_send is None else max(self._phase_start, self._first_send)
        if len(recent) < self.SAMPLE or now - start < self.SEND_WINDOW_S:
            return False
        bg = self._background()
        noise = self._noise[0] - self.NOISE_DECAY * max(0.0, now - self._noise[1]) / 60.0
        chance = bg + 2.0 * math.sqrt(bg * (1.0 - bg) / self.SAMPLE) + 0.1
        if self._known_limit is not None and self._step == self.STEP:
            return self._share(recent) >= max(self.AGAIN, chance, noise + 0.1)  # just above a limit found
        return self._share(recent) >= max(self.TRIGGER, chance, noise + 0.1)

    def _set_rate(self, rate: float | None, now: float, *, fresh: bool) -> None:
        """Change the rate; ``fresh``: judge only answers to requests sent once it has settled."""
        if rate is not None:
            rate = max(self.floor, rate if self.ceiling is None else min(self.ceiling, rate))
        self._rate = rate  # sends already scheduled keep their times: pulling the next one earlier bunched them
        if fresh:
            self._epoch = now + self.SETTLE_S
            self._phase_start = now
            self._answers.clear()

    def _accepted(self, answers: list[_Answer], now: float) -> float | None:
        """Requests per second the provider accepted over this phase (up to ``WINDOW_S``): good answers
        counted by when they were *sent*, up to one latency ago (later sends may still be on their way).

        Why by send time: a 429 comes back at once and a good answer after the provider's latency, so
        counting answers as they arrive lagged and read 2.0 for a 3/s limit. Falls back to what we
        sent times the share of ``answers`` not refused while the window is too short."""
        end = now - 1.2 * self._latency
        start = max(end - self.WINDOW_S, self._phase_start, self._first_send if self._first_send is not None else end)
        if end - start >= 1.0:
            return sum(1 for t in self._ok_sent if start <= t < end) / (end - start)
        sent = self._send_rate(now, self.WINDOW_S)
        return None if sent is None else sent * (1.0 - self._share(answers))

    def _start_test(self, now: float) -> None:
        """Send at the lower rate for ``SAMPLE`` answers (the test's first half)."""
        accepted = self._accepted(list(self._answers)[-self.SAMPLE :], now)
        current = self._send_rate(now, self.WINDOW_S) or self.floor * 10
        low = self.PROBE * accepted if accepted else 0.5 * current
        again = self._known_limit is not None and self._step == self.STEP
        if again:  # just above a limit found before: a step under where we are (averages lag behind)
            low = max(low, self.PROBE * current)
        self._test = _Test(
            before=self._rate,
            low=max(self.floor, min(low, 0.9 * current)),
            trigger_share=self._share(list(self._answers)[-self.SAMPLE :]),
            again=again,
        )
        self.stats.probes += 1
        self._set_rate(self._test.low, now, fresh=True)

    def _judge(self, now: float) -> None:
        test = self._test
        assert test is not None
        answers = list(self._answers)
        half = len(answers) >= self.SAMPLE // 2
        if test.low_share is None and half and self._share(answers) >= min(self.TRIGGER, test.trigger_share) - 0.1:
            # Half the lower rate's answers are in and still about as many 429s as a test needs: they do
            # not follow our rate (a limit's fall away at once here; waiting for the rest cost a random
            # run most). Not the share that started the test: it was picked for its 429s.
            self._random_verdict(now, test, answers, [])
            return
        # The second half may end early when it is already clear: each answer there may be a 429.
        clear = test.low_share is not None and half and self._share(answers) >= test.low_share + self.DIFF + 0.2
        if not clear and (len(answers) < self.SAMPLE or now - self._phase_start < self.SETTLE_S + self.PHASE_S):
            return
        if test.low_share is None:
            test.low_share = self._share(answers)
            test.low_n = len(answers)
            if test.again and test.low_share <= min(test.trigger_share / 2, self._background() + 0.1):
                # A limit this test found before, crossed again: lower is clearly better, keep it.
                self._test = None
                self._grown_at = now
                self._known_limit = test.low / self.PROBE
                self._at_limit_since = None
                self.stats.decreases += 1
                return
            # The second half: the rate before (at most 3x the lower one: enough to tell, fewer 429s).
            self._set_rate(3 * test.low if test.before is None else min(test.before, 3 * test.low), now, fresh=True)
            return
        high_share = self._share(answers)
        self._test = None
        self._grown_at = now
        if high_share - test.low_share >= self.DIFF and test.low_share <= high_share / 2:
            accepted = self._accepted(answers, now) or test.low  # sent above the limit: what it allows
            self._known_limit, self._step, self._at_limit_since = accepted, self.STEP, None
            self.stats.decreases += 1
            self._set_rate(self.PROBE * accepted, now, fresh=True)
            return
        self._random_verdict(now, test, [], answers)

    def _random_verdict(self, now: float, test: _Test, low: list[_Answer], high: list[_Answer]) -> None:
        """Not our rate: back to the rate before; the test's answers count towards the background share."""
        self._test = None
        self._grown_at = now
        self.stats.random_verdicts += 1
        self._noise = (test.trigger_share, now)
        self._set_rate(test.before, now, fresh=True)
        if test.low_share is not None:
            self._random[0] += round(test.low_share * test.low_n)
            self._random[1] += test.low_n
        for answers in (low, high):
            self._random[0] += sum(a.limited for a in answers)
            self._random[1] += len(answers)

    def _own_limit(self, now: float, sent: float, retry_after: float | None) -> None:
        """OpenRouter's own 429: everyone holds for its Retry-After; one burst lowers the rate once."""
        self._pause_len = retry_after if retry_after is not None else 1.0
        self._pause_until = max(self._pause_until, now + self._pause_len)
        if sent < self._epoch:
            return
        sent_rate = self._send_rate(now, self.SEND_WINDOW_S)
        self._test = None
        self.stats.decreases += 1
        self._grown_at = now
        # The limit is ours and we just crossed it: back off from what we sent, grow back to just under
        # it quickly, then probe above it slowly (each crossing holds every worker). Crossings only
        # lower what we know: sends jitter on their way, so a strict limit is crossed a little below it.
        known = self._known_limit if self._step == self.OWN_STEP else None
        again = bool(sent_rate and known and 0.8 <= sent_rate / known <= 1.25)
        self._plateau_s = min(self.PLATEAU_MAX_S, 2 * self._plateau_s) if again else self.PLATEAU_S
        if sent_rate and known is not None:
            sent_rate = min(sent_rate, known)
        self._known_limit, self._step, self._at_limit_since = sent_rate, self.OWN_STEP, None
        self._set_rate(self.DECREASE * sent_rate if sent_rate else self.floor * 10, now, fresh=True)

    def _grow(self, now: float) -> None:
        """A good answer: a lowered rate grows, at most once per second (once per interval when slower)."""
        if self._rate is None or (self.ceiling is not None and self._rate >= self.ceiling):
            return
        if now - self._grown_at < max(1.0, 1.0 / self._rate):
            return
        recent = [a for a in self._answers if a.sent >= now - max(self.WINDOW_S, 2.0 / self._rate)]
        if self._share(recent) > self._background() + 0.05:
            return
        self._grown_at = now
        limit = self._known_limit
        if limit is not None and self._rate >= self.RECOVER_TO * limit:
            if self._at_limit_since is None:
                self._at_limit_since = now
            elif self._step == self.OWN_STEP and now - self._at_limit_since >= self._plateau_s:
                limit = self._known_limit = None  # good for the whole plateau: the limit has gone
        if limit is not None and self._rate >= self.RECOVER_TO * limit:
            grown = self._rate + self._step * limit
        else:
            grown = self._rate * self.GROW
            if limit is not None:
                grown = min(grown, self.RECOVER_TO * limit)
        self._set_rate(grown, now, fresh=False)
        if self.ceiling is not None:
            return
        measured = self._send_rate(now, self.SEND_WINDOW_S)
        if (limit is not None and self._rate > self.LIFT * limit) or (
            limit is None and measured is not None and self._rate > 2 * self.LIFT * measured
        ):
            self._rate, self._known_limit = None, None  # well above what we send or the limit seen: no cap

    def finish(self) -> PacingStats:
        """The stats, with the rate this run settled on (None: it never had to slow down)."""
        with self._lock:
            self.stats.settled_rate = self._rate if self.stats.decreases or self.ceiling else None
            return self.stats
