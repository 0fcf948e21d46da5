"""Per-run cost ledger with a budget cap checked *before* every paid call.

Why reserve-then-settle: with many requests in flight, checking "spent so far"
after each response lets the whole in-flight batch overshoot the budget. Each
call first reserves its expected cost (the largest cost seen so far, or a
configured estimate); a reservation that would cross the cap is refused with
``BudgetExceededError`` and no request is sent. Settling replaces the
reservation with the cost OpenRouter reported.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field


class BudgetExceededError(RuntimeError):
    """A paid call was refused because it could exceed the run's budget."""


class RunHaltedError(RuntimeError):
    """A paid call was refused because an earlier call proved every further one would fail."""


@dataclass
class CostLedger:
    budget_usd: float | None = None
    estimate_usd: float | None = None  # expected cost of one call before any was observed
    spent_usd: float = 0.0
    reserved_usd: float = 0.0
    calls: int = 0
    refused: int = 0
    by_model: dict[str, float] = field(default_factory=dict)
    halted: str | None = None  # set after an error that dooms every further call (bad key, no credits)
    _lock: threading.Condition = field(default_factory=threading.Condition, repr=False)
    _max_seen: float = 0.0
    _in_flight: int = 0

    def _estimate(self) -> float:
        return max(self._max_seen, self.estimate_usd or 0.0)

    @contextmanager
    def reserve(self, model: str) -> Iterator[list[float]]:
        """Reserve the expected cost; the caller appends the real cost to the yielded list."""
        with self._lock:
            # With a budget but no idea of the price yet, one call at a time: the first answer tells the price.
            while self.budget_usd is not None and self._estimate() == 0.0 and self._in_flight > 0:
                self._lock.wait()
            if self.halted:
                raise RunHaltedError(self.halted)
            estimate = self._estimate()
            if self.budget_usd is not None and self.spent_usd + self.reserved_usd + estimate > self.budget_usd + 1e-12:
                self.refused += 1
                raise BudgetExceededError(
                    f"budget ${self.budget_usd:.4f} reached: spent ${self.spent_usd:.4f}, "
                    f"in flight ${self.reserved_usd:.4f}, next call ~${estimate:.4f}"
                )
            self.reserved_usd += estimate
            self._in_flight += 1
        actual: list[float] = []
        try:
            yield actual
        finally:
            with self._lock:
                self.reserved_usd -= estimate
                self._in_flight -= 1
                self._lock.notify_all()
                if actual:
                    cost = actual[0]
                    self.spent_usd += cost
                    self.calls += 1
                    self._max_seen = max(self._max_seen, cost)
                    self.by_model[model] = self.by_model.get(model, 0.0) + cost

    def halt(self, reason: str) -> None:
        with self._lock:
            self.halted = self.halted or reason
            self._lock.notify_all()

    @property
    def exhausted(self) -> bool:
        with self._lock:
            return self.budget_usd is not None and self.spent_usd + self._estimate() > self.budget_usd + 1e-12

    def summary(self) -> dict[str, object]:
        with self._lock:
            return {
                "budget_usd": self.budget_usd,
                "spent_usd": round(self.spent_usd, 6),
                "paid_calls": self.calls,
                "refused_calls": self.refused,
                "halted": self.halted,
                "by_model": {k: round(v, 6) for k, v in self.by_model.items()},
            }
