"""A throw-away PostgreSQL cluster for tests and benchmarks: ``initdb`` + ``pg_ctl`` in a temp dir.

    with postgres_cluster() as pg:
        pg.url            # postgresql+asyncpg://prefect:<password>@127.0.0.1:<port>/prefect
        pg.query("select count(*) from concurrency_limit_v2")

Why a real server and not SQLite: the scale-out setup (one Prefect server, many workers) runs on
PostgreSQL, and its behaviour under concurrent writers (no "database is locked", row locks on the
global concurrency limits) is exactly what SQLite cannot show.

How it runs, and why:
- Debian's ``postgresql`` package (``apt-get install postgresql``; ``.ci/run`` installs it). The
  binaries are not on PATH there, so they are looked up in ``$INFLUENCER_PG_BIN``, then the newest
  ``/usr/lib/postgresql/<version>/bin``, then PATH. Missing binaries raise :class:`PostgresUnavailable`
  with the install command, never a skip: a PostgreSQL test that silently does not run proves nothing.
- PostgreSQL refuses to start as root, and tests run as root here and in CI. Then every server
  command runs as an unprivileged system user: ``$INFLUENCER_PG_USER``, else ``postgres`` (the Debian
  package creates it), else ``nobody``. The switch is ``subprocess``'s own ``user=``/``group=``
  (setresuid/setresgid, supplementary groups dropped), so neither ``runuser`` nor ``sudo`` is needed.
  Not root: the commands run as the current user.
- The cluster lives in its own ``mkdtemp`` folder under the system temp dir, owned by that user with
  mode 0700: pytest's ``tmp_path`` (``/tmp/pytest-of-root``, mode 0700) is not reachable for it.
- It listens on 127.0.0.1 only, on a free port, plus a unix socket inside the temp folder. Every
  connection, socket or TCP, needs the random password (scram-sha-256); the superuser is the
  database's user, like the official image's ``POSTGRES_USER`` in docker/compose.yaml.
- ``fsync`` stays on by default, so a benchmark measures a durable database, as deployed.
  ``fast=True`` turns fsync, synchronous_commit and full_page_writes off for tests that only need the
  semantics (it is a throw-away cluster: a crash loses nothing of value).
- On exit (also when the body raised) the server is stopped (``pg_ctl stop -m fast``, then SIGKILL
  of the postmaster if that fails) and the folder removed.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from glob import glob
from pathlib import Path

from tests.support.prefect_server import free_port

INSTALL_HINT = "apt-get install postgresql (Debian/Ubuntu; .ci/run does this), or set INFLUENCER_PG_BIN"


class PostgresUnavailable(RuntimeError):
    """The PostgreSQL server binaries are not installed, or the cluster could not start."""


def find_bindir() -> Path:
    """The folder holding ``initdb``, ``pg_ctl`` and ``psql`` (see the module docstring for the order)."""
    candidates: list[Path] = []
    if os.environ.get("INFLUENCER_PG_BIN"):
        candidates.append(Path(os.environ["INFLUENCER_PG_BIN"]))

    def version(path: str) -> tuple[int, ...]:
        return tuple(int(x) for x in re.findall(r"\d+", Path(path).parent.name))

    candidates += [Path(p) for p in sorted(glob("/usr/lib/postgresql/*/bin"), key=version, reverse=True)]
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(Path(on_path).parent)
    for d in candidates:
        if all(os.access(d / tool, os.X_OK) for tool in ("initdb", "pg_ctl", "psql")):
            return d
    looked = ", ".join(str(c) for c in candidates) or "/usr/lib/postgresql/*/bin and PATH"
    raise PostgresUnavailable(
        f"PostgreSQL server binaries (initdb, pg_ctl, psql) not found in {looked}: {INSTALL_HINT}"
    )


def service_user() -> pwd.struct_passwd | None:
    """The unprivileged account the server runs as when we are root; None when we are not root."""
    if os.geteuid() != 0:
        return None
    names = [os.environ["INFLUENCER_PG_USER"]] if os.environ.get("INFLUENCER_PG_USER") else ["postgres", "nobody"]
    for name in names:
        with contextlib.suppress(KeyError):
            account = pwd.getpwnam(name)
            if account.pw_uid != 0:
                return account
    raise PostgresUnavailable(
        f"running as root and no unprivileged user among {names} to run PostgreSQL as "
        "(PostgreSQL refuses root): create one (useradd --system postgres) or set INFLUENCER_PG_USER"
    )


@dataclass
class PostgresCluster:
    """A running cluster; ``url`` is what ``PREFECT_API_DATABASE_CONNECTION_URL`` takes."""

    bindir: Path
    root: Path  # the temp folder: data/, the unix socket, postgres.log
    port: int
    user: str
    password: str = field(repr=False)
    database: str
    os_user: pwd.struct_passwd | None = field(default=None, repr=False)
    host: str = "127.0.0.1"

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def socket_dir(self) -> Path:
        return self.root

    @property
    def log_file(self) -> Path:
        return self.root / "postgres.log"

    def dsn(self, driver: str = "postgresql+asyncpg", database: str | None = None) -> str:
        return f"{driver}://{self.user}:{self.password}@{self.host}:{self.port}/{database or self.database}"

    @property
    def url(self) -> str:
        return self.dsn()

    def query(self, sql: str, database: str | None = None) -> list[tuple[str, ...]]:
        """Rows of ``sql`` as text tuples, through ``psql`` over TCP with the password (as a client would)."""
        env = {**os.environ, "PGPASSWORD": self.password, "PGCONNECT_TIMEOUT": "10"}
        res = subprocess.run(
            [str(self.bindir / "psql"), "-X", "-q", "-A", "-t", "-F", "\t", "-v", "ON_ERROR_STOP=1",
             "-h", self.host, "-p", str(self.port), "-U", self.user, "-d", database or self.database, "-c", sql],
            capture_output=True, text=True, env=env, timeout=60, check=False,
        )  # fmt: skip
        if res.returncode != 0:
            raise RuntimeError(f"psql failed on {sql!r}: {res.stderr.strip()}")
        return [tuple(line.split("\t")) for line in res.stdout.splitlines() if line]

    def create_database(self, name: str | None = None) -> str:
        """A new, empty database in this cluster (default: a fresh random name); its asyncpg URL.

        Cheaper than a new cluster: one cluster per session, one database per Prefect server.
        """
        name = name or f"{self.database}_{secrets.token_hex(4)}"
        if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", name):
            raise ValueError(f"database name {name!r}: use lower-case letters, digits and _")
        self.query(f'CREATE DATABASE "{name}"', database="postgres")
        return self.dsn(database=name)

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_file.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


def _as(account: pwd.struct_passwd | None) -> dict:
    """subprocess keyword arguments that run a command as ``account`` (nothing when not root)."""
    if account is None:
        return {}
    return {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}


def _run(cmd: list[str], account: pwd.struct_passwd | None, env: Mapping[str, str], timeout: float = 120) -> None:
    res = subprocess.run(
        cmd, capture_output=True, text=True, env=dict(env), timeout=timeout, check=False, **_as(account)
    )
    if res.returncode != 0:
        raise PostgresUnavailable(
            f"{Path(cmd[0]).name} failed ({res.returncode}): {(res.stderr or res.stdout)[-2000:]}"
        )


@contextmanager
def postgres_cluster(
    database: str = "prefect",
    user: str = "prefect",
    *,
    fast: bool = False,
    settings: Mapping[str, str] | None = None,
) -> Iterator[PostgresCluster]:
    """Start a fresh cluster, yield it, stop and delete it. ``settings`` go into postgresql.conf."""
    bindir = find_bindir()
    account = service_user()
    root = Path(tempfile.mkdtemp(prefix="influencer-pg-"))
    password = secrets.token_urlsafe(18)  # URL-safe alphabet: no quoting needed in the DSN
    # A minimal, predictable environment: no PG* variables of the caller, C locale, the user's HOME.
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LANG": "C",
        "LC_ALL": "C",
        "HOME": str(root),
        "TZ": "UTC",
    }
    cluster = PostgresCluster(bindir, root, 0, user, password, database, account)
    started = False
    try:
        if account is not None:
            os.chown(root, account.pw_uid, account.pw_gid)
        os.chmod(root, 0o700)
        pwfile = root / "pwfile"
        pwfile.write_text(password + "\n")
        pwfile.chmod(0o600)
        if account is not None:
            os.chown(pwfile, account.pw_uid, account.pw_gid)
        _run(
            [str(bindir / "initdb"), "-D", str(cluster.data_dir), "-U", user, f"--pwfile={pwfile}",
             "--auth=scram-sha-256", "-E", "UTF8", "--locale=C", "--no-sync"],
            account, env,
        )  # fmt: skip
        pwfile.unlink()
        conf = {
            "listen_addresses": "'127.0.0.1'",
            "unix_socket_directories": f"'{root}'",
            "unix_socket_permissions": "0700",
            "log_destination": "'stderr'",
            "logging_collector": "off",
            "log_min_messages": "warning",
            **({"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"} if fast else {}),
            **(settings or {}),
        }
        base_conf = (cluster.data_dir / "postgresql.conf").read_text()
        # The free port is only free until someone else takes it: a lost race is retried on a new port.
        for attempt in range(5):
            cluster.port = free_port()
            lines = [f"{k} = {v}" for k, v in {**conf, "port": str(cluster.port)}.items()]
            (cluster.data_dir / "postgresql.conf").write_text(
                base_conf + "\n# tests/support/postgres.py\n" + "\n".join(lines) + "\n"
            )
            try:
                _run(
                    [str(bindir / "pg_ctl"), "-D", str(cluster.data_dir), "-l", str(cluster.log_file), "-w",
                     "-t", "60", "start"],
                    account, env, timeout=90,
                )  # fmt: skip
                started = True
                break
            except PostgresUnavailable as exc:
                if attempt == 4 or "could not bind" not in cluster.log_tail():
                    raise PostgresUnavailable(f"{exc}\npostgres.log:\n{cluster.log_tail()}") from None
        if database != "postgres":
            cluster.create_database(database)
        yield cluster
    finally:
        if started:
            _stop(cluster, env)
        shutil.rmtree(root, ignore_errors=True)


def _stop(cluster: PostgresCluster, env: Mapping[str, str]) -> None:
    try:
        _run(
            [str(cluster.bindir / "pg_ctl"), "-D", str(cluster.data_dir), "-m", "fast", "-w", "-t", "30", "stop"],
            cluster.os_user, env, timeout=60,
        )  # fmt: skip
        return
    except (PostgresUnavailable, subprocess.TimeoutExpired):
        pass
    # pg_ctl could not stop it: kill the postmaster (its children exit when it is gone).
    with contextlib.suppress(OSError, ValueError, IndexError):
        pid = int((cluster.data_dir / "postmaster.pid").read_text().split()[0])
        os.kill(pid, signal.SIGKILL)
        for _ in range(100):
            os.kill(pid, 0)
            time.sleep(0.1)
