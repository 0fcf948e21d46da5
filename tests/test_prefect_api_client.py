"""``flows.api.api_client`` (the hub's and ``influencer trigger``'s Prefect client) against a real HTTP server
on 127.0.0.1 that is busy the way a Prefect server on SQLite is: 503 while its database is locked."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from flows.api import BUSY_ATTEMPTS, api_client


class Busy:
    """Answers the first ``busy`` requests with ``status`` (Retry-After as given), then 201 with the body."""

    def __init__(self, busy: int, status: int = 503, retry_after: list[str | None] | None = None) -> None:
        self.busy, self.status, self.retry_after = busy, status, retry_after or []
        self.bodies: list[bytes] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                outer.bodies.append(body)
                n = len(outer.bodies)
                if n <= outer.busy:
                    self.send_response(outer.status)
                    hint = outer.retry_after[n - 1] if n - 1 < len(outer.retry_after) else None
                    if hint is not None:
                        self.send_header("Retry-After", hint)
                    payload = b'{"exception_message":"Service Unavailable"}'
                else:
                    self.send_response(201)
                    payload = json.dumps({"got": json.loads(body), "attempt": n}).encode()
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/api"

    def __enter__(self) -> Busy:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def busy_then_ok() -> Iterator[Busy]:
    with Busy(busy=2, retry_after=["0", None]) as server:  # the second without a hint: the client's own wait
        yield server


def test_a_busy_prefect_server_is_asked_again_with_the_same_request(busy_then_ok: Busy) -> None:
    """The hub's "continue" on the review page got Prefect's 503 (SQLite locked) and showed it as an error."""
    body = {"run_input": {"action": "continue"}}
    with api_client(busy_then_ok.url) as client:
        r = client.post("/flow_runs/abc/resume", json=body)
    assert r.status_code == 201 and r.json() == {"got": body, "attempt": 3}
    assert [json.loads(b) for b in busy_then_ok.bodies] == [body] * 3, "the same request each time"


@pytest.mark.parametrize("status", [429, 502, 503])
def test_a_server_that_stays_busy_is_answered_with_its_last_status(status: int) -> None:
    with Busy(busy=100, status=status, retry_after=["0"] * 100) as server, api_client(server.url) as client:
        r = client.post("/flow_runs/abc/resume", json={})
    assert r.status_code == status and len(server.bodies) == BUSY_ATTEMPTS


def test_other_errors_are_not_sent_again() -> None:
    with Busy(busy=100, status=409) as server, api_client(server.url) as client:
        r = client.post("/flow_runs/abc/resume", json={})
    assert r.status_code == 409 and len(server.bodies) == 1
