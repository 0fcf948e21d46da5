"""One Xvfb for the whole test session, for every test that opens a Tk window.

Why one, and why it outlives the session: Tk keeps each X display it has opened in a process-wide list
until the process exits, even after every window and interpreter is gone, and services all of them on
the next event. An Xvfb stopped between two Tk tests therefore ended the whole pytest process at the
next Tk test (Xlib's fatal I/O error handler calls exit(1): no summary). This Xvfb is told to stop
when pytest's process ends (PR_SET_PDEATHSIG), after Tk's own exit handlers have closed it.
"""

from __future__ import annotations

import os
import select
import shutil
import subprocess
import time

from shared_limits.prefect_compat import _die_with_parent

XVFB = shutil.which("Xvfb")
_display: str | None = None


def session_display(timeout_s: float = 20.0) -> str:
    """The session's display (``":N"``), started on first use; Xvfb picks a free number itself (-displayfd)."""
    global _display
    if _display is not None:
        return _display
    if XVFB is None:
        raise RuntimeError("Xvfb is not installed (apt-get install xvfb)")
    read, write = os.pipe()
    proc = subprocess.Popen(
        [XVFB, "-displayfd", str(write), "-screen", "0", "1280x900x24", "-nolisten", "tcp"],
        pass_fds=(write,),
        preexec_fn=_die_with_parent,  # its own session; SIGTERM when pytest ends (fixtures run on the main thread)
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    os.close(write)
    got = b""
    deadline = time.monotonic() + timeout_s
    try:
        while not got.endswith(b"\n"):
            ready, _, _ = select.select([read], [], [], 0.5)
            chunk = os.read(read, 16) if ready else b""
            got += chunk
            if not chunk and (proc.poll() is not None or time.monotonic() > deadline):
                proc.kill()
                raise RuntimeError(f"Xvfb did not start (exit {proc.poll()})")
    finally:
        os.close(read)
    _display = f":{int(got)}"
    return _display
