"""The user's verdicts on QC's images: stored by content, honoured by every QC run (docs/review.md).

Why by content (the file's SHA-256, the key QC's analysis cache uses too): a generated image is named by
its request, a downloaded one by whatever the user chose; the same bytes under another name, after a
re-download or a rename, are the same picture and keep the user's verdict.

Every user verdict is a *judgement*: accepted or rejected, when, and what QC had said (verdict and reason).
One that agrees with QC is a label (the review page's "confirm"); one that disagrees is an override. Both
pin the image: QC never re-decides an image the user judged, whatever the thresholds say later, and both
are labels for calibration. Each image keeps its history, so undo restores the judgement before.

QC only reads the store (``OverrideStore.apply``, i.e. ``apply_overrides``, is its one hook, called right
after ``decide``; the use case hands the store to QC, which knows it only as ``qc.report.VerdictOverrides``); the review
page writes it (``set_verdict``, ``undo_verdict``), one locked read-modify-write and an atomic replace each.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

from filelock import FileLock

from ai_influencer.dataset.workspace import Workspace
from ai_influencer.io import atomic_write_json, file_sha256
from ai_influencer.qc.report import HasPath, QCRow, mark_automatic, read_report

VERDICTS = ("accepted", "rejected")
CAUSES = ("identity", "sharpness", "other")  # why the user rejected (optional): which threshold it speaks to
STORE_VERSION = 1
NOTE_MAX = 500
ALIASES = {"accept": "accepted", "a": "accepted", "reject": "rejected", "r": "rejected"}


class OverrideError(ValueError):
    """A refused request or an unreadable store, as one line naming the file or the field."""


class OverrideStoreError(OverrideError):
    """The store itself cannot be read: the user must fix or move the file (no request can succeed)."""


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class Judgement:
    """One user verdict on one picture."""

    verdict: str  # accepted | rejected: what QC publishes for this picture from now on
    at: str  # UTC, ISO 8601
    file: str  # the name it had when judged (the key is the content)
    was: str  # QC's own verdict it replaced (accepted | rejected)
    was_reason: str = ""  # and QC's reason ("" for an accepted image)
    note: str = ""
    cause: str | None = None  # for a rejection: identity | sharpness | other; None = not said

    @property
    def overrides(self) -> bool:
        """It disagreed with QC when it was made (else it confirmed QC: a label only)."""
        return self.verdict != self.was

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: object) -> Judgement:
        if not isinstance(data, dict):
            raise TypeError("a judgement is an object")
        known = {f.name for f in fields(cls)}
        j = cls(**{k: v for k, v in data.items() if k in known})
        if j.verdict not in VERDICTS:
            raise ValueError(f"verdict {j.verdict!r} is not one of {', '.join(VERDICTS)}")
        if j.cause is not None and j.cause not in CAUSES:
            raise ValueError(f"cause {j.cause!r} is not one of {', '.join(CAUSES)}")
        return j


class OverrideStore:
    """``qc_overrides.json``: per content hash, the history of judgements (the last is in force) and the
    judgements undone (kept for the record)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def _lock(self) -> FileLock:
        # The hub serves requests in threads, and a second hub or a GUI may run beside it.
        return FileLock(str(self.path.with_name(f".{self.path.name}.lock")), timeout=30)

    def _read(self) -> dict[str, dict[str, Any]]:
        """The raw entries; an unreadable file is an error, never an empty store (it holds the user's work)."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise OverrideStoreError(f"{self.path}: cannot read the review overrides ({exc.strerror})") from exc
        try:
            data = json.loads(text)
            if not isinstance(data, dict) or not isinstance(data.get("images"), dict):
                raise ValueError("no 'images' object")
            if data.get("version") != STORE_VERSION:
                raise ValueError(f"version {data.get('version')!r}, this program reads {STORE_VERSION}")
            for entry in data["images"].values():
                for j in entry.get("history", []):
                    Judgement.from_json(j)
        except (ValueError, TypeError, AttributeError) as exc:
            raise OverrideStoreError(
                f"{self.path}: unreadable review overrides ({str(exc).splitlines()[0]}); fix or move the file, "
                "QC will not run without the verdicts it holds"
            ) from None
        return data["images"]

    def history(self) -> dict[str, list[Judgement]]:
        return {d: [Judgement.from_json(j) for j in e.get("history", [])] for d, e in self._read().items()}

    def current(self) -> dict[str, Judgement]:
        """The judgement in force per content hash."""
        return {d: h[-1] for d, h in self.history().items() if h}

    def record(self, digest: str, judgement: Judgement) -> Judgement:
        with self._lock():
            images = self._read()
            images.setdefault(digest, {"history": [], "undone": []})["history"].append(judgement.to_json())
            self._write(images)
        return judgement

    def undo(self, digest: str) -> Judgement | None:
        """Take back the last judgement of this picture (the one before, if any, is in force again)."""
        with self._lock():
            images = self._read()
            entry = images.get(digest)
            if not entry or not entry.get("history"):
                return None
            last = entry["history"].pop()
            entry.setdefault("undone", []).append({**last, "undone_at": utc_now()})
            self._write(images)
        return Judgement.from_json(last)

    def _write(self, images: dict[str, dict[str, Any]]) -> None:
        atomic_write_json(self.path, {"version": STORE_VERSION, "images": images})

    def apply(self, verdicts: dict[str, QCRow], analyses: Iterable[HasPath]) -> dict[str, QCRow]:
        """QC's hook (``qc.report.VerdictOverrides``): see ``apply_overrides``."""
        return apply_overrides(verdicts, analyses, self)


def content_digest(path: Path) -> str:
    """The file's SHA-256, computed once per (file, size, mtime): QC and the review page ask often."""
    st = path.stat()
    return _digest(str(path.resolve()), st.st_size, st.st_mtime_ns)


@lru_cache(maxsize=65536)
def _digest(path: str, size: int, mtime_ns: int) -> str:
    return file_sha256(path)


def override_reason(verdict: str, auto_verdict: str, auto_reason: str) -> str:
    return f"override: {verdict} (was: {auto_reason or auto_verdict})"


def automatic_reason(row: QCRow) -> str:
    """The reason QC gave on its own: the report's reason without the override's wrapper."""
    if row.override and row.auto_verdict and row.override != row.auto_verdict:
        inner = row.reason.removeprefix(f"override: {row.override} (was: ").removesuffix(")")
        return "" if inner == row.auto_verdict else inner
    return row.reason


REASON_KINDS = ("identity", "sharpness", "duplicate", "copy", "faces", "no face", "error", "override")


def reason_kinds(reason: str) -> set[str]:
    """The kinds of failure a QC reason names (the review page's reason filter, calibration's causes)."""
    kinds = set()
    for part in reason.split("; "):
        part = part.strip()
        if part.startswith(("identity:", "impostor:")):
            kinds.add("identity")
        elif part.startswith("sharpness:"):
            kinds.add("sharpness")
        elif part.startswith("duplicate:"):
            kinds.add("duplicate")
        elif part.startswith("copy of reference"):
            kinds.add("copy")
        elif part.startswith("faces:"):
            kinds.add("faces")
        elif part == "no face detected":
            kinds.add("no face")
        elif part.startswith("override:"):
            kinds.add("override")
    return kinds


def apply_overrides(
    verdicts: dict[str, QCRow], analyses: Iterable[HasPath], store: OverrideStore | None
) -> dict[str, QCRow]:
    """QC's hook: the user's verdicts over QC's own, in place; ``auto_verdict`` keeps QC's.

    Rules (docs/review.md): a judgement changes its own picture only (no other image is re-decided); an
    unreadable image (verdict ``error``) cannot be accepted; the same bytes under two names are accepted
    once (the copy QC kept), so the training set never holds one file twice; a copy whose better copy
    the user re-judged says so in its reason.
    """
    mark_automatic(verdicts)
    judged = store.current() if store is not None else {}
    if not judged:
        return verdicts
    names_by_digest: dict[str, list[str]] = {}
    for a in analyses:
        name = a.path.name
        if name not in verdicts or verdicts[name].verdict == "error":
            continue
        try:
            digest = content_digest(a.path)
        except OSError:  # gone since it was analysed: nothing to publish either
            continue
        if digest in judged:
            names_by_digest.setdefault(digest, []).append(name)
    changed: dict[str, str] = {}
    for digest, names in names_by_digest.items():
        j = judged[digest]
        names.sort()
        targets = names
        if j.verdict == "accepted" and len(names) > 1:
            kept = [n for n in names if verdicts[n].duplicate_of not in names]
            targets = (kept or names)[:1]
        for name in targets:
            row = verdicts[name]
            row.override = j.verdict
            if row.verdict != j.verdict:
                row.reason = override_reason(j.verdict, row.verdict, row.reason)
                row.verdict = j.verdict
                changed[name] = j.verdict
    for name, row in verdicts.items():
        if row.duplicate_of in changed and name not in changed:
            row.reason += f"; {row.duplicate_of} {changed[row.duplicate_of]} by review override"
    return verdicts


# ---- the review page's side ----------------------------------------------------------------------------------


def _plain_name(file: str) -> str:
    if not file or Path(file).name != file or file in (".", ".."):
        raise OverrideError(f"file: {file!r} is not a plain file name")
    return file


def normalise_verdict(verdict: str) -> str:
    v = ALIASES.get(verdict.strip().lower(), verdict.strip().lower())
    if v not in VERDICTS:
        raise OverrideError(f"verdict: {verdict!r} is not accepted or rejected")
    return v


def set_verdict(
    ws: Workspace,
    file: str,
    verdict: str,
    *,
    note: str = "",
    cause: str | None = None,
    cand_dir: Path | None = None,
    report: Path | None = None,
) -> Judgement:
    """The user's verdict on one of the latest QC's images (A / R on the review page), stored at once.

    In force from the next QC run (batch, streamed or the flow's): the report and ``qc_passed`` follow then.
    """
    name = _plain_name(file)
    verdict = normalise_verdict(verdict)
    if cause is not None and (verdict != "rejected" or cause not in CAUSES):
        raise OverrideError(f"cause: {cause!r} must be one of {', '.join(CAUSES)}, and only for a rejection")
    note = " ".join(note.split())
    if len(note) > NOTE_MAX:
        raise OverrideError(f"note: {len(note)} characters, at most {NOTE_MAX}")
    folder = cand_dir or ws.synth
    path = folder / name
    if not path.is_file():
        raise OverrideError(f"{name}: not among the candidates in {folder}")
    report = report or ws.qc_report
    if not report.is_file():
        raise OverrideError(f"{report}: no QC report yet; run QC before reviewing")
    row = read_report(report).get(name)
    if row is None:
        raise OverrideError(f"{name}: not in {report}; run QC again to check it first")
    auto = row.auto_verdict or row.verdict
    if auto == "error":
        raise OverrideError(f"{name}: QC could not read the image ({row.reason}); no verdict makes it trainable")
    judgement = Judgement(verdict, utc_now(), name, auto, automatic_reason(row), note, cause)
    return OverrideStore(ws.qc_overrides).record(content_digest(path), judgement)


def undo_verdict(ws: Workspace, file: str, *, cand_dir: Path | None = None) -> Judgement | None:
    """U on the review page: take back the last judgement of this picture; None when there was none."""
    name = _plain_name(file)
    path = (cand_dir or ws.synth) / name
    if not path.is_file():
        raise OverrideError(f"{name}: not among the candidates in {cand_dir or ws.synth}")
    return OverrideStore(ws.qc_overrides).undo(content_digest(path))


def inactive(store: OverrideStore, paths: Iterable[Path]) -> dict[str, Judgement]:
    """Judgements whose picture is not among ``paths`` (kept, not applied: the picture may come back)."""
    present = set()
    for p in paths:
        try:
            present.add(content_digest(p))
        except OSError:
            continue
    return {d: j for d, j in store.current().items() if d not in present}
