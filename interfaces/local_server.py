"""The local Prefect server of the default install: one per workspace, started on first use and kept.

Why: without ``PREFECT_API_URL`` each ``influencer run`` started Prefect's temporary server and took it
down at its end, so the hub had no server to show runs from ("no Prefect server configured") and nothing
to start a run on (issue 28). Now ``influencer run`` and ``influencer hub`` share one ``prefect server
start`` per workspace: detached (its own session, it outlives the command that started it), its SQLite
database under the workspace (``data/.prefect/prefect.db``), its state in ``data/.prefect/server.json``
(url, pid, port). Whoever needs it calls ``ensure``: a healthy server is reused (a state file and one
``/health`` call, milliseconds); a dead one is started again. ``influencer server status`` / ``stop``
manage it. A configured ``PREFECT_API_URL`` always wins: then none of this runs.

The other commands that talk to Prefect (``set-key``, ``blocks register``, ``stack init``, ``trigger``)
use the local server when it is running, and otherwise Prefect's temporary server on the same database
(``use_local_defaults``), so a key stored with ``set-key`` is the key the kept server's runs find.

Prefect infrastructure, not pipeline logic: nothing here knows about images or stages.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

FOLDER = ".prefect"  # under the data root
STATE = "server.json"
LOG = "server.log"
DATABASE = "prefect.db"
START_TIMEOUT_S = 180.0  # a fresh database on a busy 2-core machine: ~9 s measured; migrations can take longer
HEALTH_TIMEOUT_S = 2.0
MARK = "INFLUENCER_LOCAL_PREFECT_URL"  # set beside PREFECT_API_URL when that URL is the local server, not the user's


class LocalServerError(RuntimeError):
    """The local server could not be started or stopped; the message names the log to read."""


@dataclass(frozen=True)
class LocalServer:
    url: str  # the API URL (".../api"); the UI is at the URL without "/api"
    pid: int
    port: int
    home: str  # PREFECT_HOME of the server: the folder holding its database, state and log
    started_at: str = ""
    prefect: str = ""  # Prefect's version that started it

    @property
    def ui(self) -> str:
        return self.url.removesuffix("/api")


def folder(data_root: Path) -> Path:
    return Path(data_root).resolve() / FOLDER


def database_url(data_root: Path) -> str:
    return f"sqlite+aiosqlite:///{folder(data_root) / DATABASE}"


def configured_api_url() -> str | None:
    """``PREFECT_API_URL`` as the user set it (environment, profile, .env, prefect.toml), or None.

    Asked through Prefect's settings only when Prefect is already imported; otherwise the same places
    are read without importing it (a second on a small machine)."""
    ours = os.environ.get(MARK)
    if ours and os.environ.get("PREFECT_API_URL") == ours:
        return None  # this process (or the one that started it) pointed Prefect at the local server
    if "prefect.settings" in sys.modules:
        from prefect.settings import get_current_settings

        url = get_current_settings().api.url
        return url if url and url != ours else None
    from interfaces.prefect_env import set_by_user

    if not set_by_user("PREFECT_API_URL", ("api", "url")):
        return None
    return os.environ.get("PREFECT_API_URL") or "configured"


def read_state(data_root: Path) -> LocalServer | None:
    try:
        data = json.loads((folder(data_root) / STATE).read_text(encoding="utf-8"))
        return LocalServer(**{k: data[k] for k in LocalServer.__dataclass_fields__ if k in data})
    except (OSError, ValueError, TypeError, KeyError):
        return None


def healthy(url: str, timeout: float = HEALTH_TIMEOUT_S) -> bool:
    """The server answers ``/health`` (stdlib only: this runs at every command's start)."""
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=timeout) as r:
            return r.status == 200
    except (OSError, urllib.error.URLError, ValueError):
        return False


def _is_our_process(pid: int) -> bool:
    """The pid is alive and still a Prefect server (a pid can be reused after a reboot)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    cmdline = Path(f"/proc/{pid}/cmdline")
    if cmdline.exists():
        try:
            words = cmdline.read_bytes().split(b"\0")
        except OSError:
            return False
        return any(b"prefect" in w for w in words) and b"server" in words
    return True


def running(data_root: Path) -> LocalServer | None:
    """The workspace's server if it is alive and answers, else None."""
    state = read_state(data_root)
    if state is None or not _is_our_process(state.pid) or not healthy(state.url):
        return None
    return state


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _locked(data_root: Path) -> Iterator[None]:
    """One starter at a time per workspace (two commands started at once must not start two servers)."""
    from filelock import FileLock

    home = folder(data_root)
    home.mkdir(parents=True, exist_ok=True)
    with FileLock(str(home / ".server.lock"), timeout=START_TIMEOUT_S + 30):
        yield


SERVER_OWN = ("PREFECT_API_URL", "PREFECT_HOME", "PREFECT_PROFILE", "PREFECT_PROFILES_PATH", "PREFECT_UI_API_URL")


def _server_env(home: Path, port: int, data_root: Path) -> dict[str, str]:
    """The caller's environment (the user's Prefect settings: logging, analytics) with the server's own
    home, database and URLs."""
    env = {k: v for k, v in os.environ.items() if k not in (*SERVER_OWN, MARK)}
    env.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # offline machines logged a telemetry error
    env.update(
        PREFECT_HOME=str(home),
        PREFECT_API_DATABASE_CONNECTION_URL=database_url(data_root),
        PREFECT_UI_API_URL=f"http://127.0.0.1:{port}/api",
        PYTHONUNBUFFERED="1",
    )
    return env


def start(data_root: Path, timeout_s: float = START_TIMEOUT_S) -> LocalServer:
    """Start the workspace's server, detached, and wait until it answers; its state is written atomically."""
    from ai_influencer.io import atomic_write_json

    home = folder(data_root)
    home.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    prefect = Path(sys.executable).with_name("prefect")
    cmd = [str(prefect) if prefect.exists() else sys.executable, *([] if prefect.exists() else ["-m", "prefect"])]
    cmd += ["server", "start", "--host", "127.0.0.1", "--port", str(port)]
    log_path = home / LOG
    with log_path.open("ab") as log:
        log.write(f"\n--- {datetime.now(UTC).isoformat(timespec='seconds')} starting on port {port}\n".encode())
        log.flush()
        proc = subprocess.Popen(
            cmd,
            env=_server_env(home, port, data_root),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # detached: a Ctrl-C in the terminal, or the command's end, leaves it running
            cwd=str(home),
        )
    url = f"http://127.0.0.1:{port}/api"
    deadline = time.monotonic() + timeout_s
    while not healthy(url, timeout=1.0):
        if proc.poll() is not None or time.monotonic() > deadline:
            if proc.poll() is None:
                _kill_group(proc.pid)
            tail = log_path.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-3:]
            raise LocalServerError(
                f"the local Prefect server did not start within {timeout_s:g} s (log: {log_path}): " + " | ".join(tail)
            )
        time.sleep(0.25)
    import prefect

    server = LocalServer(url, proc.pid, port, str(home), datetime.now(UTC).isoformat(timespec="seconds"),
                         prefect.__version__)  # fmt: skip
    atomic_write_json(home / STATE, asdict(server))
    return server


def ensure(data_root: Path, timeout_s: float = START_TIMEOUT_S) -> tuple[LocalServer, bool]:
    """The workspace's running server, started (or restarted) when it is not; and whether it was started now."""
    found = running(data_root)
    if found is not None:
        return found, False
    with _locked(data_root):
        found = running(data_root)  # another command may have started it while this one waited
        if found is not None:
            return found, False
        stale = read_state(data_root)
        if stale is not None and _is_our_process(stale.pid):
            _kill_group(stale.pid)  # alive but not answering: a hung server holds the database
        return start(data_root, timeout_s), True


def _kill_group(pid: int, grace_s: float = 20.0) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)  # our child (started in this process): reap it
                if done:
                    return
            except ChildProcessError:  # started by another process: poll the pid
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    return
            time.sleep(0.1)


def stop(data_root: Path) -> LocalServer | None:
    """Stop the workspace's server (its whole process group); the state it had, or None if none was running."""
    state = read_state(data_root)
    if state is None:
        return None
    alive = _is_our_process(state.pid)
    if alive:
        _kill_group(state.pid)
    with contextlib.suppress(FileNotFoundError):
        (folder(data_root) / STATE).unlink()
    return state if alive else None


def use_local_defaults(data_root: Path) -> str | None:
    """For a command on the default install (no ``PREFECT_API_URL`` configured), before Prefect is imported:
    point it at the workspace's running server; else, once the workspace has a database, make Prefect's
    temporary server use it (the blocks ``set-key`` stored are there). Returns the URL in use, or None."""
    if configured_api_url():
        return None
    found = running(data_root)
    if found is not None:
        os.environ["PREFECT_API_URL"] = os.environ[MARK] = found.url
        return found.url
    if os.environ.get(MARK):  # inherited from a process that used a local server since stopped
        os.environ.pop("PREFECT_API_URL", None)
        os.environ.pop(MARK, None)
    if (folder(data_root) / DATABASE).is_file():
        os.environ.setdefault("PREFECT_API_DATABASE_CONNECTION_URL", database_url(data_root))
    return None


def for_command(data_root: Path, enabled: bool = True) -> contextlib.AbstractContextManager[object]:
    """Within the block, Prefect talks to the workspace's server (started if needed), unless a server is
    configured or the local server is turned off (``prefect_local_server``). For the commands that write to
    Prefect (``set-key``, ``blocks register``, ``stack init``): what they store is what runs will find."""
    if not enabled or configured_api_url():
        return contextlib.nullcontext()
    server, _ = ensure(data_root)
    return api_url_for_this_process(server.url)


@contextlib.contextmanager
def api_url_for_this_process(url: str) -> Iterator[None]:
    """Prefect's settings pointed at ``url`` within the block (Prefect reads its settings once, at import)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    old = {k: os.environ.get(k) for k in ("PREFECT_API_URL", MARK)}
    os.environ["PREFECT_API_URL"] = os.environ[MARK] = url  # child processes inherit it
    try:
        with temporary_settings(updates={PREFECT_API_URL: url}):
            yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# ---- the hub's runner: "Start run" on the local server ---------------------------------------------------------

LOCAL_DEPLOYMENT = "hybrid-local"  # settings.hub_deployment's default is hybrid/hybrid-local


def start_runner(url: str, log_path: Path) -> subprocess.Popen[bytes]:
    """Serve the hybrid flow as ``hybrid/hybrid-local`` on the local server, in a child process that dies with
    the hub (Prefect's runner: it registers the deployment and runs what the hub's "Start run" asks for).

    Why a runner and not prefect.yaml's process work pool: the default install has no work pool, no
    ``prefect deploy`` and no worker; the runner is all three in one process, for as long as the hub runs.
    """
    from shared_limits.prefect_compat import _die_with_parent

    env = {**os.environ, "PREFECT_API_URL": url, MARK: url, "PREFECT_RUNNER_POLL_FREQUENCY": "2"}
    log = log_path.open("ab")
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "interfaces.local_server", "serve"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,  # its own session, and SIGTERM when the hub dies
        )
    finally:
        log.close()


def serve_deployments() -> None:
    """The runner's body (``python -m interfaces.local_server serve``)."""
    from prefect import serve

    from flows.hybrid import hybrid_flow

    deployment = hybrid_flow.to_deployment(
        name=LOCAL_DEPLOYMENT,
        description="Whole pipeline, run by the Control Hub's runner on this machine (the local server).",
        tags=["ai-influencer", "hybrid", "local"],
    )
    serve(deployment, print_starting_message=False)


if __name__ == "__main__":
    if sys.argv[1:] != ["serve"]:
        raise SystemExit("usage: python -m interfaces.local_server serve")
    serve_deployments()
