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


def api_client(api_url: str | None = None, auth_string: str | None = None, api_key: str | None = None) -> httpx.Client:
    """An httpx client for the Prefect API: basic auth (self-hosted) or bearer key (Cloud)."""
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
    return httpx.Client(base_url=url, auth=auth, headers=headers, timeout=30)


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
