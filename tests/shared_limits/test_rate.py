"""Spending a server-side rate limit: the rate-slot calls and the dispatcher.

The slot calls go over real HTTP to a small server on 127.0.0.1 that answers like a busy Prefect server, and
to a real Prefect server for the dispatcher.
"""

from __future__ import annotations

import itertools
import json
import socket
import struct
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from prefect.client.orchestration import SyncPrefectClient, get_client

from ai_influencer.pacing import SEND_SAFETY
from shared_limits.limits import ensure_limit
from shared_limits.prefect_compat import TRANSPORT_TRIES, post_increment_with_lease
from shared_limits.rate import RateDispatcher, RateSlotsError, take_rate_slots

RESET = 0  # a script entry: read the request, then reset the connection without an answer


class BusyServer:
    """Answers POST .../v2/concurrency_limits/increment from a script of status codes, like a busy server.

    A ``RESET`` entry closes the connection with a TCP reset instead, as a server does that drops a
    keep-alive connection the client reuses (the client reads ``[Errno 104] Connection reset by peer``).
    """

    def __init__(self, script: list[tuple[int, dict[str, str]]]) -> None:
        self.script = list(script)
        self.calls: list[tuple[float, dict]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # the client's CSRF probe, answered as a server without CSRF does
                data = json.dumps({"detail": "CSRF protection is disabled."}).encode()
                self.send_response(422)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                outer.calls.append((time.monotonic(), {"path": self.path, **body}))
                status, headers = outer.script.pop(0) if outer.script else (200, {})
                if status == RESET:
                    self.close_connection = True
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.connection.close()  # closed with the handler's files: a reset, no FIN first
                    return
                headers = dict(headers)
                time.sleep(float(headers.pop("X-Delay", 0)))  # a server that queues before it answers
                if status != 200:
                    payload: object = {"detail": "database is locked"}
                elif self.path.endswith("-with-lease"):
                    payload = {"lease_id": str(uuid.uuid4()), "limits": []}
                else:
                    payload = [{"id": str(uuid.uuid4()), "name": body["names"][0], "limit": 10}]
                data = json.dumps(payload).encode()
                self.send_response(status)
                for k, v in {"Content-Type": "application/json", **headers}.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> SyncPrefectClient:
        self.thread.start()
        self.client = SyncPrefectClient(f"http://127.0.0.1:{self.server.server_address[1]}/api")
        return self.client.__enter__()

    def __exit__(self, *exc: object) -> None:
        self.client.__exit__(*exc)
        self.server.shutdown()
        self.server.server_close()


def test_rate_slots_retry_a_locked_server_within_a_second() -> None:
    """Prefect's own client waits 2 s, then 4 s, after a 503; ours asks again within a quarter second."""
    fake = BusyServer([(503, {}), (503, {}), (503, {}), (200, {"X-Delay": "0.3"})])
    with fake as client:
        start = time.monotonic()
        retry_after, answered_at = take_rate_slots(client, "openrouter-image-rate", 5)
        took = time.monotonic() - start
    assert retry_after == 0.0
    assert len(fake.calls) == 4
    assert fake.calls[-1][1] == {
        "path": "/api/v2/concurrency_limits/increment",
        "names": ["openrouter-image-rate"],
        "slots": 5,
        "mode": "rate_limit",
    }
    # The decay clock is counted from the grant's answer: the server may write any time before it.
    assert answered_at - fake.calls[-1][0] >= 0.3
    assert took < 1.3


def test_rate_slots_ask_again_on_every_attempt() -> None:
    """A caller taking what has decayed asks for more after a busy server kept it waiting."""
    asks = iter(range(5, 100))
    fake = BusyServer([(503, {}), (503, {}), (200, {})])
    with fake as client:
        take_rate_slots(client, "r", lambda: next(asks))
    assert [body["slots"] for _, body in fake.calls] == [5, 6, 7]


def test_rate_slots_report_a_busy_limit_without_blocking_and_fail_on_a_missing_one() -> None:
    with BusyServer([(423, {"Retry-After": "0.7"})]) as client:
        retry_after, _ = take_rate_slots(client, "r", 3, block=False)
        assert retry_after == pytest.approx(0.7)
    with BusyServer([(423, {"Retry-After": "0.2"}), (200, {})]) as client:
        start = time.monotonic()
        assert take_rate_slots(client, "r", 3)[0] == 0.0
        assert time.monotonic() - start >= 0.2
    with BusyServer([(503, {})] * 50) as client, pytest.raises(RateSlotsError, match="within 1 s"):
        take_rate_slots(client, "r", 1, timeout_s=1.0)


def test_a_connection_reset_by_the_server_is_asked_again_on_a_new_connection() -> None:
    """Prefect's client retries a reset connection; the plain send that skips its 503 back-off must too (CI
    saw a run fail on one reset from the embedded server). Persistent resets still fail, after a bound."""
    with BusyServer([(RESET, {}), (RESET, {}), (200, {})]) as client:
        assert take_rate_slots(client, "r", 2)[0] == 0.0
    with BusyServer([(RESET, {}), (503, {}), (RESET, {}), (200, {})]) as client:
        response = post_increment_with_lease(client, "inflight", 1, "concurrency", 30.0)
        assert response.status_code == 200 and response.json()["lease_id"]
    fake = BusyServer([(RESET, {})] * 20)
    with fake as client, pytest.raises(httpx.ReadError, match="reset"):
        take_rate_slots(client, "r", 1)
    assert len(fake.calls) == TRANSPORT_TRIES


def test_dispatcher_spends_a_real_server_limit_on_an_even_grid(prefect_api_url: str) -> None:
    name = f"rate-{uuid.uuid4().hex[:8]}"
    rate = 20.0
    assert ensure_limit(name, 20, slot_decay_per_second=rate)[0] == "created"
    with pytest.raises(RateSlotsError, match="does not exist"), get_client(sync_client=True) as client:
        take_rate_slots(client, f"missing-{name}", 1)
    with RateDispatcher(name, rate, capacity=20) as dispatcher:
        times = [dispatcher.next_send_time(lead_s=0.0) for _ in range(50)]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert min(gaps) >= 1.0 / (rate * SEND_SAFETY) - 1e-6, "evenly spaced at the paced rate"
    assert (len(times) - 1) / (times[-1] - times[0]) <= rate
    with get_client(sync_client=True) as client:
        limit = client.read_global_concurrency_limit_by_name(name)
    assert limit.active_slots >= 0 and limit.slot_decay_per_second == rate
