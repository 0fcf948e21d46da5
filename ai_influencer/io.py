"""Atomic file writes, and the one content hash of a file.

A killed run must never leave a half-written image, sidecar or report that a
later run would mistake for finished work, so every write goes to a temporary
file in the same directory, is fsynced, and is renamed over the target
(rename is atomic on POSIX and on NTFS for same-volume paths).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` so that readers see either nothing or all of it."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return target


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=False) + "\n")


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file's bytes, streamed (LoRA files and photos can be large)."""
    with Path(path).open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


QUARANTINE_DIR = ".quarantine"


def quarantine(path: str | os.PathLike[str], reason: str) -> Path:
    """Move a damaged file into ``.quarantine/`` next to it, with a note saying why.

    Why move, not delete: the file may have been paid for, and a user may want to look at it;
    out of the folder, no stage mistakes it for finished work.
    """
    src = Path(path)
    folder = src.parent / QUARANTINE_DIR
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / src.name
    n = 1
    while target.exists():
        target = folder / f"{src.stem}.{n}{src.suffix}"
        n += 1
    os.replace(src, target)
    atomic_write_text(target.with_name(target.name + ".reason.txt"), reason + "\n")
    return target
