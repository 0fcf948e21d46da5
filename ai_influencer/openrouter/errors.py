"""Typed OpenRouter errors.

Why a hierarchy: callers (tenacity here, Prefect retry conditions in
``tasks/``, HTTP status mapping in the hub) must decide "retry or stop" from
the type alone. Paying again for a request that can never succeed (bad key,
no credits, moderation) wastes money and hides the real problem, so only
``RetryableError`` subclasses are ever retried.

No error message ever includes the API key: messages are built from the
response body and status only.
"""

from __future__ import annotations

import email.utils
import html
import re
import time
from typing import Any

_TITLE = re.compile(rb"<title[^>]*>(.*?)</title>", re.I | re.S)
_TAGS = re.compile(r"<[^>]+>")


class OpenRouterError(Exception):
    """Base class. ``status`` is the HTTP status (or 0 for network failures)."""

    retryable: bool = False
    code: str = "openrouter_error"

    def __init__(self, message: str, *, status: int = 0, metadata: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.metadata = metadata or {}

    def __str__(self) -> str:
        prefix = f"OpenRouter {self.status}" if self.status else "OpenRouter"
        return f"{prefix} ({self.code}): {self.message}"


class RetryableError(OpenRouterError):
    """Transient: the same request may succeed later."""

    retryable = True
    retry_after: float | None = None


class FatalError(OpenRouterError):
    """Permanent for this request: retrying costs money and cannot help."""


class BadRequestError(FatalError):
    code = "bad_request"


class AuthError(FatalError):
    code = "auth"


class InsufficientCreditsError(FatalError):
    """402. ``limit_source`` (``error.metadata``) tells the account's credits from the key's own limit."""

    code = "insufficient_credits"

    @property
    def limit_source(self) -> str | None:
        value = self.metadata.get("limit_source")
        return None if value is None else str(value)


class CreditsExhaustedError(InsufficientCreditsError):
    """402, ``limit_source: openrouter_credits``: the account's balance cannot cover the request."""

    code = "credits_exhausted"
    HINT = "the OpenRouter account is out of credits: add credits at https://openrouter.ai/credits, then run again"


class KeyLimitError(InsufficientCreditsError):
    """402, ``limit_source: openrouter_key_limit``: this key's own spending limit is used up."""

    code = "key_limit"
    HINT = (
        "this API key reached its own credit limit (the account may still have credits): raise the key's "
        "limit at https://openrouter.ai/settings/keys, wait for its reset, or use another key"
    )


class PayloadTooLargeError(BadRequestError):
    """413: the request body (the reference images, mostly) is larger than the route accepts."""

    code = "payload_too_large"


class UnsupportedParameterError(ValueError):
    """A parameter the run would send is not accepted by the endpoint that would serve it.

    Raised before anything is paid, from the endpoint's capability descriptors; the message is the
    one line a user needs (``--n 4: google/gemini-2.5-flash-image accepts n = 1``).
    """


class ModerationError(FatalError):
    """403: the input was flagged. ``reasons`` and ``flagged_input`` come from the error metadata."""

    code = "moderation"

    @property
    def reasons(self) -> list[str]:
        value = self.metadata.get("reasons") or []
        return [str(v) for v in value] if isinstance(value, list) else [str(value)]

    @property
    def flagged_input(self) -> str | None:
        value = self.metadata.get("flagged_input")
        return None if value is None else str(value)


class StructuredOutputError(FatalError):
    """The model answered, but not with JSON matching the requested schema."""

    code = "structured_output"


class RateLimitError(RetryableError):
    """429. ``own_limit``: OpenRouter's own limit (the answer carries ``X-RateLimit-*`` headers), so our
    request rate is the cause; without them the upstream provider was busy, which says nothing about it."""

    code = "rate_limited"

    def __init__(self, message: str, *, retry_after: float | None = None, own_limit: bool = False, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.retry_after = retry_after
        self.own_limit = own_limit


class UpstreamError(RetryableError):
    """408 / 5xx / timeouts / connection errors / an error inside a 200 body."""

    code = "upstream"


class EmptyResponseError(UpstreamError):
    """200 with no choices."""

    code = "empty_response"


class NoImageError(UpstreamError):
    """200 from an image request with no image (refusal or safety filter); retried, as outputs vary."""

    code = "no_image"


class ImageDecodeError(UpstreamError):
    """An image came back but its data URL or bytes cannot be decoded."""

    code = "image_decode"


class DeadlineExceededError(UpstreamError):
    """The whole request (connect, send, wait, read) took longer than the client's deadline."""

    code = "deadline"


def describe_body(raw: bytes | str, limit: int = 200) -> str:
    """A one-line description of a response body that is not the JSON we expected.

    Why: a proxy's 502/503 is a whole HTML page, and printing it buried the one line a user
    needs; a body cut off mid-way only said "expected a JSON object".
    """
    data = raw.encode("utf-8", "replace") if isinstance(raw, str) else raw
    stripped = data.strip()
    if not stripped:
        return "empty body"
    low = stripped[:200].lower()
    if low.startswith((b"<!doctype", b"<html")) or b"<html" in low:
        m = _TITLE.search(stripped[:4096])
        title = html.unescape(m.group(1).decode("utf-8", "replace")).strip() if m else ""
        if not title:
            text = _TAGS.sub(" ", stripped[:2048].decode("utf-8", "replace"))
            title = " ".join(text.split())[:limit]
        return f"an HTML page ({title or 'no title'}; {len(data)} bytes)"
    text = stripped.decode("utf-8", "replace")
    if text[:1] in "{[":
        return f"incomplete JSON ({len(data)} bytes; the body ends mid-document: cut off in transit?)"
    one_line = " ".join(text.split())
    return one_line[:limit] + ("..." if len(one_line) > limit else "")


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        dt = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if dt is None:
        return None
    return max(0.0, dt.timestamp() - (time.time() if now is None else now))


def parse_ratelimit_reset(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds until ``X-RateLimit-Reset``: OpenRouter sends epoch milliseconds; epoch seconds and a
    plain delta in seconds are read too."""
    try:
        number = float((value or "").strip())
    except ValueError:
        return None
    current = time.time() if now is None else now
    if number > 1e11:  # epoch milliseconds
        return max(0.0, number / 1000.0 - current)
    if number > 1e9:  # epoch seconds
        return max(0.0, number - current)
    return max(0.0, number)


def _rate_limit_error(message: str, headers: dict[str, str], kw: dict[str, Any]) -> RateLimitError:
    """A 429: Retry-After when given, else the end of OpenRouter's own window (``X-RateLimit-Reset``)."""
    own = any(h in headers for h in ("x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset"))
    retry_after = parse_retry_after(headers.get("retry-after"))
    if retry_after is None and own:
        retry_after = parse_ratelimit_reset(headers.get("x-ratelimit-reset"))
    return RateLimitError(message, retry_after=retry_after, own_limit=own, **kw)


def error_from_response(status: int, body: Any, headers: dict[str, str] | None = None) -> OpenRouterError:
    """Map an HTTP status and OpenRouter error body to the right exception type."""
    err = body.get("error") if isinstance(body, dict) else None
    if isinstance(err, dict):
        message = str(err.get("message") or "no message")
        metadata = err.get("metadata") if isinstance(err.get("metadata"), dict) else {}
        code = err.get("code")
        if status == 200 and isinstance(code, int):
            status = code  # an error delivered inside a 200 body carries its real code
        elif status == 200 and isinstance(code, str) and code.isdigit():
            status = int(code)
    else:
        message = describe_body(body) if isinstance(body, str | bytes) else (str(body)[:500] if body else "empty body")
        metadata = {}
    headers = {k.lower(): v for k, v in (headers or {}).items()}
    kw: dict[str, Any] = {"status": status, "metadata": metadata}
    if status == 400:
        return BadRequestError(message, **kw)
    if status == 401:
        return AuthError(message, **kw)
    if status == 402:
        source = metadata.get("limit_source")
        if source == "openrouter_credits":
            return CreditsExhaustedError(f"{CreditsExhaustedError.HINT} ({message})", **kw)
        if source == "openrouter_key_limit":
            return KeyLimitError(f"{KeyLimitError.HINT} ({message})", **kw)
        return InsufficientCreditsError(message, **kw)
    if status == 403:
        return ModerationError(message, **kw)
    if status == 413:
        return PayloadTooLargeError(message, **kw)
    if status == 429:
        return _rate_limit_error(message, headers, kw)
    if status in (408, 200) or status >= 500:
        return UpstreamError(message, **kw)
    if 400 <= status < 500:
        return BadRequestError(message, **kw)
    return UpstreamError(message, **kw)
