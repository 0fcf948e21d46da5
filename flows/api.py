"""Start deployments over Prefect's REST API (what replaces the manual's n8n webhook).

On a self-hosted server protected with ``PREFECT_SERVER_API_AUTH_STRING``
the trigger is two authenticated calls: look the deployment up by name, then
create a flow run with parameters. This module makes exactly those calls with
httpx, so any HTTP client (curl, n8n, a CI job) can do the same; see README.
"""

from __future__ import annotations

import os
import time
from typing import Any

import httpx

TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
BUSY = frozenset({429, 502, 503})  # what Prefect's own client retries (PREFECT_CLIENT_MAX_RETRIES)
BUSY_ATTEMPTS = 5
BUSY_WAIT_CAP_S = 8.0


class _RetryBusy(httpx.HTTPTransport):
    """Send again when the server is busy, as Prefect's own client does.

    Why: a Prefect server on SQLite answers 503 while its database is locked by another writer (a few
    seconds on a loaded machine); the hub's "continue" on the review page failed with that 503 while the
    runs beside it, on Prefect's client, waited and went on. Such an answer changed nothing on the server
    (the transaction was rolled back), so sending the same request again is safe. The wait honours a
    numeric Retry-After, else doubles from 0.5 s (at most ``BUSY_WAIT_CAP_S``)."""

    def __init__(self, attempts: int = BUSY_ATTEMPTS) -> None:
        super().__init__(retries=2)  # refused connections too (a server restarting)
        self.attempts = attempts

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        attempt = 1
        while True:
            response = super().handle_request(request)
            if response.status_code not in BUSY or attempt >= self.attempts:
                return response
            try:
                wait = float(response.headers.get("Retry-After", ""))
            except ValueError:
                wait = 0.5 * 2 ** (attempt - 1)
            response.read()
            response.close()
            time.sleep(min(max(wait, 0.0), BUSY_WAIT_CAP_S))
            attempt += 1


def api_client(api_url: str | None = None, auth_string: str | None = None, api_key: str | None = None) -> httpx.Client:
    """An httpx client for the Prefect API: basic auth (self-hosted) or bearer key (Cloud); a busy server's
    429/502/503 are sent again (``_RetryBusy``)."""
    url = (api_url or os.environ.get("PREFECT_API_URL") or "").rstrip("/")
    if not url:
        raise ValueError("no Prefect API URL: set PREFECT_API_URL (e.g. http://127.0.0.1:4200/api) or pass --api-url")
    auth_string = auth_string or os.environ.get("PREFECT_API_AUTH_STRING")
    api_key = api_key or os.environ.get("PREFECT_API_KEY")
    auth = None
    headers = {}
    if auth_string:
        user, _, password = auth_string.partition(":")
        auth = httpx.BasicAuth(user, password)
    elif api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    return httpx.Client(base_url=url, auth=auth, headers=headers, timeout=30, transport=_RetryBusy())


def trigger_deployment(client: httpx.Client, deployment: str, parameters: dict[str, Any]) -> dict[str, Any]:
    """``deployment`` is ``flow-name/deployment-name``; returns the created flow run."""
    flow_name, _, dep_name = deployment.partition("/")
    if not dep_name:
        raise ValueError(f"deployment must look like flow/deployment, got {deployment!r}")
    resp = client.get(f"/deployments/name/{flow_name}/{dep_name}")
    if resp.status_code == 401:
        raise PermissionError("Prefect API refused the credentials (set PREFECT_API_AUTH_STRING=user:password)")
    if resp.status_code == 404:
        raise LookupError(f"deployment {deployment!r} not found on {client.base_url}")
    resp.raise_for_status()
    run = client.post(f"/deployments/{resp.json()['id']}/create_flow_run", json={"parameters": parameters})
    run.raise_for_status()
    return run.json()


def wait_for_run(client: httpx.Client, run_id: str, timeout_s: float = 1800, poll_s: float = 2.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        run = client.get(f"/flow_runs/{run_id}").raise_for_status().json()
        if (run.get("state_type") or "") in TERMINAL or time.monotonic() > deadline:
            return run
        time.sleep(poll_s)
