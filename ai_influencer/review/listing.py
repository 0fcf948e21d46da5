"""The latest QC's images as the review page lists them: scores, verdicts, reasons, scene, borderline first.

The report is what the last QC run published; the user's judgements made since are merged in at once (the
report and ``qc_passed`` follow at the next QC run), so the page never shows a verdict the user changed.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ai_influencer.dataset.manifest import read_sidecars
from ai_influencer.dataset.workspace import Workspace
from ai_influencer.qc.report import read_report
from ai_influencer.review.overrides import (
    Judgement,
    OverrideStore,
    automatic_reason,
    content_digest,
    override_reason,
    reason_kinds,
)

IDENTITY_SCALE = 0.05  # identity scores this far from minsim count as one unit of "borderline"
SHARPNESS_SCALE = math.log(1.25)  # sharpness 25 % away from minblur counts as one unit


@dataclass(frozen=True)
class ReviewItem:
    file: str
    path: Path
    digest: str
    faces: int
    score: float | None
    sharpness: float | None
    verdict: str  # in force: the user's when judged, else QC's
    reason: str  # as QC publishes it (``override: ...`` when the user's verdict differs from QC's)
    auto_verdict: str  # QC's own
    auto_reason: str
    duplicate_of: str
    scene: str | None
    judgement: Judgement | None  # the user's verdict in force on this picture, if any
    borderline: float  # distance to the nearer threshold in units (IDENTITY_SCALE, SHARPNESS_SCALE); inf: no face

    @property
    def overridden(self) -> bool:
        return self.judgement is not None and self.judgement.verdict != self.auto_verdict

    @property
    def kinds(self) -> set[str]:
        """What the reason filter matches: QC's failure kinds, ``error``, and ``override`` / ``confirmed``."""
        kinds = reason_kinds(self.auto_reason) | ({"error"} if self.auto_verdict == "error" else set())
        if self.judgement is not None:
            kinds.add("override" if self.overridden else "confirmed")
        return kinds


UNFLIPPABLE = frozenset({"copy", "faces", "no face", "error"})  # reasons no threshold change can undo


def borderline(
    score: float | None, sharpness: float | None, minsim: float, minblur: float, kinds: Iterable[str] = ()
) -> float:
    """How far an image is from flipping, in units: identity ``|score - minsim| / 0.05``, sharpness
    ``|ln(sharpness / minblur)| / ln 1.25`` (sharpness is a ratio scale), the nearer of the two measured.

    A face QC rejected before measuring its identity (too blurred) is as near as its sharpness; one rejected for
    a reason no threshold moves (a copy of a reference, several faces, no face, unreadable) is never borderline.
    """
    if UNFLIPPABLE & set(kinds) or sharpness is None:
        return math.inf
    sharp = abs(math.log(max(sharpness, 1e-6) / minblur)) / SHARPNESS_SCALE if minblur > 0 else math.inf
    ident = abs(score - minsim) / IDENTITY_SCALE if score is not None else math.inf
    return min(ident, sharp)


def review_items(
    ws: Workspace,
    *,
    minsim: float,
    minblur: float,
    report: Path | None = None,
    cand_dir: Path | None = None,
) -> list[ReviewItem]:
    """Every image of the latest QC report still among the candidates, borderline first (then by name).

    ``minsim`` / ``minblur``: the thresholds the borderline order is measured against (the effective ones,
    ``review.persona.effective_thresholds``).
    """
    report = report or ws.qc_report
    folder = cand_dir or ws.synth
    if not report.is_file():
        return []
    rows = read_report(report)
    judged = OverrideStore(ws.qc_overrides).current()
    records, _problems = read_sidecars(folder)
    scenes = {r.file: r.scene for r in records}
    items = []
    for name, row in rows.items():
        path = folder / name
        try:
            digest = content_digest(path)
        except OSError:
            continue
        auto_verdict = row.auto_verdict or row.verdict
        auto_reason = automatic_reason(row)
        j = judged.get(digest) if auto_verdict != "error" else None
        kinds = reason_kinds(auto_reason) | ({"error"} if auto_verdict == "error" else set())
        verdict = j.verdict if j is not None else auto_verdict
        reason = override_reason(verdict, auto_verdict, auto_reason) if verdict != auto_verdict else auto_reason
        item = ReviewItem(
            name, path, digest, row.faces, row.score, row.sharpness, verdict, reason, auto_verdict, auto_reason,
            row.duplicate_of, scenes.get(name), j, borderline(row.score, row.sharpness, minsim, minblur, kinds),
        )  # fmt: skip
        items.append(item)
    return sorted(items, key=lambda i: (i.borderline, i.file))


def filter_items(
    items: Iterable[ReviewItem], *, verdict: str | None = None, reason: str | None = None, scene: str | None = None
) -> list[ReviewItem]:
    """The review page's filters: verdict in force, a reason kind (``review.overrides.REASON_KINDS`` or
    ``confirmed``), scene."""
    return [
        i
        for i in items
        if (verdict is None or i.verdict == verdict)
        and (reason is None or reason in i.kinds)
        and (scene is None or i.scene == scene)
    ]
