"""QC verdict rows and ``qc_report.csv``.

The report keeps its first seven columns (what analytics and the hub read) and adds the evidence: score
per reference, nearest impostor and its score, the margin, face size and compression; then the review
columns (the user's verdict in force and QC's own, ``review.overrides``). Reports written before the
evidence or review columns existed still read.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

from ai_influencer.io import atomic_write_text

LEGACY_FIELDS = ("file", "faces", "score", "sharpness", "duplicate_of", "verdict", "reason")
EVIDENCE_FIELDS = ("ref_scores", "nearest_impostor", "impostor_score", "margin", "face_px", "compression")
REVIEW_FIELDS = ("override", "auto_verdict")  # the user's verdict in force, and QC's own (review.overrides)
REPORT_FIELDS = LEGACY_FIELDS + EVIDENCE_FIELDS + REVIEW_FIELDS


@dataclass
class QCRow:
    file: str
    faces: int
    score: float | None
    sharpness: float | None
    duplicate_of: str
    verdict: str  # accepted | rejected | error
    reason: str
    ref_scores: str = ""  # per reference, in reference-name order, space separated
    nearest_impostor: str = ""
    impostor_score: float | None = None
    margin: float | None = None  # score - impostor_score
    face_px: int | None = None
    compression: str = ""
    override: str = ""  # the user's verdict when one is in force (review.overrides), else empty
    auto_verdict: str = ""  # QC's own verdict, whatever the user said


class HasPath(Protocol):
    @property
    def path(self) -> Path: ...


class VerdictOverrides(Protocol):
    """The user's verdicts over QC's own: QC's one hook, passed in by the use case.

    ``review.overrides.OverrideStore`` is the implementation (a level above QC: it reads QC's report). QC calls
    ``current`` before it pays for anything (an unreadable store fails there) and ``apply`` right after
    ``decide``; ``apply`` starts from ``mark_automatic``.
    """

    def current(self) -> Mapping[str, object]: ...

    def apply(self, verdicts: dict[str, QCRow], analyses: Iterable[HasPath]) -> dict[str, QCRow]: ...


def mark_automatic(verdicts: dict[str, QCRow]) -> dict[str, QCRow]:
    """QC's own verdicts as the published ones: ``auto_verdict`` records each, no override is in force."""
    for row in verdicts.values():
        row.auto_verdict, row.override = row.verdict, ""
    return verdicts


def tile_label(r: QCRow) -> str:
    """Two short lines under a contact-sheet tile: the evidence, then the verdict's reason."""
    score = "-" if r.score is None else f"{r.score:.2f}"
    refs = f" [{'/'.join(_two_places(s) for s in r.ref_scores.split())}]" if r.ref_scores else ""
    sharp = "-" if r.sharpness is None else f"{r.sharpness:.0f}"
    first = f"id {score}{refs} sh {sharp}"
    if r.override and r.override != r.auto_verdict:
        return f"{first}\nOVERRIDE, was {r.auto_verdict}"
    if r.margin is not None and r.verdict == "accepted":
        return f"{first}\nmargin {r.margin:+.2f}"
    return f"{first}\n{r.reason or r.verdict}"


def _two_places(score: str) -> str:
    """A reference score rounded for a tile (``-0.0512`` -> ``-0.05``; cutting the text gave ``-0.0``)."""
    try:
        return f"{float(score):.2f}"
    except ValueError:
        return score


def _float(value: str | None) -> float | None:
    return float(value) if value else None


def read_report(path: Path) -> dict[str, QCRow]:
    """qc_report.csv back into rows, by file name (what analytics and the hub join on).

    Reports written before the evidence columns existed read with those fields empty.
    """
    rows: dict[str, QCRow] = {}
    with path.open(newline="", encoding="utf-8") as fh:
        for d in csv.DictReader(fh):
            rows[d["file"]] = QCRow(
                file=d["file"],
                faces=int(d["faces"] or 0),
                score=_float(d.get("score")),
                sharpness=_float(d.get("sharpness")),
                duplicate_of=d.get("duplicate_of") or "",
                verdict=d["verdict"],
                reason=d.get("reason") or "",
                ref_scores=d.get("ref_scores") or "",
                nearest_impostor=d.get("nearest_impostor") or "",
                impostor_score=_float(d.get("impostor_score")),
                margin=_float(d.get("margin")),
                face_px=int(d["face_px"]) if d.get("face_px") else None,
                compression=d.get("compression") or "",
                override=d.get("override") or "",
                auto_verdict=d.get("auto_verdict") or "",
            )
    return rows


def write_report(rows: list[QCRow], path: Path) -> Path:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=REPORT_FIELDS, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        d = asdict(r)
        writer.writerow({k: "" if d[k] is None else d[k] for k in REPORT_FIELDS})
    return atomic_write_text(path, buf.getvalue())
