"""Atomic file writes, and the one content hash of a file.

A killed run must never leave a half-written image, sidecar, report or LoRA that a
later run would mistake for finished work, so every write goes to a temporary
file in the same directory, is fsynced, and is renamed over the target
(rename is atomic on POSIX and on NTFS for same-volume paths).

The finished file gets the permissions an ordinary ``open()`` would give it
(``0o666`` minus the umask, usually 0644). ``tempfile.mkstemp`` creates 0600
files, and renaming one keeps that mode: a ComfyUI/A1111 process or a container
running as another user could then not read the LoRA it was made for.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any


def atomic_write(path: str | os.PathLike[str], write: Callable[[Path], object]) -> Path:
    """Let ``write(tmp)`` fill a temporary file next to ``path``, then publish it atomically.

    ``write`` receives a path, not a file object, so libraries that only write to paths
    (safetensors' ``save_file``, ``torch.save``) go through the same primitive. The
    temporary file is created with mode 0o666 so the kernel applies the process umask
    (reading the umask would mean changing it, which is not thread-safe); the mode is
    re-applied afterwards in case ``write`` replaced the file instead of writing into it.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        mode = os.fstat(fd).st_mode & 0o777  # 0o666 & ~umask, as the kernel applied it
        os.close(fd)
        fd = -1
        write(tmp)
        os.chmod(tmp, mode)
        with tmp.open("r+b" if os.name == "nt" else "rb") as fh:  # Windows fsyncs only writable handles
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(target.parent)
    return target


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (POSIX); directories cannot be opened this way on Windows."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def publish_dir(tmp: Path, final: Path) -> Path:
    """Make a folder filled at ``tmp`` appear at ``final`` whole: every file in it fsynced, then one rename.

    For writers that fill a folder (accelerate's ``save_state``): the rename is the commit point, and
    without the fsyncs a power cut after it could leave a "finished" folder of empty files. A folder
    already at ``final`` (the same step saved again) is replaced.
    """
    for root, _dirs, files in os.walk(tmp):
        for name in files:
            with open(os.path.join(root, name), "r+b" if os.name == "nt" else "rb") as fh:
                os.fsync(fh.fileno())
        _fsync_dir(Path(root))
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    _fsync_dir(final.parent)
    return final


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` so that readers see either nothing or all of it."""
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=False) + "\n")


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file's bytes, streamed (LoRA files and photos can be large)."""
    with Path(path).open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


QUARANTINE_DIR = ".quarantine"


def quarantine(path: str | os.PathLike[str], reason: str, *, into: str = QUARANTINE_DIR) -> Path:
    """Move a file into a folder next to it (``.quarantine/`` for damaged files; ``into`` names another,
    e.g. ``.superseded/`` for replaced ones), with a note saying why; an earlier file there keeps its name.

    Why move, not delete: the file may have been paid for, and a user may want to look at it;
    out of the folder, no stage mistakes it for finished work.
    """
    src = Path(path)
    folder = src.parent / into
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / src.name
    n = 1
    while target.exists():
        target = folder / f"{src.stem}.{n}{src.suffix}"
        n += 1
    os.replace(src, target)
    atomic_write_text(target.with_name(target.name + ".reason.txt"), reason + "\n")
    return target
