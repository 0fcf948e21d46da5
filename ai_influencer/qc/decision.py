"""QC step 2: the verdicts, a pure function of the reference analyses, the candidate analyses and the thresholds.

``decide`` sorts its input, so the verdicts do not depend on the order images arrived in (a streamed run
and a batch run agree). Per candidate (docs/identity-calibration.md has the measurements):

* identity: the calibrated score against the centroid of the references must
  reach ``minsim`` *and* the references must agree: each one on its own (both
  of 2, two thirds and at least 2 of more) must score ``minsim - 0.15``. A
  centroid of two references sits between them; the per-reference floor keeps
  a face that resembles only one of them out.
* impostor margin: among the other candidates, the faces clearly someone
  else (sharp, one face, centroid score below ``minsim - impostor_gap``, not a
  copy of this picture) are the nearest impostors. A candidate that is closer
  to such a face than to the reference centroid is rejected: when the pool
  contains a look-alike, all of its photos fail together instead of the
  closest one slipping through. The gap keeps the persona's own near misses
  (a soft still, a profile just under ``minsim``) from vetoing the persona's
  other photos, which are naturally closer to each other than to references.
* copies of a reference: identical pixels, a pHash within 4 bits of the
  reference or of its mirror image, or within ``dup_hash_distance`` bits with
  faces scoring >= ``dup_min_score`` (the duplicate rule below, against the
  references): "copy of reference X". A generator that echoes its input is
  not making training images.
* sharpness (``minblur``), face count (``max_faces``).
* the checks that need no face descriptor (a copy of a reference, too many
  faces, a blurred face; ``qc.analysis.Gate``) are judged on analyses without
  one: a descriptor an analysis happens to carry for such an image is set
  aside, so a verdict never depends on what an earlier run measured.
* duplicates: images with one face (any identity verdict) with identical pixels, or
  perceptual hashes within 4 bits (one picture resized or re-encoded), or
  within ``dup_hash_distance`` bits with faces scoring >= ``dup_min_score``
  against each other, form a group (transitively). The best copy is chosen by
  a fixed order: more real detail (face width over blur radius, 30 %
  tolerance), larger face (20 %: one step of the detector's pyramid), less compression (lossless, then the JPEG
  quality), sharper (10 %), larger file (2 %), name; the others are rejected
  as its duplicates. Groups form before sharpness and identity are judged,
  so a downscaled copy (sharper per pixel, or scoring a little higher on a
  smaller face) never stands in for an original the gate rejected. The
  report says which copy was kept and why. Known limit: a same-size re-encode
  at a *higher* JPEG quality than its original looks better by every measure
  here and wins.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import replace as _replace
from typing import Any

import numpy as np

from ai_influencer.options.qc import QC_DEFAULTS, QCOptions
from ai_influencer.qc.analysis import (
    SAME_PICTURE_BITS,
    Analysis,
    Gate,
    copy_of_reference,
    hash_bits,
    quality_label,
    skip_reason,
)
from ai_influencer.qc.report import QCRow
from ai_influencer.vision.faces import AGREEMENT_SLACK, Scorer

__all__ = ["SAME_PICTURE_BITS", "QCThresholds", "decide", "reference_centroid", "references_needed"]
DETAIL_TOLERANCE = 1.3  # copies within this factor of the most detailed one count as equally detailed
# dlib's boxes come in 6/5 pyramid steps: copies of one picture whose boxes are one step apart (5/6) are the
# detector's rounding, not a larger face (QC's faster scan can land one step off the full scan's box)
FACE_PX_TOLERANCE = 0.8
SHARPNESS_TOLERANCE = 0.9  # JPEG artefacts add a little "sharpness": a re-encode must not win on that
BYTES_TOLERANCE = 0.98
# dlib: centroid distance > 0.553. Same-person photos of the calibration set score >= 0.325, a held-out look-alike
# pair 0.20-0.30 (docs/identity-calibration.md section 2): a persona photo just under minsim is not "someone else".
IMPOSTOR_GAP = 0.10


@dataclass(frozen=True)
class QCThresholds:
    """Every knob of the decision, checked when it is made (``validate``: the error a user sees for a bad value).

    The user's three (``minsim``, ``minblur``, ``max_faces``) default to the QC options' (``options.qc``);
    ``from_options`` makes the thresholds of a run's options, once.
    """

    minsim: float = QC_DEFAULTS.minsim
    minblur: float = QC_DEFAULTS.minblur
    max_faces: int = QC_DEFAULTS.max_faces
    agreement_slack: float = AGREEMENT_SLACK
    min_margin: float | None = 0.0  # None: report the nearest impostor, do not decide on it
    impostor_gap: float = IMPOSTOR_GAP  # an impostor scores below minsim - this (clearly someone else)
    dup_hash_distance: int = 10
    dup_min_score: float = 0.75

    def __post_init__(self) -> None:
        self.validate()

    @classmethod
    def from_options(cls, options: QCOptions, **knobs: Any) -> QCThresholds:
        """The thresholds of a run's QC options (``knobs``: the decision's other settings)."""
        return cls(minsim=options.minsim, minblur=options.minblur, max_faces=options.max_faces, **knobs)

    def validate(self) -> QCThresholds:
        if not (isinstance(self.minsim, int | float) and 0.0 <= self.minsim <= 1.0):
            hint = (
                f" (a fraction, not a percent: did you mean {self.minsim / 100:g}?)" if 1 < self.minsim <= 100 else ""
            )
            raise ValueError(f"minsim must be between 0 and 1, got {self.minsim}{hint}")
        if not (isinstance(self.minblur, int | float) and self.minblur >= 0 and math.isfinite(self.minblur)):
            raise ValueError(
                f"minblur must be a number >= 0 (80 = the manual's sharp/blurred line), got {self.minblur}"
            )
        if self.max_faces < 1:
            raise ValueError(f"max_faces must be >= 1, got {self.max_faces}")
        if not 0 <= self.dup_hash_distance <= 64:
            raise ValueError(f"dup_hash_distance must be 0..64 bits, got {self.dup_hash_distance}")
        if not (isinstance(self.impostor_gap, int | float) and 0.0 <= self.impostor_gap <= 1.0):
            raise ValueError(f"impostor_gap must be between 0 and 1, got {self.impostor_gap}")
        if not 0.0 <= self.dup_min_score <= 1.0:
            raise ValueError(f"dup_min_score must be between 0 and 1, got {self.dup_min_score}")
        return self

    def gate(self, refs: list[Analysis]) -> Gate:
        """The checks an image can fail before its face descriptor is computed (``qc.analysis.Gate``)."""
        return Gate.build(self.minblur, self.max_faces, refs)


def reference_centroid(engine: Scorer, refs: list[Analysis]) -> tuple[np.ndarray, int]:
    embeddings = [a.embedding for a in refs if a.embedding is not None]
    if not embeddings:
        problems = "; ".join(f"{a.path.name}: {a.error or 'no face'}" for a in refs) or "folder is empty"
        raise ValueError(f"no usable reference face ({problems})")
    return engine.centroid(embeddings), len(embeddings)


def references_needed(n: int) -> int:
    """How many references must agree on their own: all of one or two, two thirds (at least two) of more."""
    return n if n <= 2 else max(2, math.ceil(2 * n / 3))


@dataclass
class _Identity:
    score: float
    ref_scores: list[float]
    agree: int
    ok: bool


@dataclass(frozen=True)
class _References:
    """What every candidate is measured against: the centroid, each reference alone, and how many must agree."""

    centroid: np.ndarray
    embeddings: list[np.ndarray]
    count: int  # references with a usable face
    need: int
    floor: float  # the score each agreeing reference must reach on its own

    @classmethod
    def build(cls, refs: list[Analysis], scorer: Scorer, th: QCThresholds) -> _References:
        refs = sorted(refs, key=lambda a: a.path.name)
        centroid, count = reference_centroid(scorer, refs)
        embeddings = [a.embedding for a in refs if a.embedding is not None]
        return cls(centroid, embeddings, count, references_needed(count), th.minsim - th.agreement_slack)

    def identity(self, scorer: Scorer, embedding: np.ndarray, th: QCThresholds) -> _Identity:
        score = scorer.identity_score(embedding, self.centroid)
        per_ref = [scorer.identity_score(embedding, r) for r in self.embeddings]
        agree = sum(s >= self.floor for s in per_ref)
        return _Identity(score, per_ref, agree, score >= th.minsim and agree >= self.need)


def decide(
    refs: list[Analysis],
    candidates: list[Analysis],
    scorer: Scorer,
    thresholds: QCThresholds,
    *,
    legacy: bool = False,
) -> tuple[dict[str, QCRow], int]:
    """Verdicts by file name, and how many references had a usable face. Pure and order-independent.

    ``legacy``: release 0.1's rules (no reference-copy check, descriptors used wherever present), for
    ``bench/qc.py``'s baseline."""
    th = thresholds
    references = _References.build(refs, scorer, th)
    cands = sorted(candidates, key=lambda a: a.path.name)
    copies: dict[str, str] = {}
    if not legacy:
        gate = th.gate(refs)
        cands = [_without_descriptor(a, why) if (why := skip_reason(a, gate)) else a for a in cands]
        copies = _reference_copies(cands, refs, gate, scorer, th)
    ident = {a.path.name: references.identity(scorer, a.embedding, th) for a in cands if a.embedding is not None}
    nearest = _nearest_impostors(cands, _impostors(cands, ident, th), scorer, th)
    rows = {
        a.path.name: _judge(a, ident.get(a.path.name), nearest.get(a.path.name), references, th, copies) for a in cands
    }
    # copies are grouped over every one-face picture, whatever its verdict: the best copy speaks for them all
    single = [a for a in cands if a.box is not None and not a.error and a.faces <= th.max_faces]
    if legacy:
        single = [a for a in single if a.embedding is not None]
    _reject_copies(rows, single, scorer, th)
    return rows, references.count


def _without_descriptor(a: Analysis, why: str) -> Analysis:
    return a if a.embedding is None and a.skipped == why else _replace(a, embedding=None, skipped=why)


def _reference_copies(
    cands: list[Analysis], refs: list[Analysis], gate: Gate, scorer: Scorer, th: QCThresholds
) -> dict[str, str]:
    """Candidates that copy a reference, and which one: by their hashes (``qc.analysis.copy_of_reference``), or
    by the duplicate rule (pHash, or its mirror, within ``dup_hash_distance`` and faces >= ``dup_min_score``)."""
    out: dict[str, str] = {}
    faced_refs = sorted((r for r in refs if r.embedding is not None), key=lambda r: r.path.name)
    for a in cands:
        if a.error:
            continue
        if name := copy_of_reference(a, gate.references):
            out[a.path.name] = name
            continue
        if a.embedding is None or not faced_refs:
            continue
        for r in faced_refs:
            bits = min(hash_bits(a.phash, r.phash), hash_bits(a.phash, r.phash_mirror))
            if bits <= th.dup_hash_distance and scorer.identity_score(a.embedding, r.embedding) >= th.dup_min_score:
                out[a.path.name] = r.path.name
                break
    return out


def _impostors(cands: list[Analysis], ident: dict[str, _Identity], th: QCThresholds) -> list[Analysis]:
    """Faces clearly someone else on their own evidence: sharp enough to trust, one person, scoring below
    ``minsim - impostor_gap`` (a narrow miss may be the persona: it must not veto the persona's other photos)."""
    clearly_not = th.minsim - th.impostor_gap
    return [
        a
        for a in cands
        if a.path.name in ident
        and ident[a.path.name].score < clearly_not
        and a.sharpness >= th.minblur
        and a.faces <= th.max_faces
    ]


def _judge(
    a: Analysis,
    idn: _Identity | None,
    impostor: tuple[Analysis, float] | None,
    references: _References,
    th: QCThresholds,
    copies: dict[str, str] | None = None,
) -> QCRow:
    """One candidate's row before duplicates are grouped."""
    name = a.path.name
    if a.error:
        return QCRow(name, 0, None, None, "", "error", a.error)
    if a.box is None and a.embedding is None:
        return QCRow(name, a.faces, None, None, "", "rejected", "no face detected")
    copied = (copies or {}).get(name, "")
    row = QCRow(
        name,
        a.faces,
        None if idn is None else round(idn.score, 4),
        round(a.sharpness, 1),
        "",
        "accepted",
        "",
        ref_scores="" if idn is None else " ".join(f"{s:.3f}" for s in idn.ref_scores),
        face_px=a.face_px,
        compression=quality_label(a),
    )
    nearest, nearest_score = impostor if impostor is not None else (None, -1.0)
    if nearest is not None and idn is not None:
        row.nearest_impostor = nearest.path.name
        row.impostor_score = round(nearest_score, 4)
        row.margin = round(idn.score - nearest_score, 4)
    reasons = []
    if copied:
        reasons.append(f"copy of reference {copied}")
    elif idn is not None and (why := _identity_reason(idn, row, nearest_score, references, th)):
        reasons.append(why)
    if a.faces > th.max_faces:
        reasons.append(f"faces: {a.faces} > max {th.max_faces}")
    if a.sharpness < th.minblur:
        reasons.append(f"sharpness: face {a.sharpness:.1f} < minblur {th.minblur:g}")
    if not reasons and idn is None:  # cannot happen: a face without a descriptor failed a cheap check
        reasons.append("identity: not measured")
    row.verdict, row.reason = ("rejected", "; ".join(reasons)) if reasons else ("accepted", "")
    return row


def _phashes(analyses: list[Analysis]) -> np.ndarray:
    return np.array([int(a.phash or "0", 16) for a in analyses], dtype=np.uint64)


def _hash_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamming distances of two vectors of 64-bit pHashes, every pair (a ``len(a) x len(b)`` matrix)."""
    return np.bitwise_count(a[:, None] ^ b[None, :])


def _nearest_impostors(
    cands: list[Analysis], impostors: list[Analysis], scorer: Scorer, th: QCThresholds
) -> dict[str, tuple[Analysis, float]]:
    """Per candidate with a face, the judged-someone-else face closest to it and its score (none: absent).

    Another copy of the candidate's own picture (pHash within ``dup_hash_distance``) is not another
    person. All pairs in two matrix operations; ties go to the first impostor by name, as before.
    """
    faced = [a for a in cands if a.embedding is not None]
    if not faced or not impostors:
        return {}
    scores = scorer.identity_scores(np.stack([a.embedding for a in faced]), np.stack([d.embedding for d in impostors]))
    skip = _hash_distances(_phashes(faced), _phashes(impostors)) <= th.dup_hash_distance
    position = {id(d): j for j, d in enumerate(impostors)}
    for i, a in enumerate(faced):
        if id(a) in position:
            skip[i, position[id(a)]] = True
    scores = np.where(skip, -np.inf, scores)
    best = np.argmax(scores, axis=1)
    return {
        a.path.name: (impostors[int(j)], float(scores[i, j]))
        for i, (a, j) in enumerate(zip(faced, best, strict=True))
        if np.isfinite(scores[i, j])
    }


def _identity_reason(
    idn: _Identity, row: QCRow, nearest_score: float, references: _References, th: QCThresholds
) -> str:
    """Why the face is not the persona's (centroid score, agreement of the references, impostor margin); or ""."""
    if idn.score < th.minsim:
        return f"identity: {idn.score:.3f} < minsim {th.minsim:g}"
    if idn.agree < references.need:
        return (
            f"identity: only {idn.agree} of {references.count} references score >= {references.floor:.2f} "
            f"({row.ref_scores}); need {references.need}"
        )
    if th.min_margin is not None and row.margin is not None and row.margin < th.min_margin:
        return (
            f"impostor: closer to {row.nearest_impostor} ({nearest_score:.3f}, judged another person) "
            f"than to the references ({idn.score:.3f})"
        )
    return ""


def _reject_copies(rows: dict[str, QCRow], single: list[Analysis], scorer: Scorer, th: QCThresholds) -> None:
    """Every copy but the best of each group is rejected as its duplicate, keeping its own reasons after.

    Copies are grouped before sharpness and identity are judged: the best copy speaks for the group, so a
    downscaled copy (sharper per pixel, or scoring a little higher) never replaces an original the gate
    rejected.
    """
    for group in _duplicate_groups(single, scorer, th):
        keep, why = _best_copy(group)
        best = rows[keep.path.name]
        for a in group:
            if a is keep:
                continue
            r = rows[a.path.name]
            kind = "exact copy" if a.pixel_hash == keep.pixel_hash else "near-duplicate"
            outcome = "kept that one" if best.verdict == "accepted" else "the better copy, itself rejected"
            dup = f"duplicate: {kind} of {keep.path.name}, {outcome} ({why[a.path.name]})"
            r.verdict, r.duplicate_of = "rejected", keep.path.name
            r.reason = "; ".join([dup] + ([r.reason] if r.reason else []))


def _duplicate_groups(single: list[Analysis], scorer: Scorer, th: QCThresholds) -> list[list[Analysis]]:
    """Connected groups of copies (union-find over every pair: no first-come order; input sorted by name).

    A pair is one picture when its pixels are identical, its pHashes are within ``SAME_PICTURE_BITS``,
    or they are within ``dup_hash_distance`` and the faces score ``dup_min_score`` against each other.
    Every pair is tested with matrix operations (one Python call per pair made this quadratic).
    """
    n = len(single)
    if n < 2:
        return []
    bits = _hash_distances(_phashes(single), _phashes(single))
    codes = {h: i for i, h in enumerate(sorted({a.pixel_hash for a in single}))}
    pixels = np.array([codes[a.pixel_hash] for a in single])
    same = (pixels[:, None] == pixels[None, :]) | (bits <= min(SAME_PICTURE_BITS, th.dup_hash_distance))
    described = np.array([a.embedding is not None for a in single])
    close = (bits <= th.dup_hash_distance) & ~same & described[:, None] & described[None, :]
    if close.any():
        # a face without a descriptor (a cheap check rejected it) joins a group by its hashes only
        dim = next(len(a.embedding) for a in single if a.embedding is not None)
        emb = np.stack([a.embedding if a.embedding is not None else np.zeros(dim) for a in single])
        same |= close & (scorer.identity_scores(emb, emb) >= th.dup_min_score)
    parent = list(range(n))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in np.argwhere(np.triu(same, k=1)):
        parent[root(int(j))] = root(int(i))
    groups: dict[int, list[Analysis]] = {}
    for i, a in enumerate(single):
        groups.setdefault(root(i), []).append(a)
    return [g for g in groups.values() if len(g) > 1]


def _best_copy(group: list[Analysis]) -> tuple[Analysis, dict[str, str]]:
    """The copy to keep and, per other copy, why it lost: a fixed order of tests, so arrival order cannot matter."""

    def most(key: Callable[[Analysis], float], factor: float = 1.0) -> Callable[[list[Analysis]], list[Analysis]]:
        return lambda pool: [a for a in pool if key(a) >= factor * max(key(b) for b in pool)]

    stages: list[tuple[Callable[[list[Analysis]], list[Analysis]], Callable[[Analysis, Analysis], str]]] = [
        (
            most(lambda a: a.detail, 1 / DETAIL_TOLERANCE),
            lambda a, w: f"more face detail ({w.detail:.0f} vs {a.detail:.0f})",
        ),
        (most(lambda a: a.face_px, FACE_PX_TOLERANCE), lambda a, w: f"larger face ({w.face_px} vs {a.face_px} px)"),
        (most(lambda a: a.compression), lambda a, w: f"less compressed ({quality_label(w)} vs {quality_label(a)})"),
        (
            most(lambda a: a.sharpness, SHARPNESS_TOLERANCE),
            lambda a, w: f"sharper ({w.sharpness:.0f} vs {a.sharpness:.0f})",
        ),
        (most(lambda a: a.nbytes, BYTES_TOLERANCE), lambda a, w: f"larger file ({w.nbytes} vs {a.nbytes} bytes)"),
        (lambda pool: pool[:1], lambda a, w: "identical copy; the first by name is kept"),
    ]
    pool = sorted(group, key=lambda a: a.path.name)  # the last resort is the name: a fixed, visible order
    lost: list[tuple[Analysis, Callable[[Analysis, Analysis], str]]] = []
    for select, explain in stages:
        kept = select(pool)
        kept_names = {a.path.name for a in kept}
        lost += [(a, explain) for a in pool if a.path.name not in kept_names]
        pool = kept
    winner = pool[0]
    return winner, {a.path.name: explain(a, winner) for a, explain in lost}
