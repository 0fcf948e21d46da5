"""Video webhooks: signatures checked as OpenRouter's docs describe (an independent HMAC here, not our own
signing code), stale and tampered deliveries refused, repeats recorded once even when they race."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from ai_influencer.video.webhooks import (
    IDEMPOTENCY_HEADER,
    SIGNATURE_HEADER,
    WebhookError,
    WebhookInbox,
    receive,
    signature,
    verify_signature,
)

SECRET = "whsec_0123456789"
BODY = json.dumps(
    {
        "type": "video.generation.completed",
        "created_at": "2026-04-24T12:00:00.000Z",
        "data": {
            "id": "abc123",
            "status": "completed",
            "generation_id": "gen-xyz789",
            "model": "google/veo-3.1",
            "unsigned_urls": ["https://openrouter.ai/api/v1/videos/abc123/content?index=0"],
            "usage": {"cost": 0.5, "is_byok": False},
        },
    }
).encode()


def docs_signature(secret: str, body: bytes, ts: int) -> str:
    """The docs' recipe, written out: HMAC-SHA256 over "<timestamp>,<raw body>", hex, as t=..,v1=.."""
    return f"t={ts},v1={hmac.new(secret.encode(), f'{ts},'.encode() + body, hashlib.sha256).hexdigest()}"


def headers(sig: str | None, key: str = "abc123-completed") -> dict[str, str]:
    out = {IDEMPOTENCY_HEADER: key, "Content-Type": "application/json"}
    if sig is not None:
        out[SIGNATURE_HEADER] = sig
    return out


def test_a_good_signature_is_accepted_and_the_event_recorded(tmp_path: Path) -> None:
    now = time.time()
    assert signature(SECRET, BODY, int(now)) == docs_signature(SECRET, BODY, int(now))
    inbox = WebhookInbox(tmp_path / "webhooks")
    got = receive(inbox, BODY, headers(docs_signature(SECRET, BODY, int(now) - 10)), secret=SECRET, now=now)
    assert (
        not got.duplicate and got.event.data.id == "abc123" and got.event.data.usage == {"cost": 0.5, "is_byok": False}
    )
    assert inbox.events_for(["abc123", "other"])["abc123"].data.status == "completed"
    assert len(list((tmp_path / "webhooks").glob("*.json"))) == 1


@pytest.mark.parametrize(
    ("make_header", "body", "reason"),
    [
        (lambda ts: docs_signature("whsec_wrong", BODY, ts), BODY, "bad_signature"),
        (lambda ts: docs_signature(SECRET, BODY, ts), BODY.replace(b"0.5", b"0.0"), "bad_signature"),
        (lambda ts: docs_signature(SECRET, BODY, ts - 301), BODY, "stale"),
        (lambda ts: docs_signature(SECRET, BODY, ts + 301), BODY, "stale"),
        (lambda ts: docs_signature(SECRET, BODY, ts).replace("t=", "t=x"), BODY, "malformed_signature"),
        (lambda ts: f"t={ts}", BODY, "malformed_signature"),
        (lambda ts: None, BODY, "missing_signature"),
        (lambda ts: docs_signature(SECRET, b"{}", ts), b"{}", "bad_body"),
    ],
)
def test_bad_stale_and_missing_signatures_are_refused_and_nothing_is_recorded(
    tmp_path: Path, make_header: Callable[[int], str | None], body: bytes, reason: str
) -> None:
    now = time.time()
    inbox = WebhookInbox(tmp_path / "webhooks")
    with pytest.raises(WebhookError) as err:
        receive(inbox, body, headers(make_header(int(now))), secret=SECRET, now=now)
    assert err.value.reason == reason
    assert "\n" not in str(err.value)
    assert inbox.events() == []


def test_the_tolerance_is_five_minutes() -> None:
    now = float(int(time.time()))
    assert verify_signature(SECRET, BODY, docs_signature(SECRET, BODY, int(now) - 299), now=now) == int(now) - 299
    with pytest.raises(WebhookError, match="301 s old"):
        verify_signature(SECRET, BODY, docs_signature(SECRET, BODY, int(now) - 301), now=now)


def test_a_repeated_delivery_is_recorded_once_even_when_repeats_race(tmp_path: Path) -> None:
    inbox = WebhookInbox(tmp_path / "webhooks")
    now = time.time()
    sig = docs_signature(SECRET, BODY, int(now))
    first = receive(inbox, BODY, headers(sig), secret=SECRET, now=now)
    again = receive(inbox, BODY, headers(sig), secret=SECRET, now=now)
    assert (first.duplicate, again.duplicate) == (False, True)
    results: list[bool] = []
    start = threading.Barrier(8)

    def deliver() -> None:
        start.wait()
        results.append(receive(inbox, BODY, headers(sig, "race-key"), secret=SECRET, now=now).duplicate)

    threads = [threading.Thread(target=deliver) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False] + [True] * 7, "exactly one of the racing repeats is recorded"
    assert len(inbox.events()) == 2
    assert not list((tmp_path / "webhooks").glob(".*.tmp")), "no temporary file is left"


def test_without_a_secret_deliveries_are_taken_unverified(tmp_path: Path) -> None:
    inbox = WebhookInbox(tmp_path / "webhooks")
    got = receive(inbox, BODY, {}, secret=None)
    assert got.idempotency_key == "abc123-completed" and not got.duplicate


def test_unsigned_deliveries_are_taken_only_for_this_workspaces_jobs_once_per_event(tmp_path: Path) -> None:
    """Without a secret anyone reaching the hub could post: made-up job ids, or one job under endless
    idempotency keys, would each have written an inbox file until the disk was full."""
    inbox = WebhookInbox(tmp_path / "webhooks")
    ours = {"abc123"}
    with pytest.raises(WebhookError) as refused:
        receive(inbox, BODY.replace(b"abc123", b"made-up-1"), {}, secret=None, known_job=ours.__contains__)
    assert refused.value.reason == "unknown_job" and "made-up-1" in str(refused.value)
    assert inbox.events() == []
    keys = [
        receive(inbox, BODY, {IDEMPOTENCY_HEADER: f"k{i}"}, secret=None, known_job=ours.__contains__) for i in range(20)
    ]
    assert {g.idempotency_key for g in keys} == {"abc123-completed"}, "the header is not trusted unsigned"
    assert [g.duplicate for g in keys] == [False] + [True] * 19
    assert len(list((tmp_path / "webhooks").glob("*.json"))) == 1
    # Signed, the header is OpenRouter's and any job is taken: the signature is the check.
    now = int(time.time())
    other = BODY.replace(b"abc123", b"not-ours")
    signed = receive(
        inbox, other, {SIGNATURE_HEADER: signature(SECRET, other, now), IDEMPOTENCY_HEADER: "not-ours-completed"},
        secret=SECRET, now=now, known_job=ours.__contains__,
    )  # fmt: skip
    assert signed.idempotency_key == "not-ours-completed" and not signed.duplicate
