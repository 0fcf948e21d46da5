"""Per-run cost ledger with a budget cap checked *before* every paid call.

Why reserve-then-settle: with many requests in flight, checking "spent so far"
after each response lets the whole in-flight batch overshoot the budget. Each
call first reserves its expected cost (from the endpoint's price lines for the
images it asks for, the largest per-image cost seen so far, or a configured
estimate per image); a reservation that would cross the cap is refused with
``BudgetExceededError`` and no request is sent. Settling replaces the
reservation with the cost OpenRouter reported. A call whose cost the provider
does not report settles at the price lines' cost of the images it returned (or
the estimate) and is counted as unpriced: counting it as free let 50 calls
through a $0.10 budget.

A call asks for ``images`` images (the Image API's ``n``); the budget counts
images and their price, while rate and in-flight limits count calls.
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
class Bill:
    """What one reserved call turned out to cost; filled by the caller inside ``CostLedger.reserve``.

    ``append(cost)`` (the reported cost, None when the provider reported none) marks the call paid;
    ``images`` is how many images the answer carried (a short answer pays for fewer) and
    ``fallback_usd`` what those cost by the endpoint's price lines, used when no cost was reported.
    """

    reported: list[float | None] = field(default_factory=list)
    images: int | None = None
    fallback_usd: float | None = None

    def append(self, cost: float | None) -> None:
        self.reported.append(cost)

    def __bool__(self) -> bool:
        return bool(self.reported)

    def __getitem__(self, i: int) -> float | None:
        return self.reported[i]


@dataclass
class CostLedger:
    budget_usd: float | None = None
    estimate_usd: float | None = None  # expected cost of one image before any was observed
    spent_usd: float = 0.0
    reserved_usd: float = 0.0
    calls: int = 0
    images: int = 0  # images the paid calls returned
    refused: int = 0
    unpriced: int = 0  # calls the provider reported no cost for; settled at the estimate
    halted: str | None = None  # set after an error that dooms every further call (bad key, no credits)
    _lock: threading.Condition = field(default_factory=threading.Condition, repr=False)
    _max_seen: float = 0.0  # the largest reported cost per image so far
    _in_flight: int = 0

    def _estimate(self, images: int = 1, expected: float | None = None) -> float:
        return max(self._max_seen * images, (self.estimate_usd or 0.0) * images, expected or 0.0)

    @contextmanager
    def reserve(self, model: str, *, images: int = 1, expected: float | None = None) -> Iterator[Bill]:
        """Reserve the expected cost of a call for ``images`` images (``expected``: the price lines' cost).

        The caller fills the yielded ``Bill`` (``append`` the reported cost, ``None``: not reported).
        """
        with self._lock:
            # With a budget but no idea of the price yet, one call at a time: the first answer tells the price.
            while self.budget_usd is not None and self._estimate(images, expected) == 0.0 and self._in_flight > 0:
                self._lock.wait()
            if self.halted:
                raise RunHaltedError(self.halted)
            estimate = self._estimate(images, expected)
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
        bill = Bill()
        try:
            yield bill
        finally:
            with self._lock:
                self.reserved_usd -= estimate
                self._in_flight -= 1
                self._lock.notify_all()
                if bill:
                    got = images if bill.images is None else bill.images
                    reported = bill[0]
                    if reported is None:
                        self.unpriced += 1
                        cost = bill.fallback_usd if bill.fallback_usd is not None else estimate * got / max(1, images)
                    else:
                        cost = reported
                        self._max_seen = max(self._max_seen, cost / max(1, got))
                    self.spent_usd += cost
                    self.calls += 1
                    self.images += got

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
                "paid_images": self.images,
                "unpriced_calls": self.unpriced,
                "refused_calls": self.refused,
                "halted": self.halted,
            }


@dataclass(frozen=True)
class CostEstimate:
    """What a run will cost before it sends anything: from the endpoint's price lines (see capabilities)."""

    requests: int
    images: int
    total_usd: float | None  # None: the endpoint lists no usable price (token-priced, or none)
    lines: tuple[str, ...] = ()

    def describe(self) -> str:
        what = f"{self.requests} request(s) for {self.images} image(s)"
        if self.total_usd is None:
            return f"{what}; no price estimate (the endpoint lists no per-image price)"
        lines = f" ({'; '.join(self.lines)})" if self.lines else ""
        return f"{what}; estimate ${self.total_usd:.4f}{lines}"


def accuracy(estimate_usd: float | None, billed_usd: float | None) -> str:
    """Estimate beside billed, as a user reads it: ``$0.9600 estimated, $0.9600 billed (+0.0 %)``."""
    if estimate_usd is None or billed_usd is None:
        return "n/a"
    if billed_usd == 0:
        return f"${estimate_usd:.4f} estimated, $0 billed"
    return f"${estimate_usd:.4f} estimated, ${billed_usd:.4f} billed ({(estimate_usd / billed_usd - 1) * 100:+.1f} %)"
