"""Start a real ``prefect server start`` (background services on) for tests and benches, on SQLite or PostgreSQL.

    with prefect_server(home) as env:                      # SQLite in home/prefect.db (the default)
    with prefect_server(home, db="postgres") as env:       # a throw-away PostgreSQL cluster of its own
    with prefect_server(home, db=cluster) as env:          # a fresh database in a cluster you started
    with prefect_server(home, db="postgresql+asyncpg://...") as env:   # any database URL
        subprocess.run([...], env=env)                     # env is a client's environment
        env.api_url, env.database_url                      # where the server is, what it stores in
        env.db_query("select ... from concurrency_limit_v2")   # PostgreSQL: read the server's tables

Unlike ``prefect_test_harness`` (in-process, no background services), a started server runs the
lease repossessor, the scheduler and the rest, and several processes can talk to it: it is what
users deploy.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

if TYPE_CHECKING:
    from tests.support.postgres import PostgresCluster

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerEnv(dict[str, str]):
    """The environment a client needs (PREFECT_API_URL, PREFECT_HOME, auth if any), plus where things are.

    A dict, so it goes straight into ``subprocess.run(env=...)``; the attributes are for assertions.
    """

    api_url: str
    database_url: str
    home: Path
    log: Path
    postgres: PostgresCluster | None  # the cluster holding the server's database; None on SQLite
    database_name: str

    def db_query(self, sql: str) -> list[tuple[str, ...]]:
        """Rows of ``sql`` in the server's own PostgreSQL database (as text tuples)."""
        if self.postgres is None:
            raise RuntimeError(f"db_query needs a PostgreSQL-backed server; this one uses {self.database_url}")
        return self.postgres.query(sql, database=self.database_name)


def database_url(db: str, home: Path) -> str:
    """``db`` as a connection URL: "sqlite" -> home/prefect.db; a URL is used as given."""
    if db == "sqlite":
        return f"sqlite+aiosqlite:///{home}/prefect.db"
    if db.startswith(("postgresql+asyncpg://", "sqlite+aiosqlite://")):
        return db
    raise ValueError(
        f"db must be 'sqlite', 'postgres' or a postgresql+asyncpg:// / sqlite+aiosqlite:// URL, not {db!r}"
    )


@contextmanager
def prefect_server(
    home: Path,
    auth: str | None = None,
    *,
    db: str | PostgresCluster = "sqlite",
    ui: bool = False,
    **server_env: str,
) -> Iterator[ServerEnv]:
    """Start a server on 127.0.0.1 (free port); yield a client's environment; stop it (and its database).

    ``db``: "sqlite" (default, the embedded setup), "postgres" (a fresh cluster for this server,
    stopped and deleted with it), a :class:`~tests.support.postgres.PostgresCluster` (a fresh database
    in it, so servers never see each other's rows) or a connection URL. ``server_env`` goes to the
    server only (e.g. PREFECT_SERVER_SERVICES_REPOSSESSOR_LOOP_SECONDS="2"). ``ui`` also serves
    Prefect's web UI (at the API URL without ``/api``).
    """
    with ExitStack() as stack:
        cluster = None
        if db == "postgres":
            from tests.support.postgres import postgres_cluster

            cluster = stack.enter_context(postgres_cluster())
            db = cluster.url
        elif not isinstance(db, str):
            cluster, db = db, db.create_database()
        url_db = database_url(db, home)
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
        env = {**base, "PREFECT_API_DATABASE_CONNECTION_URL": url_db, **server_env}
        if ui:
            env["PREFECT_UI_API_URL"] = f"http://127.0.0.1:{port}/api"
        if auth:
            env["PREFECT_SERVER_API_AUTH_STRING"] = auth
        log_path = home / "server.log"
        log = stack.enter_context(log_path.open("w"))
        proc = subprocess.Popen(
            [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)]
            + ([] if ui else ["--no-ui"]),
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        stack.callback(stop_group, proc)  # runs before the database stops (ExitStack unwinds in reverse)
        url = f"http://127.0.0.1:{port}/api"
        basic = tuple(auth.split(":", 1)) if auth else None
        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(f"{url}/health", auth=basic, timeout=2).status_code == 200:  # type: ignore[arg-type]
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("prefect server did not start:\n" + log_path.read_text()[-3000:])
            time.sleep(0.5)
        client_env = ServerEnv(base, PREFECT_API_URL=url)
        if auth:
            client_env["PREFECT_API_AUTH_STRING"] = auth
        client_env.api_url, client_env.database_url, client_env.home, client_env.log = url, url_db, home, log_path
        client_env.postgres, client_env.database_name = cluster, url_db.rsplit("/", 1)[-1]
        yield client_env


def artifacts_since(api_url: str, since: datetime, *keys: str) -> dict[str, dict]:
    """The newest artifact of each of ``keys`` created at or after ``since`` (key -> artifact, as the API sends it).

    Why: a server shared by several tests (tests/support/fixtures.py) holds their artifacts too; a key found
    among all of them could be another test's, and the first page of an unfiltered list could miss this one's.
    """
    body = {"artifacts": {"key": {"any_": list(keys)}}, "sort": "CREATED_DESC", "limit": 200}
    newest: dict[str, dict] = {}
    for a in httpx.post(f"{api_url}/artifacts/filter", json=body, timeout=30).raise_for_status().json():
        if datetime.fromisoformat(a["created"]) >= since:
            newest.setdefault(a["key"], a)
    return newest


def stop_group(proc: subprocess.Popen, grace_s: float = 30.0) -> bool:
    """SIGTERM to the process group, as a service manager stops it; SIGKILL after ``grace_s``.
    True when it had to be killed."""
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
        return True
    return False
