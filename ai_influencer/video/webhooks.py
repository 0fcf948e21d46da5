"""OpenRouter video webhooks: verify, de-duplicate, and leave a note the waiting poller sees.

OpenRouter POSTs ``video.generation.completed|failed|cancelled|expired`` to the request's ``callback_url``
(or the workspace default). With a signing secret configured, each delivery carries
``X-OpenRouter-Signature: t=<unix ts>,v1=<hex HMAC-SHA256(secret, "<ts>,<raw body>")>``; deliveries may
repeat, each with ``X-OpenRouter-Idempotency-Key: <job_id>-<status>``.

Why an event only *wakes* the poller: the poller confirms every event with ``GET /videos/{id}`` before it
downloads or records anything, so a forged or replayed event can at worst make it poll early, never mark a
job done or change what is paid. The signature check (constant-time, 5-minute window in both directions,
the raw bytes as received) still keeps strangers from filling the inbox.

The inbox is a folder of one small JSON file per idempotency key, created with an atomic link (a repeat
finds the file and is reported as a duplicate; two deliveries racing each other cannot both win). The hub
route that receives the POST calls ``receive``; the poller calls ``WebhookInbox.events_for`` between polls.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from ai_influencer.io import _fsync_dir

SIGNATURE_HEADER = "X-OpenRouter-Signature"
IDEMPOTENCY_HEADER = "X-OpenRouter-Idempotency-Key"
TOLERANCE_S = 300  # the docs' verifier rejects timestamps older than 5 minutes
EVENT_TYPES = (
    "video.generation.completed",
    "video.generation.failed",
    "video.generation.cancelled",
    "video.generation.expired",
)
_HEX = re.compile(r"^[0-9a-f]{64}$")


class WebhookError(ValueError):
    """A delivery that is not accepted; ``reason`` is a short code (the hub maps it to a 4xx)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def _key(secret: SecretStr | str | bytes) -> bytes:
    if isinstance(secret, SecretStr):
        secret = secret.get_secret_value()
    return secret.encode() if isinstance(secret, str) else secret


def signature(secret: SecretStr | str | bytes, body: bytes, timestamp: int) -> str:
    """The ``X-OpenRouter-Signature`` value OpenRouter sends for ``body`` at ``timestamp``."""
    mac = hmac.new(_key(secret), f"{timestamp},".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def verify_signature(
    secret: SecretStr | str | bytes,
    body: bytes,
    header: str | None,
    *,
    now: float | None = None,
    tolerance_s: float = TOLERANCE_S,
) -> int:
    """Check one delivery; returns its timestamp or raises ``WebhookError``.

    ``body`` must be the raw bytes as received: re-serialised JSON changes the signed text. Timestamps
    more than ``tolerance_s`` away are refused in both directions (the docs' verifier checks only the past;
    a timestamp far in the future is a replay kept for later just the same).
    """
    if not header:
        raise WebhookError("missing_signature", f"no {SIGNATURE_HEADER} header")
    parts = dict(p.strip().split("=", 1) for p in header.split(",") if "=" in p)
    ts, given = parts.get("t", ""), parts.get("v1", "").lower()
    if not ts.isdigit() or not _HEX.match(given):
        raise WebhookError("malformed_signature", f"{SIGNATURE_HEADER} is not t=<unix time>,v1=<64 hex digits>")
    age = (time.time() if now is None else now) - int(ts)
    if abs(age) > tolerance_s:
        when = "old" if age > 0 else "in the future"
        raise WebhookError("stale", f"signature timestamp is {abs(age):.0f} s {when} (tolerance {tolerance_s:g} s)")
    expected = signature(secret, body, int(ts)).split("v1=", 1)[1]
    if not hmac.compare_digest(expected.encode(), given.encode()):
        raise WebhookError("bad_signature", "signature does not match the body (wrong secret, or the body changed)")
    return int(ts)


class WebhookData(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: str
    status: str
    generation_id: str | None = None
    model: str | None = None
    unsigned_urls: list[str] = Field(default_factory=list)
    usage: dict[str, Any] | None = None
    error: str | None = None

    @field_validator("unsigned_urls", mode="before")
    @classmethod
    def _urls(cls, value: Any) -> list[str]:
        return list(value or [])


class WebhookEvent(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: str
    created_at: str = ""
    data: WebhookData


def parse_event(body: bytes) -> WebhookEvent:
    try:
        event = WebhookEvent.model_validate(json.loads(body))
    except (ValueError, ValidationError) as exc:
        raise WebhookError("bad_body", f"not a video webhook event ({str(exc).splitlines()[0][:160]})") from None
    if event.type not in EVENT_TYPES:
        raise WebhookError("bad_body", f"unknown event type {event.type!r}; expected one of {', '.join(EVENT_TYPES)}")
    return event


@dataclass(frozen=True)
class Received:
    event: WebhookEvent
    idempotency_key: str
    duplicate: bool  # this key was recorded before: the delivery is acknowledged and ignored


class WebhookInbox:
    """``<folder>/<sha256 of the idempotency key>.json``: one file per distinct delivery, written once."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def _path(self, idempotency_key: str) -> Path:
        return self.folder / f"{hashlib.sha256(idempotency_key.encode()).hexdigest()[:32]}.json"

    def record(self, event: WebhookEvent, idempotency_key: str) -> bool:
        """Keep the event durably; False when this idempotency key is already there (a repeat)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        target = self._path(idempotency_key)
        if target.exists():
            return False
        payload = {
            "idempotency_key": idempotency_key,
            "received_at": time.time(),
            "event": event.model_dump(mode="json"),
        }
        tmp = self.folder / f".{target.name}.{secrets.token_hex(6)}.tmp"
        try:
            with tmp.open("x", encoding="utf-8") as fh:
                fh.write(json.dumps(payload, ensure_ascii=False) + "\n")
                fh.flush()
                os.fsync(fh.fileno())
            try:
                os.link(tmp, target)  # atomic create-if-absent: of two racing repeats, exactly one wins
            except FileExistsError:
                return False
        finally:
            tmp.unlink(missing_ok=True)
        _fsync_dir(self.folder)
        return True

    def events(self) -> list[WebhookEvent]:
        out = []
        if not self.folder.is_dir():
            return out
        for path in sorted(self.folder.glob("*.json")):
            try:
                out.append(WebhookEvent.model_validate(json.loads(path.read_text(encoding="utf-8"))["event"]))
            except (OSError, ValueError, KeyError, ValidationError):
                continue  # a damaged note only costs an early poll, never a result
        return out

    def events_for(self, job_ids: Iterable[str]) -> dict[str, WebhookEvent]:
        """The latest recorded event per job among ``job_ids`` (terminal events only exist)."""
        wanted = set(job_ids)
        found: dict[str, WebhookEvent] = {}
        for event in self.events():
            if event.data.id in wanted:
                found[event.data.id] = event
        return found

    def signature(self) -> tuple[int, int]:
        """Cheap "anything new?" check for a poller's wait loop: (file count, newest mtime in ns)."""
        try:
            entries = [e for e in os.scandir(self.folder) if e.name.endswith(".json")]
        except FileNotFoundError:
            return (0, 0)
        return (len(entries), max((e.stat().st_mtime_ns for e in entries), default=0))


def receive(
    inbox: WebhookInbox,
    body: bytes,
    headers: Mapping[str, str],
    *,
    secret: SecretStr | str | bytes | None,
    now: float | None = None,
    tolerance_s: float = TOLERANCE_S,
    known_job: Callable[[str], bool] | None = None,
) -> Received:
    """Verify (when a secret is configured), parse, de-duplicate and record one delivery.

    Raises ``WebhookError`` for a delivery to refuse. Without a secret nothing is verified (OpenRouter
    signs only when the workspace has a signing secret); see the module doc for why that is still safe.
    An unsigned delivery is then recorded only for a job ``known_job`` says this workspace submitted
    (reason ``unknown_job``), under ``<job id>-<event>`` whatever its idempotency header says: anyone who
    can reach the hub could otherwise write one inbox file per made-up job id or key until the disk is
    full; now at most one per job and event type. Signed deliveries are taken as sent (the signature is
    the check).
    """
    lower = {k.lower(): v for k, v in headers.items()}
    signed = False
    if secret is not None and _key(secret):
        verify_signature(secret, body, lower.get(SIGNATURE_HEADER.lower()), now=now, tolerance_s=tolerance_s)
        signed = True
    event = parse_event(body)
    if not signed and known_job is not None and not known_job(event.data.id):
        raise WebhookError(
            "unknown_job",
            f"no video job {event.data.id[:80]!r} was submitted from this workspace; unsigned deliveries are "
            "taken only for its own jobs (set INFLUENCER_VIDEO_WEBHOOK_SECRET to OpenRouter's signing secret)",
        )
    own_key = f"{event.data.id}-{event.type.rsplit('.', 1)[1]}"
    key = (lower.get(IDEMPOTENCY_HEADER.lower()) or own_key) if signed else own_key
    fresh = inbox.record(event, key)
    return Received(event, key, duplicate=not fresh)
