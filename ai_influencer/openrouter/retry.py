"""The client's retry policy: which faults are retried and how long to wait between attempts.

The client is the one retry owner for HTTP-level faults (see client.py); this is its policy, kept
apart so it reads in one place: the error decides whether to retry (``OpenRouterError.retryable``),
a 429's Retry-After decides how long, with jitter so refused workers do not return in lockstep.
"""

from __future__ import annotations

import random

from tenacity import RetryCallState, wait_exponential_jitter

from ai_influencer.openrouter.errors import OpenRouterError, RateLimitError


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
