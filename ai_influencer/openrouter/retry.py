"""The client's retry policy: which faults are retried and how long to wait between attempts.

The client is the one retry owner for HTTP-level faults (see client.py); this is its policy, kept
apart so it reads in one place: the error decides whether to retry (``OpenRouterError.retryable``),
a 429's Retry-After decides how long, with jitter so refused workers do not return in lockstep.
"""

from __future__ import annotations

import logging
import random

from tenacity import RetryCallState, wait_exponential_jitter

from ai_influencer.openrouter.errors import OpenRouterError, RateLimitError

log = logging.getLogger("ai_influencer.openrouter")


class WaitRetryAfterOrBackoff:
    """Retry-After (capped) plus up to 50 % jitter on 429, else exponential backoff with jitter (capped).

    Why jitter on Retry-After too: every worker refused in the same second gets the same
    Retry-After; obeyed exactly, they all come back in the same second and are refused again.
    """

    RETRY_AFTER_JITTER = 0.5

    def __init__(self, initial: float, cap: float) -> None:
        self.cap = cap
        self.backoff = wait_exponential_jitter(multiplier=initial, max=cap, jitter=initial)

    def __call__(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, RateLimitError) and exc.retry_after is not None:
            base = min(exc.retry_after, self.cap)
            return base * (1.0 + random.uniform(0.0, self.RETRY_AFTER_JITTER)) + random.uniform(0.0, 0.1)
        return float(self.backoff(state))


def is_retryable(exc: BaseException) -> bool:
    return isinstance(exc, OpenRouterError) and exc.retryable


def log_retry(state: RetryCallState) -> None:
    """tenacity ``before_sleep``: say that a request is retried, in how long and why.

    Why: an unreachable base URL was retried for ~34 s without a line of output, which looks like a
    hang. Called only when a retry is really coming (after ``retry`` and ``stop`` decided); it changes
    nothing about what is retried or when.
    """
    exc = state.outcome.exception() if state.outcome is not None else None
    wait = state.next_action.sleep if state.next_action is not None else 0.0
    most = getattr(state.retry_object.stop, "max_attempt_number", None)
    of = f" of {most}" if most else ""
    why = exc.message if isinstance(exc, OpenRouterError) else (str(exc) or type(exc).__name__)
    status = f"{exc.status} " if isinstance(exc, OpenRouterError) and exc.status else ""
    log.warning("retrying in %.0f s (attempt %d%s): %s%s", wait, state.attempt_number + 1, of, status, why)
