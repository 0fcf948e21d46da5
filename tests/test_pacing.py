"""The per-process send clock, checked as an algorithm on a simulated clock (its sleeps are what it schedules).

The server side of pacing (rate slots, the dispatcher) is tested with its package: tests/shared_limits/test_rate.py.
"""

from __future__ import annotations

import random

import pytest

import ai_influencer.pacing as pacing
from ai_influencer.pacing import SEND_SAFETY, SendClock


class FakeClock:
    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


def min_span(times: list[float], capacity: int) -> float:
    times = sorted(times)
    return min(times[i + capacity] - times[i] for i in range(len(times) - capacity))


def test_send_clock_keeps_every_window_under_the_rate_and_late_tasks_do_not_add_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = FakeClock()
    monkeypatch.setattr(pacing.time, "monotonic", clock)
    send_clock = SendClock()
    rate = 10.0
    capacity, span = send_clock.window(rate)
    assert capacity == 10 and span > 1.0
    interval = 1.0 / (rate * SEND_SAFETY)
    grid = [clock.now + 1.0 + i * interval for i in range(400)]
    # Eight times, four tasks in a row start 0.35 s after their turn (thread start-up, a GC pause):
    # 2.8 s of lateness in all, which a clock spacing each send from the previous one keeps forever.
    late = {start + k for start in range(20, 340, 40) for k in range(4)}
    rng = random.Random(7)
    arrivals = sorted((g + 0.35 if i in late else g - rng.uniform(0.05, 0.6), i, g) for i, g in enumerate(grid))
    sent: dict[int, float] = {}
    for arrive, i, g in arrivals:
        clock.now = max(clock.now, arrive)
        sent[i] = send_clock.reserve("img", g, rate)
        assert sent[i] >= g - 1e-9, "never before its turn"

    assert min_span(list(sent.values()), capacity) >= span - 1e-6, "no window ever holds one send too many"
    delays = [sent[i] - grid[i] for i in range(400)]
    assert max(delays) < 1.5, "a late task goes soon after it arrives and pushes others only a little"
    assert sum(delays[-40:]) / 40 < 0.3, "the lateness does not add up: the last sends are close to the grid"


def test_send_clock_spaces_a_burst_of_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock()
    monkeypatch.setattr(pacing.time, "monotonic", clock)
    send_clock = SendClock()
    times = [send_clock.reserve("img", 0.0, 4.0) for _ in range(12)]  # 12 retries all "due now"
    capacity, span = send_clock.window(4.0)
    assert min_span(times, capacity) >= span - 1e-6
    assert times[-1] - times[0] >= 2 * span - 1e-6
