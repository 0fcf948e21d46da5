"""The AIMD pacer of release c93912a..acd39db, kept only so ``bench/pacing.py`` can run it beside the
current one in the same run (issue 23: it collapsed on random upstream 429s). Not used by the product.

Copied unchanged from ``ai_influencer/pacing.py`` at acd39db (only the imports and the name are new).
"""

from __future__ import annotations

import collections
import random
import threading
import time

from ai_influencer.adaptive_pacing import PacingStats
from ai_influencer.pacing import StopFlag


class AdaptiveRateV1:
    """AIMD pacing of request starts in one process (thread-safe).

    * ``ceiling``: the configured rate (req/s); ``None`` sends as fast as the caller's
      concurrency allows until the first 429.
    * On a 429: the rate drops to ``decrease`` times the rate (at the first 429 without a
      ceiling: to what the provider accepted in the last second), at most once per window of
      one request interval (the 429s of one burst are one signal), and every worker pauses
      for the Retry-After plus its own jitter (up to 50 %), so retries do not land together.
    * On any other answer: the rate grows by ``recover`` of itself (1 % per success doubles it
      in about 70 successes), never above the ceiling: slow enough that the provider's limit
      is probed gently, not hammered.
    """

    def __init__(
        self,
        ceiling: float | None,
        *,
        floor: float = 0.05,
        decrease: float = 0.6,
        recover: float = 0.01,
        stop: StopFlag | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if ceiling is not None and ceiling <= 0:
            raise ValueError(f"rate ceiling must be > 0 req/s, got {ceiling}")
        self.ceiling = ceiling
        self.floor = floor
        self.decrease = decrease
        self.recover = recover
        self.stop = stop
        self._rate = ceiling
        self._next = 0.0
        self._pause_until = 0.0
        self._pause_len = 0.0
        self._last_decrease = -1e9
        self._ok_times: collections.deque[float] = collections.deque()
        self._lock = threading.Lock()
        self._rng = rng or random.Random()
        self.stats = PacingStats()

    @property
    def rate(self) -> float | None:
        with self._lock:
            return self._rate

    def before_send(self) -> None:
        if self.stop is not None:
            self.stop.check()
        with self._lock:
            start = self._resume_time(time.monotonic())
            if self._rate is not None:
                start = max(start, self._next)
                self._next = start + 1.0 / self._rate
            self.stats.sent += 1
        self._sleep_until(start)
        if self.stop is not None:
            self.stop.check()

    def _resume_time(self, now: float) -> float:
        """Now, or the end of a 429 pause plus this caller's own jitter (up to half the pause)."""
        if self._pause_until > now:
            return self._pause_until + self._rng.uniform(0.0, 0.5) * self._pause_len
        return now

    def hold(self) -> None:
        """Wait out a 429 pause only (for callers that space their sends with their own clock)."""
        with self._lock:
            start = self._resume_time(time.monotonic())
            self.stats.sent += 1
        self._sleep_until(start)
        if self.stop is not None:
            self.stop.check()

    def _sleep_until(self, t: float) -> None:
        while True:
            delay = t - time.monotonic()
            if delay <= 0:
                return
            if self.stop is not None and self.stop.is_set():
                return  # the caller checks the flag right after
            time.sleep(min(delay, 0.25))

    def on_response(self, rate_limited: bool, retry_after: float | None = None) -> None:
        with self._lock:
            now = time.monotonic()
            if not rate_limited:
                self._ok_times.append(now)
                while self._ok_times and now - self._ok_times[0] > 1.0:
                    self._ok_times.popleft()
                if self._rate is not None:
                    grown = self._rate * (1.0 + self.recover)
                    self._rate = grown if self.ceiling is None else min(self.ceiling, grown)
                return
            self.stats.rate_limited += 1
            window = 1.0 / self._rate if self._rate else 1.0
            if now - self._last_decrease >= window:
                if self._rate is None:
                    accepted = sum(1 for t in self._ok_times if now - t <= 1.0)
                    self._rate = max(self.floor, accepted * self.decrease or self.floor * 10)
                else:
                    self._rate = max(self.floor, self._rate * self.decrease)
                self._last_decrease = now
                self.stats.decreases += 1
            self._pause_len = retry_after if retry_after is not None else 1.0
            self._pause_until = max(self._pause_until, now + self._pause_len)
            self._next = max(self._next, self._pause_until)

    def finish(self) -> PacingStats:
        """The stats, with the rate this run settled on (None: it never had to slow down)."""
        with self._lock:
            self.stats.settled_rate = self._rate if self.stats.decreases or self.ceiling else None
            return self.stats
