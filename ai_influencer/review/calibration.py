"""This persona's ``minsim`` and ``minblur``, learned from the user's labels (docs/review.md has the why).

Inputs: the user's judgements (``review.overrides``: overrides and confirmations alike are labels) joined
by content with the latest ``qc_report.csv`` (each image's identity score and face sharpness).

QC accepts an image when ``score >= minsim`` AND ``sharpness >= minblur``. Holding ``minblur`` fixed, only
the images it lets through depend on ``minsim``; so ``minsim`` is fitted on the labels of sharp enough
faces, and ``minblur`` on the labels of faces that score as the persona. The two fits alternate (each
with the other's latest value) until neither moves, at most ``MAX_ROUNDS`` times: coordinate ascent on
the rule QC applies. A rejection says why only when the user said so (``cause``) or QC had given exactly
one of the two reasons; a rejection for another reason (a duplicate, two faces) says nothing about
either threshold and is left out.

Each fit is an ROC over one score: the threshold with the highest recall among those whose precision on
the labels is at least ``TARGET_PRECISION`` (0.95), placed half-way between the lowest accepted label and
the highest label below it. Why that criterion rather than Youden's J: a wrong face or a blurred one in the
training set teaches the LoRA the wrong thing, while a wrongly rejected image costs one more generation,
so precision comes first. When no threshold reaches it, Youden's J (recall minus false-positive rate)
decides, and the table says so. A current value that already accepts exactly the labels the best one
accepts is kept: the labels give no reason to move it, and the default carries what they cannot show
(look-alikes the user never labelled).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ai_influencer.dataset.workspace import Workspace
from ai_influencer.options.qc import QC_DEFAULTS
from ai_influencer.qc.report import QCRow, read_report
from ai_influencer.review.overrides import OverrideStore, content_digest, reason_kinds
from ai_influencer.review.persona import EffectiveThresholds, effective_thresholds, store_thresholds

MIN_PER_CLASS = 5  # labels of each kind a fit needs: fewer, and one mislabelled image decides the threshold
TARGET_PRECISION = 0.95
MAX_ROUNDS = 5
CRITERION = f"highest recall at precision >= {TARGET_PRECISION:g} (Youden's J where none reaches it)"
DECIMALS = {"minsim": 3, "minblur": 1}  # the report's resolution is 4 and 1 decimals


@dataclass(frozen=True)
class Label:
    """One judged image with its scores: ``accepted`` is the user's verdict."""

    file: str
    score: float | None  # None: QC rejected the face before measuring its identity (too blurred at the time)
    sharpness: float
    accepted: bool
    cause: str | None = None  # a rejection's reason: identity | sharpness | None (unknown: either)

    def identity_ok(self, minsim: float) -> bool:
        """Does the face pass ``minsim``? Where QC never measured it, the user's word stands in: an accepted
        face is the persona's, and so is one rejected for its sharpness (identity was not in question)."""
        if self.score is None:
            return self.accepted or self.cause == "sharpness"
        return self.score >= minsim


@dataclass(frozen=True)
class Operating:
    """How a threshold does on a set of labels (accepted: value >= threshold)."""

    threshold: float
    tp: int
    fp: int
    fn: int
    tn: int

    @property
    def precision(self) -> float | None:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else None

    @property
    def recall(self) -> float | None:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else None


def operating(values: Iterable[float], positive: Iterable[bool], threshold: float) -> Operating:
    v, y = np.asarray(list(values), dtype=float), np.asarray(list(positive), dtype=bool)
    ok = v >= threshold
    return Operating(threshold, int((ok & y).sum()), int((ok & ~y).sum()), int((~ok & y).sum()), int((~ok & ~y).sum()))


def fit_threshold(
    values: Iterable[float], positive: Iterable[bool], decimals: int, current: float | None = None
) -> tuple[float, str]:
    """The threshold ``CRITERION`` chooses, and which rule chose it (``precision``, ``youden``, or ``kept``
    when ``current`` already accepts exactly the labels the best threshold accepts: the labels give no
    reason to move it, and a default carries knowledge they lack, such as look-alikes never labelled)."""
    v, y = np.asarray(list(values), dtype=float), np.asarray(list(positive), dtype=bool)
    if not y.any() or y.all():
        raise ValueError("a threshold needs labels of both kinds")
    candidates = np.unique(v[y])  # accepting from a positive's value: every distinct recall, fewest false accepts
    tp = (v[y][None, :] >= candidates[:, None]).sum(axis=1)
    fp = (v[~y][None, :] >= candidates[:, None]).sum(axis=1)
    precision, recall = tp / (tp + fp), tp / y.sum()
    feasible = precision >= TARGET_PRECISION
    if feasible.any():
        rule = "precision"
        # highest recall, then highest precision, then the higher threshold
        order = np.lexsort((candidates, precision, recall, feasible))
    else:
        rule = "youden"
        order = np.lexsort((candidates, recall - fp / (~y).sum()))
    lowest_accepted = float(candidates[order[-1]])
    below = v[v < lowest_accepted]
    if current is not None and (v >= current).tolist() == (v >= lowest_accepted).tolist():
        return current, "kept"
    return _between(float(below.max()) if below.size else None, lowest_accepted, decimals), rule


def _between(low: float | None, high: float, decimals: int) -> float:
    """A round number in (low, high], as near the middle as the rounding allows: the widest margin both ways."""
    if low is None:
        return float(np.floor(high * 10**decimals) / 10**decimals)
    middle = (low + high) / 2
    for d in (decimals, decimals + 1, decimals + 2):
        t = round(middle, d)
        if low < t <= high:
            return t
    return high


@dataclass(frozen=True)
class Fit:
    """One threshold: the labels it was fitted on, and how the current and the suggested value do on them."""

    name: str  # minsim | minblur
    current: float
    positives: int
    negatives: int
    at_current: Operating
    suggested: float | None = None  # None: too few labels
    at_suggested: Operating | None = None
    rule: str = ""  # precision | youden
    subset: str = ""  # which labels count, in words

    @property
    def needed(self) -> tuple[int, int]:
        """More accepted and more rejected labels needed before this threshold can be fitted."""
        return max(0, MIN_PER_CLASS - self.positives), max(0, MIN_PER_CLASS - self.negatives)

    def missing(self) -> str:
        more_pos, more_neg = self.needed
        if not (more_pos or more_neg):
            return ""
        parts = [f"{n} more {kind}" for n, kind in ((more_pos, "accepted"), (more_neg, "rejected")) if n]
        plural = "s" if more_pos + more_neg > 1 else ""
        return f"{self.name}: {' and '.join(parts)} label{plural} needed ({self.subset})"


@dataclass(frozen=True)
class Calibration:
    minsim: Fit
    minblur: Fit
    both_current: Operating  # QC's rule (both thresholds) on every usable label, at the current values
    both_suggested: Operating  # ... at the suggested ones (the current where a fit is missing)
    current: EffectiveThresholds | None
    labels: int  # usable labels
    left_out: dict[str, int] = field(default_factory=dict)  # judged images not used, by why
    criterion: str = CRITERION

    @property
    def fits(self) -> tuple[Fit, Fit]:
        return self.minsim, self.minblur

    @property
    def ready(self) -> bool:
        """At least one threshold could be fitted."""
        return any(f.suggested is not None for f in self.fits)

    def suggested(self) -> dict[str, float]:
        """The thresholds that could be fitted (what ``apply`` stores)."""
        return {f.name: f.suggested for f in self.fits if f.suggested is not None}

    def missing(self) -> list[str]:
        return [m for f in self.fits if (m := f.missing())]


def _identity_set(labels: list[Label], minblur: float) -> list[Label]:
    """Labels that speak to ``minsim`` when ``minblur`` is this: sharp enough faces with a score (an explicit
    identity rejection counts whatever its sharpness). A face QC never scored counts once a QC run at this
    ``minblur`` has measured it."""
    return [
        lab
        for lab in labels
        if lab.score is not None
        and (
            (lab.accepted and lab.sharpness >= minblur)
            or (not lab.accepted and (lab.cause == "identity" or (lab.cause is None and lab.sharpness >= minblur)))
        )
    ]


def _sharpness_set(labels: list[Label], minsim: float) -> list[Label]:
    """Labels that speak to ``minblur`` when ``minsim`` is this: faces that score as the persona (or, never
    scored, that the user accepted: their identity is the user's word)."""
    return [
        lab
        for lab in labels
        if (lab.accepted and lab.identity_ok(minsim))
        or (not lab.accepted and (lab.cause == "sharpness" or (lab.cause is None and lab.identity_ok(minsim))))
    ]


def _fit(name: str, subset: list[Label], current: float, words: str) -> Fit:
    values = [float(lab.score if name == "minsim" else lab.sharpness) for lab in subset]  # type: ignore[arg-type]
    positive = [lab.accepted for lab in subset]
    pos = sum(positive)
    fit = Fit(name, current, pos, len(subset) - pos, operating(values, positive, current), subset=words)
    if fit.needed != (0, 0):
        return fit
    suggested, rule = fit_threshold(values, positive, DECIMALS[name], current)
    return Fit(
        name, current, fit.positives, fit.negatives, fit.at_current, suggested, operating(values, positive, suggested),
        rule, words,
    )  # fmt: skip


def _both(labels: list[Label], minsim: float, minblur: float) -> Operating:
    passed = [lab.identity_ok(minsim) and lab.sharpness >= minblur for lab in labels]
    y = [lab.accepted for lab in labels]
    tp = sum(p and a for p, a in zip(passed, y, strict=True))
    fp = sum(p and not a for p, a in zip(passed, y, strict=True))
    fn = sum(not p and a for p, a in zip(passed, y, strict=True))
    return Operating(float("nan"), tp, fp, fn, len(labels) - tp - fp - fn)


def calibrate(
    labels: list[Label],
    current: Mapping[str, float],
    *,
    effective: EffectiveThresholds | None = None,
    left_out: Mapping[str, int] | None = None,
) -> Calibration:
    """Fit ``minsim`` and ``minblur`` on ``labels`` (pure: the same labels give the same suggestion)."""
    labels = [lab for lab in labels if lab.accepted or lab.cause != "other"]
    cur_sim, cur_blur = float(current["minsim"]), float(current["minblur"])
    sim, blur = cur_sim, cur_blur
    for _ in range(MAX_ROUNDS):
        fitted = _fit("minsim", _identity_set(labels, blur), cur_sim, "")
        next_sim = fitted.suggested if fitted.suggested is not None else sim
        fitted_blur = _fit("minblur", _sharpness_set(labels, next_sim), cur_blur, "")
        next_blur = fitted_blur.suggested if fitted_blur.suggested is not None else blur
        if (next_sim, next_blur) == (sim, blur):
            break
        sim, blur = next_sim, next_blur
    minsim = _fit("minsim", _identity_set(labels, blur), cur_sim, f"faces with sharpness >= {blur:g}")
    minblur = _fit("minblur", _sharpness_set(labels, sim), cur_blur, f"faces scoring >= minsim {sim:g}")
    # The current values are judged on the same labels as the suggested ones, so the two columns compare.
    return Calibration(
        minsim,
        minblur,
        _both(labels, cur_sim, cur_blur),
        _both(labels, minsim.suggested if minsim.suggested is not None else cur_sim,
              minblur.suggested if minblur.suggested is not None else cur_blur),
        effective,
        len(labels),
        dict(left_out or {}),
    )  # fmt: skip


def label_cause(verdict: str, cause: str | None, was_reason: str) -> str | None:
    """Why a rejection was made, as far as the labels can tell: the user's cause, else QC's reason when it
    named exactly one of identity / sharpness; ``other`` for a rejection QC made for another reason only."""
    if verdict == "accepted":
        return None
    if cause is not None:
        return cause
    kinds = reason_kinds(was_reason)
    core = kinds & {"identity", "sharpness"}
    if len(core) == 1:
        return next(iter(core))
    if core:
        return None
    return "other" if kinds else None


def workspace_labels(
    ws: Workspace, *, report: Path | None = None, cand_dir: Path | None = None, max_faces: int = QC_DEFAULTS.max_faces
) -> tuple[list[Label], dict[str, int]]:
    """The user's judgements on the latest QC's images, with their stored scores; and the judged images left
    out, by why (no face, several faces, rejected for another reason, identity not measured, not in the latest
    QC). A face QC rejected before scoring it (too blurred: the cheap checks come first) is a label for
    ``minblur`` only."""
    report = report or ws.qc_report
    folder = cand_dir or ws.synth
    rows: dict[str, QCRow] = read_report(report) if report.is_file() else {}
    judged = OverrideStore(ws.qc_overrides).current()
    labels: list[Label] = []
    left_out: dict[str, int] = {}
    used: set[str] = set()
    for name in sorted(rows):
        path = folder / name
        try:
            digest = content_digest(path)
        except OSError:
            continue
        j = judged.get(digest)
        if j is None or digest in used:
            continue
        used.add(digest)
        row = rows[name]
        cause = label_cause(j.verdict, j.cause, j.was_reason)
        why = ""
        if row.faces > max_faces:
            why = "several faces"
        elif row.faces == 0 or row.sharpness is None:
            why = "no face"
        elif cause == "other":
            why = "rejected for another reason"
        elif row.score is None and j.verdict == "rejected" and cause != "sharpness":
            # QC rejected it before measuring identity, and the user's rejection is about identity (or unsaid)
            why = "identity not measured"
        if why:
            left_out[why] = left_out.get(why, 0) + 1
            continue
        labels.append(Label(name, row.score, float(row.sharpness), j.verdict == "accepted", cause))
    gone = len(set(judged) - used)
    if gone:
        left_out["not in the latest QC"] = gone
    return labels, left_out


def suggest(
    ws: Workspace,
    explicit: Mapping[str, float | None] | None = None,
    *,
    report: Path | None = None,
    cand_dir: Path | None = None,
) -> Calibration:
    """The calibration the review page and ``influencer qc calibrate`` show: current vs suggested thresholds."""
    effective = effective_thresholds(ws, explicit)
    labels, left_out = workspace_labels(ws, report=report, cand_dir=cand_dir)
    return calibrate(labels, effective.values(), effective=effective, left_out=left_out)


def apply(ws: Workspace, calibration: Calibration, *, backend: str | None = None) -> Path:
    """Store the fitted thresholds in the persona's settings, which QC then uses unless given explicitly."""
    values = calibration.suggested()
    if not values:
        raise ValueError("nothing to apply: " + "; ".join(calibration.missing()))
    from ai_influencer.review.overrides import utc_now

    record: dict[str, Any] = {
        "calibrated_at": utc_now(),
        "criterion": calibration.criterion,
        "labels": {f.name: {"accepted": f.positives, "rejected": f.negatives} for f in calibration.fits},
    }
    if backend:
        record["backend"] = backend
    return store_thresholds(ws, values, record)
