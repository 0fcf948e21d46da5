"""Per-run cost ledger with a budget cap checked *before* every paid call.

Why reserve-then-settle: with many requests in flight, checking "spent so far"
after each response lets the whole in-flight batch overshoot the budget. Each
call first reserves its expected cost (the largest cost seen so far, or a
configured estimate); a reservation that would cross the cap is refused with
``BudgetExceededError`` and no request is sent. Settling replaces the
reservation with the cost OpenRouter reported. A call whose cost the provider
does not report settles at the estimate and is counted as unpriced: counting it
as free let 50 calls through a $0.10 budget.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any


class BudgetExceededError(RuntimeError):
    """A paid call was refused because it could exceed the run's budget."""


class BudgetUnenforceableError(BudgetExceededError):
    """A budget is set, but nothing tells what a call costs (no report, no estimate, no price)."""


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
    unpriced: int = 0  # calls the provider reported no cost for; settled at the estimate
    halted: str | None = None  # set after an error that dooms every further call (bad key, no credits)
    _lock: threading.Condition = field(default_factory=threading.Condition, repr=False)
    _max_seen: float = 0.0
    _in_flight: int = 0

    def _estimate(self) -> float:
        return max(self._max_seen, self.estimate_usd or 0.0)

    @contextmanager
    def reserve(self, model: str) -> Iterator[list[float | None]]:
        """Reserve the expected cost; the caller appends the reported cost (``None``: not reported)."""
        with self._lock:
            # With a budget but no idea of the price yet, one call at a time: the first answer tells the price.
            while self.budget_usd is not None and self._estimate() == 0.0 and self._in_flight > 0:
                self._lock.wait()
            if self.halted:
                raise RunHaltedError(self.halted)
            estimate = self._estimate()
            if self.budget_usd is not None and estimate == 0.0 and self.unpriced:
                self.refused += 1
                raise BudgetUnenforceableError(
                    f"budget ${self.budget_usd:.4f} cannot be enforced: {model} reported no cost and no price "
                    "estimate is known; set one (GenerateParams.estimate_usd / --estimate-usd)"
                )
            if self.budget_usd is not None and self.spent_usd + self.reserved_usd + estimate > self.budget_usd + 1e-12:
                self.refused += 1
                raise BudgetExceededError(
                    f"budget ${self.budget_usd:.4f} reached: spent ${self.spent_usd:.4f}, "
                    f"in flight ${self.reserved_usd:.4f}, next call ~${estimate:.4f}"
                )
            self.reserved_usd += estimate
            self._in_flight += 1
        actual: list[float | None] = []
        try:
            yield actual
        finally:
            with self._lock:
                self.reserved_usd -= estimate
                self._in_flight -= 1
                self._lock.notify_all()
                if actual:
                    reported = actual[0]
                    if reported is None:
                        self.unpriced += 1
                        cost = estimate
                    else:
                        cost = reported
                        self._max_seen = max(self._max_seen, cost)
                    self.spent_usd += cost
                    self.calls += 1

    def halt(self, reason: str) -> None:
        with self._lock:
            self.halted = self.halted or reason
            self._lock.notify_all()

    def summary(self) -> dict[str, Any]:
        """What a run reports about money: spend (unpriced calls at their estimate), refusals."""
        with self._lock:
            return {
                "budget_usd": self.budget_usd,
                "spent_usd": round(self.spent_usd, 6),
                "paid_calls": self.calls,
                "unpriced_calls": self.unpriced,
                "refused_calls": self.refused,
                "halted": self.halted,
            }
