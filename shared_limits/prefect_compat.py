"""Everything this project uses from Prefect beyond its public API, in one place, with a version check.

Why: three measured problems needed Prefect internals (the 2 s back-off of Prefect's HTTP client on
a SQLite server's 503, the embedded server's in-memory leases, reading expired leases without a
repossessor). A Prefect upgrade may move them; keeping them here means one module to re-check, and
the version check says so at start-up instead of failing mid-run. Each helper falls back to the
public API (slower, or doing less) when the internal is gone.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import time
import types
import warnings
from collections.abc import Iterator
from typing import Any

import httpx
import prefect
from packaging.version import Version
from prefect.client.orchestration import SyncPrefectClient
from prefect.settings import get_current_settings
from prefect.utilities.asyncutils import run_coro_as_sync

# The range the test suite ran on; pyproject.toml pins the same range.
TESTED_MIN = Version("3.9.1")
TESTED_BELOW = Version("3.10")
FILESYSTEM_LEASES = "prefect.server.concurrency.lease_storage.filesystem"


def check_prefect_version(version: str | None = None) -> str | None:
    """A warning text when the installed Prefect is outside the tested range (and warn once), else None."""
    found = Version(version or prefect.__version__)
    if TESTED_MIN <= found < TESTED_BELOW:
        return None
    text = (
        f"Prefect {found} is outside the range ai-influencer is tested with (>={TESTED_MIN},<{TESTED_BELOW}); "
        "the rate-slot fast path and lease recovery in shared_limits/prefect_compat.py may not work"
    )
    warnings.warn(text, RuntimeWarning, stacklevel=2)
    return text


check_prefect_version()


# The transport errors Prefect's own client asks again after (``PrefectHttpxSyncClient.send``): a
# connection the server closed while we reused it ends in a reset (``ReadError``) or a
# ``RemoteProtocolError``, and a new connection then works.
TRANSPORT_RETRIED: tuple[type[Exception], ...] = (
    httpx.ReadTimeout,
    httpx.PoolTimeout,
    httpx.ConnectTimeout,
    httpx.ReadError,
    httpx.WriteError,
    httpx.RemoteProtocolError,
    httpx.LocalProtocolError,
)
TRANSPORT_TRIES = 6


def busy_wait_s(busy: int) -> float:
    """The wait before asking a SQLite-backed server again after its ``busy``-th 503 in a row (from 0).

    A locked write is refused at once, without a write, so asking again soon costs nothing: 30 ms
    doubling to at most 120 ms, jittered so that the writers that met do not meet again.
    """
    return min(0.03 * 2**busy, 0.12) * random.uniform(0.75, 1.25)


def send_plain(http: httpx.Client, add_csrf: Any, path: str, body: dict[str, Any]) -> httpx.Response:
    """POST ``body`` to ``path`` with httpx's plain ``send``, asking again after a transport error.

    Why: the plain send skips Prefect's 2 s back-off on 503, and with it Prefect's retry of a broken
    connection. CI saw a run fail on ``[Errno 104] Connection reset by peer`` from the embedded server
    (an idle keep-alive connection the server had closed, reused by the rate-slot thread). Up to
    ``TRANSPORT_TRIES`` attempts, 50 ms to 0.8 s apart, each on a request built anew. A reset after the
    server wrote means it granted slots we never learn of: a rate limit's then decay within a second, a
    lease's expire after its duration; the same as with Prefect's own retry.
    """
    for attempt in range(TRANSPORT_TRIES):
        request = http.build_request("POST", path, json=body)
        add_csrf(request)  # a token if the server asks for one, as Prefect does
        try:
            return httpx.Client.send(http, request)
        except TRANSPORT_RETRIED:
            if attempt == TRANSPORT_TRIES - 1:
                raise
            time.sleep(0.05 * 2**attempt * random.uniform(0.75, 1.25))
    raise AssertionError("unreachable")  # the loop returns or raises


def post_increment(client: SyncPrefectClient, payload: dict[str, Any]) -> httpx.Response:
    """``POST /v2/concurrency_limits/increment`` without Prefect's 2 s back-off on 503.

    Uses the httpx client Prefect configured (URL, auth, headers) and its CSRF token hook, then
    httpx's plain ``send`` (``send_plain``: a broken connection is asked again); falls back to the
    public client call if those internals are gone.
    """
    http = getattr(client, "_client", None)
    add_csrf = getattr(http, "_add_csrf_headers", None)
    if isinstance(http, httpx.Client) and callable(add_csrf):
        return send_plain(http, add_csrf, "/v2/concurrency_limits/increment", payload)
    return client.increment_concurrency_slots(names=payload["names"], slots=payload["slots"], mode=payload["mode"])


def post_increment_with_lease(
    client: SyncPrefectClient, name: str, slots: int, mode: str, lease_duration: float
) -> httpx.Response:
    """``POST /v2/concurrency_limits/increment-with-lease`` with 503s asked again after 30-120 ms.

    Why: Prefect's client waits ``2 ** attempt`` seconds after a 503, and a SQLite-backed server (the
    embedded one, ``prefect_test_harness``) answers 503 to a write that meets another writer (every
    task run's state change is one). In-flight slots are taken one lease at a time: measured on the
    embedded server, single takes waited 2, 7 and 16 s, the run held 13 of its 32 slots after 27 s
    and sent 0.76x of its rate limit (0.93x before unit leases). Returns the response (200 with a
    ``lease_id``, 423 when the limit is full); falls back to Prefect's own call, which raises on 423.
    """
    http = getattr(client, "_client", None)
    add_csrf = getattr(http, "_add_csrf_headers", None)
    body = {"names": [name], "slots": slots, "mode": mode, "lease_duration": lease_duration}
    if not (isinstance(http, httpx.Client) and callable(add_csrf)):
        return client.increment_concurrency_slots_with_lease(
            names=[name],
            slots=slots,
            mode=mode,
            lease_duration=lease_duration,  # type: ignore[arg-type]
        )
    for busy in range(40):
        response = send_plain(http, add_csrf, "/v2/concurrency_limits/increment-with-lease", body)
        if response.status_code not in (502, 503, 504):
            return response
        time.sleep(busy_wait_s(busy))
    return response


def expired_filesystem_leases(limit: int = 1000) -> Iterator[tuple[Any, int, list[Any]]]:
    """``(lease_id, slots, limit_ids)`` of expired leases in Prefect's filesystem lease storage.

    ``slots`` is 0 for a lease that holds no limit (Prefect makes one for every tagged task run).
    Yields nothing if that storage module is gone.
    """
    try:
        from prefect.server.concurrency.lease_storage.filesystem import ConcurrencyLeaseStorage
    except ImportError:
        return
    storage = ConcurrencyLeaseStorage()
    if not storage.storage_path.is_dir():
        return
    for lease_id in run_coro_as_sync(storage.read_expired_lease_ids(limit=limit)) or []:
        lease = run_coro_as_sync(storage.read_lease(lease_id))
        slots = lease.metadata.slots if lease is not None and lease.resource_ids and lease.metadata else 0
        yield lease_id, slots, list(lease.resource_ids) if lease is not None else []


def flush_api_logs(timeout_s: float = 5.0) -> None:
    """Send the log lines queued for the API now, waiting up to ``timeout_s``.

    Why: Prefect ships a run's logs from a background worker in batches (every 2 s); a line logged just
    before the run's state changes reached the server after the new state, or never when the process
    ended first. CI saw a Cancelled run whose drain line ("stopped (SIGTERM received ...") was missing,
    on a loaded machine only. Falls back to doing nothing if the worker class is gone.
    """
    try:
        from prefect.logging.handlers import APILogWorker
    except ImportError:
        return
    with contextlib.suppress(Exception):  # logs are informative: a failed flush must not stop the drain
        APILogWorker.drain_all(timeout=timeout_s)


def _die_with_parent() -> None:
    """In the child before exec: its own session (a terminal's Ctrl-C is not for it) and, on Linux,
    SIGTERM when the process that started it dies, even by SIGKILL (no orphaned server)."""
    os.setsid()
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def start_embedded_server(timeout_s: int) -> str | None:
    """Start Prefect's embedded (ephemeral) server now, detached from the terminal; its API URL.

    Why: Prefect starts it lazily, in the caller's process group. Ctrl-C in a terminal (or the GUI's
    Stop, which signals the whole group) then killed the server together with the run, and the run's
    drain (finish the paid requests in flight, record them) hung on a dead API. Started here from the
    main thread, the server has its own session and dies with this process. Returns None when a
    server is configured (``PREFECT_API_URL``) or the embedded one is disabled.
    """
    settings = get_current_settings()
    if settings.api.url or not settings.server.ephemeral.enabled:
        return None
    import prefect.server.api.server as server_module

    server = server_module.SubprocessASGIServer()
    if server.running:
        return server.api_url
    real_popen = subprocess.Popen

    def detached(*args: Any, **kwargs: Any) -> subprocess.Popen[Any]:
        kwargs.setdefault("preexec_fn", _die_with_parent)
        return real_popen(*args, **kwargs)

    shim = types.SimpleNamespace(**{**vars(subprocess), "Popen": detached})
    original = server_module.subprocess
    server_module.subprocess = shim  # type: ignore[assignment]
    try:
        server.start(timeout=timeout_s)
    finally:
        server_module.subprocess = original
    return server.api_url
