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
    """Retry-After (capped) plus up to 50 % jitter on 429, else exponential backoff with jitter (capped);
    the first retry after an upstream 429 (no Retry-After, no ``X-RateLimit-*``) comes 4x sooner.

    Why jitter on Retry-After too: every worker refused in the same second gets the same
    Retry-After; obeyed exactly, they all come back in the same second and are refused again.

    Why a short first retry for an upstream 429: it says the provider OpenRouter picked was busy at that
    moment, nothing about our rate (``errors.RateLimitError``; our own rate is ``AdaptiveRate``'s job), and
    OpenRouter routes the retry anew. Waiting the full 1-2 s backoff each time made a run with a third
    of its requests refused upstream 2.08x as long as a clean one at 1 s per image (bench/pacing.py,
    docs/benchmarks.md). Later retries keep the whole schedule, so a provider that stays busy still gets
    the same patience before an image is given up (0.75 s less in all).
    """

    RETRY_AFTER_JITTER = 0.5
    UPSTREAM_FIRST = 0.25  # of ``initial``: the first retry after an upstream 429, plus as much jitter

    def __init__(self, initial: float, cap: float) -> None:
        self.cap = cap
        self.initial = initial
        self.backoff = wait_exponential_jitter(multiplier=initial, max=cap, jitter=initial)

    def __call__(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, RateLimitError) and exc.retry_after is not None:
            base = min(exc.retry_after, self.cap)
            return base * (1.0 + random.uniform(0.0, self.RETRY_AFTER_JITTER)) + random.uniform(0.0, 0.1)
        if isinstance(exc, RateLimitError) and not exc.own_limit and state.attempt_number == 1:
            first = self.initial * self.UPSTREAM_FIRST
            return min(first + random.uniform(0.0, first), self.cap)
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
