"""Who holds our concurrency leases, kept beside them, so a restarted run frees what its killed
predecessor held at once instead of waiting for the leases to expire.

Why: Prefect's shortest lease is 60 s. A run killed with SIGKILL (the OOM killer, a closed laptop lid,
``kill -9``) keeps its seat and in-flight slots until then, and the restarted run waited for them
(issue 23: its first paid request came 55-62 s after the restart). Prefect's own lease holder field
takes only a flow or task run id, which cannot say whether the process behind it is still alive. So
every process that takes a lease records it here, with the process's identity (host, pid, the pid's
start time, workspace), in one small JSON file per process under ``PREFECT_HOME``. A run about to
claim slots reads the files: a holder on this host whose process is gone (or whose pid now belongs
to a newer process) is dead, and its leases are released through the API (the server decrements
the limits by the leases' own slots). A holder that is alive, or on another host, is never touched:
its leases expire or are renewed as before.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
from pathlib import Path
from typing import Any
from uuid import UUID

import psutil
from prefect.client.orchestration import SyncPrefectClient
from prefect.settings import get_current_settings

from ai_influencer.io import atomic_write_text

FOLDER = "influencer-lease-holders"
log = logging.getLogger(__name__)


def host_id() -> str:
    """This machine and process namespace: the hostname, the kernel's boot id and the pid namespace.

    Why more than the hostname: two containers may share a hostname (compose ``hostname:``) and pids,
    and a pid checked in the wrong namespace would look dead. The boot id changes on a reboot, after
    which no process of before is alive anyway.
    """
    parts = [socket.gethostname()]
    with contextlib.suppress(OSError):
        parts.append(Path("/proc/sys/kernel/random/boot_id").read_text().strip())
    with contextlib.suppress(OSError):
        parts.append(os.readlink("/proc/self/ns/pid"))
    return "|".join(parts)


def server_id() -> str:
    """The Prefect server the leases live on: its URL, or this PREFECT_HOME's embedded server."""
    settings = get_current_settings()
    return str(settings.api.url or f"embedded:{settings.home}")


def _started(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None


def alive(pid: int, started: float) -> bool:
    """The process ``pid`` that started at ``started`` still runs (not a newer process with its pid)."""
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return False
        return abs(process.create_time() - started) < 1.0
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True  # someone else's process with that pid: it may be the holder, leave it alone


class LeaseHolders:
    """This process's record of the leases it holds (one file, rewritten atomically on each change)."""

    def __init__(self, folder: Path | None = None) -> None:
        self._folder = folder
        self._lock = threading.Lock()
        self._leases: dict[str, str] = {}  # lease id -> limit name
        self.workspace: str | None = None
        self._me: tuple[int, float] | None = None

    @property
    def folder(self) -> Path:
        return self._folder or get_current_settings().home / FOLDER

    def _path(self) -> Path:
        pid = os.getpid()
        if self._me is None or self._me[0] != pid:  # computed once per process (a fork gets its own)
            self._me = (pid, _started(pid) or 0.0)
        return self.folder / f"{pid}-{int(self._me[1] * 1000)}.json"

    def _write(self) -> None:
        path = self._path()
        if not self._leases:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            return
        assert self._me is not None
        record = {
            "host": host_id(),
            "pid": self._me[0],
            "started": self._me[1],
            "workspace": self.workspace,
            "server": server_id(),
            "leases": self._leases,
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(record))

    def record(self, lease_id: UUID | str, limit: str) -> None:
        """A lease this process now holds (written before it is used: a kill right after still leaves it)."""
        with self._lock:
            self._leases[str(lease_id)] = limit
            self._write()

    def forget(self, lease_id: UUID | str) -> None:
        with self._lock:
            if self._leases.pop(str(lease_id), None) is not None:
                self._write()

    def reclaim_dead(self, client: SyncPrefectClient) -> list[dict[str, Any]]:
        """Release the leases of holders on this host whose process has died; one entry per dead holder
        (its pid, workspace and the slots freed per limit name). Live holders and other hosts' are kept."""
        folder = self.folder
        if not folder.is_dir():
            return []
        me, here, server = os.getpid(), host_id(), server_id()
        freed: list[dict[str, Any]] = []
        for path in sorted(folder.glob("*.json")):
            try:
                record = json.loads(path.read_text())
                pid, started = int(record["pid"]), float(record["started"])
            except (OSError, ValueError, KeyError, TypeError):
                continue  # being written, or not ours to read: left alone
            if record.get("host") != here or record.get("server") != server or pid == me or alive(pid, started):
                continue
            claim = path.with_name(f"{path.name}.reclaim-{me}")
            try:
                path.rename(claim)  # one reclaimer per dead holder, even with several restarts at once
            except FileNotFoundError:
                continue
            slots: dict[str, int] = {}
            for lease_id, limit in dict(record.get("leases") or {}).items():
                try:
                    client.release_concurrency_slots_with_lease(UUID(lease_id))
                    slots[limit] = slots.get(limit, 0) + 1
                except Exception as error:  # expired and repossessed already, or unknown to this server
                    log.debug("lease %s of dead pid %s: %s", lease_id, pid, error)
            claim.unlink(missing_ok=True)
            freed.append({"pid": pid, "workspace": record.get("workspace"), "slots": slots})
        return freed


HOLDERS = LeaseHolders()  # this process's
