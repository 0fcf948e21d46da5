"""The hub's gate on a real ``influencer hub`` process: the token before the body, bounded bodies, start-up refusals.

A raw client sends real chunked bodies of 128 MB and watches for the answer while it sends: a hub
that answers without reading the body lets it push only what the sockets buffer. The hub's peak
RSS is read from /proc (VmHWM, reset through clear_refs before each request).
"""

from __future__ import annotations

import os
import select
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import h11
import httpx
import pytest

from tests.conftest import REPO

INFLUENCER = str(Path(sys.executable).with_name("influencer"))
TOKEN = "guard-test-token-0123456789"
MB = 2**20
BODY = 128 * MB  # what a client tries to send
UNREAD = 40 * MB  # a hub that reads nothing (or stops at its limit) lets a client push less than this
RSS_GROWTH = 50 * MB
pytestmark = pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def hub_env(data: Path, token: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENROUTER_", "INFLUENCER_"))}
    env.update(
        INFLUENCER_DATA_ROOT=str(data),
        INFLUENCER_PROMPT_BANK=str(REPO / "prompt_bank" / "default.yaml"),
        OPENROUTER_BASE_URL="http://127.0.0.1:9/api/v1",  # never reached: every request here is refused first
        PYTHONUNBUFFERED="1",
    )
    if token is not None:
        env["INFLUENCER_HUB_TOKEN"] = token
    return env


def start_hub(env: dict[str, str], cwd: Path, host: str = "127.0.0.1") -> tuple[subprocess.Popen[str], int]:
    port = free_port()
    proc = subprocess.Popen(
        [INFLUENCER, "hub", "--host", host, "--port", str(port)],
        env=env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    return proc, port


def wait_started_or_exited(proc: subprocess.Popen[str], port: int, timeout: float = 90) -> bool:
    """True once the hub answers on ``port``; False if the process ended first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            httpx.get(f"http://127.0.0.1:{port}/openapi.json", timeout=2)
            return True
        except httpx.TransportError:
            time.sleep(0.1)
    raise AssertionError("the hub neither started nor exited")


@dataclass
class Hub:
    proc: subprocess.Popen[str]
    port: int

    def status(self, key: str) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
        raise KeyError(key)

    def reset_peak(self) -> int:
        Path(f"/proc/{self.proc.pid}/clear_refs").write_text("5")
        return self.status("VmRSS")


@pytest.fixture(scope="module")
def hub_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    tmp = tmp_path_factory.mktemp("hub-guard")
    proc, port = start_hub(hub_env(tmp / "data", TOKEN), tmp)
    try:
        assert wait_started_or_exited(proc, port), proc.communicate()[0]
        yield Hub(proc, port)
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@dataclass
class Answer:
    status: int
    body: bytes
    sent: int  # body bytes the client managed to send before the answer came
    peak_growth: int  # the hub's peak RSS during the request, above its RSS before it


def send_chunked(hub: Hub, path: str, headers: list[tuple[str, str]], first: bytes, filler: bytes) -> Answer:
    """POST ``first`` then ``filler`` repeated up to BODY bytes, chunked, stopping as soon as the answer starts."""
    before = hub.reset_peak()
    conn = h11.Connection(our_role=h11.CLIENT)
    head = [("Host", "127.0.0.1"), ("Transfer-Encoding", "chunked"), *headers]
    pending = conn.send(h11.Request(method="POST", target=path, headers=head)) + conn.send(h11.Data(data=first))
    sent, ended, answered = len(first), False, False
    status, body = 0, bytearray()
    deadline = time.monotonic() + 120
    with socket.create_connection(("127.0.0.1", hub.port)) as sock:
        sock.setblocking(False)
        while True:
            assert time.monotonic() < deadline, f"no answer after sending {sent / MB:.0f} MB"
            readable, writable, _ = select.select([sock], [sock] if not answered else [], [], 1.0)
            if readable:
                data = sock.recv(1 << 16)
                conn.receive_data(data)
                answered = True
                event = conn.next_event()
                while event not in (h11.NEED_DATA, h11.PAUSED):
                    if isinstance(event, h11.Response):
                        status = event.status_code
                    elif isinstance(event, h11.Data):
                        body += event.data
                    elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                        return Answer(status, bytes(body), sent, hub.status("VmHWM") - before)
                    event = conn.next_event()
                if not data or len(body) > 4 * MB:  # closed, or an answer far beyond a short message
                    return Answer(status, bytes(body), sent, hub.status("VmHWM") - before)
            elif writable:
                if not pending and not ended:
                    if sent < BODY:
                        pending = conn.send(h11.Data(data=filler))
                        sent += len(filler)
                    else:
                        pending, ended = conn.send(h11.EndOfMessage()), True
                if pending:
                    pending = pending[sock.send(pending) :]


FILLER = b"a" * MB
JSON_START = b'{"model": "some/model", "prompt": "'
BOUNDARY = "hubguardboundary"
MULTIPART = f"multipart/form-data; boundary={BOUNDARY}"
MULTIPART_START = (
    f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="files"; filename="posts.csv"\r\n'
    "Content-Type: text/csv\r\n\r\nhandle,timestamp,likes,comments\r\n"
).encode()


def test_a_chunked_body_without_the_token_is_refused_unread(hub_process: Hub) -> None:
    for path, ctype, first in (
        ("/api/generate/text", "application/json", JSON_START),
        ("/api/influencer", MULTIPART, MULTIPART_START),
        ("/api/pipeline/run", "application/json", b'{"parameters": {"x": "'),
        ("/api/session", "application/json", b""),
    ):
        a = send_chunked(hub_process, path, [("Content-Type", ctype)], first, FILLER)
        assert a.status == 401 and b"hub token" in a.body, (path, a.status, a.body[:200])
        assert a.sent < UNREAD, f"{path}: the hub read {a.sent / MB:.0f} MB of the body before its 401"
        assert a.peak_growth < RSS_GROWTH, f"{path}: hub RSS grew {a.peak_growth / MB:.0f} MB"


def test_a_chunked_body_with_the_token_stops_at_the_limit(hub_process: Hub) -> None:
    auth = ("Authorization", f"Bearer {TOKEN}")
    for path, ctype, first, setting in (
        ("/api/generate/text", "application/json", JSON_START, "INFLUENCER_HUB_MAX_JSON_MB"),
        ("/api/generate/image", "application/json", JSON_START, "INFLUENCER_HUB_MAX_JSON_MB"),
        ("/api/influencer", MULTIPART, MULTIPART_START, "INFLUENCER_HUB_MAX_UPLOAD_MB"),
    ):
        a = send_chunked(hub_process, path, [("Content-Type", ctype), auth], first, FILLER)
        assert a.status == 413, (path, a.status, len(a.body), a.body[:200])
        assert setting in a.body.decode() and len(a.body) < 1000
        assert a.sent < UNREAD, f"{path}: the hub read {a.sent / MB:.0f} MB before its 413"
        assert a.peak_growth < RSS_GROWTH, f"{path}: hub RSS grew {a.peak_growth / MB:.0f} MB"


def test_a_declared_length_over_the_limit_is_refused_before_the_body(hub_process: Hub) -> None:
    url = f"http://127.0.0.1:{hub_process.port}"
    headers = [("Host", "127.0.0.1"), ("Authorization", f"Bearer {TOKEN}"), ("Content-Type", "application/json")]
    conn = h11.Connection(our_role=h11.CLIENT)
    request = h11.Request(method="POST", target="/api/generate/text", headers=[*headers, ("Content-Length", str(BODY))])
    status, body = 0, b""
    with socket.create_connection(("127.0.0.1", hub_process.port), timeout=30) as sock:
        # nothing but the start of the body is sent: the hub must answer from the header
        sock.sendall(conn.send(request) + conn.send(h11.Data(data=JSON_START)))
        while not isinstance(event := conn.next_event(), h11.EndOfMessage):
            if event is h11.NEED_DATA:
                conn.receive_data(sock.recv(1 << 16))
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                body += event.data
    assert status == 413 and "INFLUENCER_HUB_MAX_JSON_MB" in body.decode(), (status, body)
    # an ordinary request still works on the same hub
    r = httpx.post(f"{url}/api/generate/text", json={"model": "m", "prompt": ""}, headers={"X-Hub-Token": TOKEN})
    assert r.status_code == 422


def test_a_validation_error_quotes_only_an_excerpt_of_the_input(hub_process: Hub) -> None:
    url = f"http://127.0.0.1:{hub_process.port}"
    prompt = "p" * 600_000  # under the JSON limit, over the prompt's max_length
    bodies = ({"model": "m", "prompt": prompt}, {"prompt": prompt}, {"model": "m", "prompt": "x", "max_tokens": prompt})
    for body in bodies:
        r = httpx.post(f"{url}/api/generate/text", json=body, headers={"X-Hub-Token": TOKEN}, timeout=30)
        assert r.status_code == 422 and len(r.content) < 2000, (r.status_code, len(r.content))
        errors = r.json()["detail"]
        assert errors and all({"loc", "msg", "type"} <= set(e) for e in errors)
        assert any("characters)" in str(e["input"]) for e in errors)  # the excerpt says how long the input was


def test_check_token_refuses_empty_and_short_off_loopback() -> None:
    from ai_influencer.settings import Settings
    from interfaces.hub.guard import check_token, is_loopback

    for host in ("127.0.0.1", "::1", "[::1]", "localhost", "127.0.0.2"):
        assert is_loopback(host), host
        assert check_token(Settings(hub_token="short"), host) == "short"
    for host in ("0.0.0.0", "::", "192.168.1.5", "hub.example.org"):
        assert not is_loopback(host), host
        with pytest.raises(ValueError, match="16 or more"):
            check_token(Settings(hub_token="short"), host)
        assert check_token(Settings(hub_token="x" * 16), host) == "x" * 16
    for empty in ("", "   "):
        with pytest.raises(ValueError, match="INFLUENCER_HUB_TOKEN is empty"):
            check_token(Settings(hub_token=empty), "127.0.0.1")


@pytest.mark.parametrize(
    ("token", "host", "message"),
    [
        ("", "127.0.0.1", "INFLUENCER_HUB_TOKEN is empty"),
        # a TEST-NET address: not loopback, and no machine can bind it, so even a regression opens nothing
        ("short-token", "192.0.2.10", "needs 16 or more"),
    ],
)
def test_the_hub_refuses_to_start(tmp_path: Path, token: str, host: str, message: str) -> None:
    proc, port = start_hub(hub_env(tmp_path / "data", token), tmp_path, host=host)
    try:
        started = wait_started_or_exited(proc, port)
    finally:
        if proc.poll() is None:
            proc.kill()
        output = proc.communicate(timeout=30)[0]
    assert not started, "the hub started and served with this token"
    assert proc.returncode != 0 and message in output, output
    assert "Traceback" not in output and len(output.strip().splitlines()) == 1, output
