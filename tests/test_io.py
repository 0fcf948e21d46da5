"""Atomic writes: all or nothing, and the mode an ordinary open() would give (not mkstemp's 0600)."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from ai_influencer.io import atomic_write, atomic_write_bytes, atomic_write_json


@pytest.fixture
def umask() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.skipif(os.name == "nt", reason="POSIX permissions")
def test_files_get_0666_minus_umask_even_when_replacing_a_private_file(tmp_path: Path, umask: None) -> None:
    target = tmp_path / "lora.safetensors"
    target.write_bytes(b"old")
    target.chmod(0o600)  # what mkstemp + rename used to leave behind
    atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"new" and mode(target) == 0o644

    os.umask(0o077)
    private = atomic_write_json(tmp_path / "sub" / "report.json", {"a": 1})
    assert mode(private) == 0o600  # the umask decides, as for open()


@pytest.mark.skipif(os.name == "nt", reason="POSIX permissions")
def test_path_writers_that_replace_the_file_still_get_the_mode(tmp_path: Path, umask: None) -> None:
    def replace_it(tmp: Path) -> None:  # a library that writes its own temp file and renames it over ours
        other = tmp.with_name("other")
        other.write_bytes(b"data")
        other.chmod(0o600)
        os.replace(other, tmp)

    out = atomic_write(tmp_path / "f.bin", replace_it)
    assert out.read_bytes() == b"data" and mode(out) == 0o644


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "image.png"
    target.write_bytes(b"complete")

    def half_then_crash(tmp: Path) -> None:
        tmp.write_bytes(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, half_then_crash)
    assert target.read_bytes() == b"complete"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["image.png"]
