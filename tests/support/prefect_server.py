"""Start a real ``prefect server start`` (SQLite, background services on) for tests and benches."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def prefect_server(
    home: Path, auth: str | None = None, *, ui: bool = False, **server_env: str
) -> Iterator[dict[str, str]]:
    """Yields the environment a client needs (PREFECT_API_URL, PREFECT_HOME, auth if any).

    ``ui`` also serves Prefect's web UI (at the API URL without ``/api``)."""
    port = free_port()
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "OPENROUTER_", "INFLUENCER_"))}
    base.update(
        PREFECT_HOME=str(home),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_SERVER_UI_ENABLED="true" if ui else "false",
        PREFECT_LOGGING_LEVEL="WARNING",
        INFLUENCER_TASK_RETRY_DELAY_S="0.05",
        PYTHONUNBUFFERED="1",
    )
    env = {**base, "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{home}/prefect.db", **server_env}
    if ui:
        env["PREFECT_UI_API_URL"] = f"http://127.0.0.1:{port}/api"
    if auth:
        env["PREFECT_SERVER_API_AUTH_STRING"] = auth
    log = (home / "server.log").open("w")
    proc = subprocess.Popen(
        [
            str(BIN / "prefect"),
            "server",
            "start",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            *([] if ui else ["--no-ui"]),
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}/api"
    basic = tuple(auth.split(":", 1)) if auth else None
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(f"{url}/health", auth=basic, timeout=2).status_code == 200:  # type: ignore[arg-type]
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("prefect server did not start:\n" + (home / "server.log").read_text()[-3000:])
            time.sleep(0.5)
        client_env = {**base, "PREFECT_API_URL": url}
        if auth:
            client_env["PREFECT_API_AUTH_STRING"] = auth
        yield client_env
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
