"""The adaptive pacer's decisions (``ai_influencer.pacing.AdaptiveRate``), on a simulated clock.

A caller offers requests at a steady rate; a simulated provider answers each at once: randomly busy
(upstream 429s: no ``X-RateLimit-*`` headers), or refusing what exceeds N requests in any second, as
OpenRouter's own limit (with the headers) or as a provider's limit passed through (without). The
pacer's sleeps move the clock, so each run is exact and takes milliseconds. Issue 23: the previous
pacer fell to 0.08 req/s on random upstream 429s and took ~370 successes to climb back.
"""

from __future__ import annotations

import collections
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest

import ai_influencer.adaptive_pacing as pacing
from ai_influencer.adaptive_pacing import AdaptiveRate


class Clock:
    """Stands in for the ``time`` module the pacer reads: ``sleep`` moves ``monotonic`` on."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += max(0.0, seconds)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[Clock]:
    fake = Clock()
    monkeypatch.setattr(pacing, "time", fake)
    yield fake


Answer = tuple[bool, float | None, bool]  # (rate limited, Retry-After, OpenRouter's own limit)


@dataclass
class Provider:
    """Answers a send at time ``t``; counts what it admitted."""

    answer: Callable[[float], Answer]
    admitted: list[float] = field(default_factory=list)
    refused: int = 0

    def __call__(self, t: float) -> Answer:
        result = self.answer(t)
        if result[0]:
            self.refused += 1
        else:
            self.admitted.append(t)
        return result


def random_busy(p: float, seed: int = 3, retry_after: float | None = None) -> Provider:
    rng = random.Random(seed)
    return Provider(lambda t: (rng.random() < p, retry_after, False))


def hard_limit(per_s: int, *, own: bool, retry_after: float | None = 1.0) -> Provider:
    window: collections.deque[float] = collections.deque()

    def answer(t: float) -> Answer:
        while window and t - window[0] >= 1.0:
            window.popleft()
        if len(window) >= per_s:
            return True, retry_after, own
        window.append(t)
        return False, None, False

    return Provider(answer)


def drive(pacer: AdaptiveRate, clock: Clock, provider: Provider, seconds: float, offered: float = 8.0) -> None:
    """The caller is ready to send every ``1 / offered`` s; the pacer decides when each one goes."""
    end = clock.now + seconds
    ready = clock.now
    while clock.now < end:
        clock.now = max(clock.now, ready)
        pacer.before_send()
        limited, retry_after, own = provider(clock.now)
        pacer.on_response(limited, retry_after, **({"own_limit": True} if own else {}))
        ready += 1.0 / offered


def admitted_per_s(provider: Provider, start: float, end: float) -> float:
    return sum(start <= t < end for t in provider.admitted) / (end - start)


def make(ceiling: float | None) -> AdaptiveRate:
    return AdaptiveRate(ceiling, rng=random.Random(0))


@pytest.mark.parametrize("ceiling", [None, 6.0])
def test_random_upstream_429s_do_not_lower_the_rate(clock: Clock, ceiling: float | None) -> None:
    """30 % of the answers are upstream 429s whatever we send: the pacer sends about as fast as the caller
    offers (a test, when the 429s bunch up by chance, costs a few seconds at a lower rate) and ends at
    its ceiling or none. The old pacer ended at its 0.05 req/s floor."""
    pacer = make(ceiling)
    provider = random_busy(0.3)
    drive(pacer, clock, provider, 120.0, offered=5.0)
    assert admitted_per_s(provider, 1000.0, clock.now) >= 0.85 * 0.7 * 5.0
    stats = pacer.finish()
    assert stats.probes <= 5 and stats.random_verdicts >= 1 and stats.decreases <= 1, stats


def test_a_limit_without_headers_that_follows_our_rate_is_found_and_used(clock: Clock) -> None:
    """A provider's 3/s limit passed through (no headers) with no configured rate: the pacer finds it and
    keeps using >= 0.8x of it, with few 429s (the old pacer settled at 1.2 req/s)."""
    pacer = make(None)
    provider = hard_limit(3, own=False)
    drive(pacer, clock, provider, 60.0)
    assert admitted_per_s(provider, 1010.0, clock.now) >= 0.8 * 3
    stats = pacer.finish()
    assert stats.decreases >= 1 and stats.random_verdicts == 0, stats
    assert 2.4 <= (stats.settled_rate or 0) <= 3.6
    assert provider.refused < 0.35 * len(provider.admitted)  # hammering: 5 of 8 refused


def test_openrouters_own_429s_slow_every_worker_and_the_rate(clock: Clock) -> None:
    """429s with X-RateLimit-* headers are our own rate: each burst lowers the rate once and holds every
    send for its Retry-After; the rate then stays near the limit with few crossings."""
    pacer = make(None)
    provider = hard_limit(3, own=True)
    drive(pacer, clock, provider, 60.0)
    stats = pacer.finish()
    assert stats.own_limited >= 1 and stats.decreases >= 1 and stats.probes == 0, stats
    assert (stats.settled_rate or 99) <= 3.3
    assert provider.refused <= 15
    assert admitted_per_s(provider, 1010.0, clock.now) >= 0.7 * 3


def test_retry_after_of_an_own_429_holds_every_send_and_an_upstream_one_only_its_retry(clock: Clock) -> None:
    pacer = make(None)
    pacer.before_send()
    pacer.on_response(True, 5.0, own_limit=False)  # upstream: the client waits it before this retry
    start = clock.now
    pacer.before_send()
    assert clock.now == start, "another request is not held by a provider's busy answer"
    pacer.on_response(True, 5.0, own_limit=True)
    pacer.before_send()
    assert 5.0 <= clock.now - start <= 5.0 * 1.25 + 1e-9, "OpenRouter's own Retry-After holds every send"


def test_after_a_burst_of_own_429s_the_rate_recovers_within_seconds(clock: Clock) -> None:
    """Two seconds of OpenRouter 429s, then good answers: back at the ceiling in seconds (the old
    pacer needed ~370 successes: half an hour at its floor)."""
    pacer = make(8.0)
    burst_end = clock.now + 2.0
    provider = Provider(lambda t: (t < burst_end, 1.0, t < burst_end))
    drive(pacer, clock, provider, 2.0)
    assert (pacer.rate or 99) < 8.0, "the burst lowered the rate"
    lowered_at = clock.now
    while (pacer.rate or 0) < 8.0 and clock.now - lowered_at < 60:
        drive(pacer, clock, provider, 0.5)
    assert pacer.rate == 8.0 and clock.now - lowered_at <= 12.0, clock.now - lowered_at
