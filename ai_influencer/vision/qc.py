"""Identity QC (manual step 4: ``--minsim --minblur``).

Two separate steps, so a streamed run (images checked as they arrive) and a
batch run reach the same verdicts:

1. ``analyze``: everything measured on one image alone (faces, the largest
   face's embedding, sharpness, detail, perceptual and pixel hashes, file
   compression). Runs in worker processes, each holding its own face engine.
2. ``decide``: a pure function of the reference analyses, the candidate
   analyses and the thresholds. It sorts its input, so the verdicts do not
   depend on the order images arrived in.

The decision, per candidate (docs/identity-calibration.md has the measurements):

* identity: the calibrated score against the centroid of the references must
  reach ``minsim`` *and* the references must agree: each one on its own (both
  of 2, two thirds and at least 2 of more) must score ``minsim - 0.15``. A
  centroid of two references sits between them; the per-reference floor keeps
  a face that resembles only one of them out.
* impostor margin: among the other candidates, the faces already judged to be
  someone else (sharp, identity failed, not a copy of this picture) are the
  nearest impostors. A candidate that is closer to such a face than to the
  reference centroid is rejected: when the pool contains a look-alike, all of
  its photos fail together instead of the closest one slipping through.
* sharpness (``minblur``), face count (``max_faces``).
* duplicates: images of the persona alone with identical pixels, or
  perceptual hashes within 4 bits (one picture resized or re-encoded), or
  within ``dup_hash_distance`` bits with faces scoring >= ``dup_min_score``
  against each other, form a group (transitively). The best copy is chosen by
  a fixed order: more real detail (face width over blur radius, 30 %
  tolerance), larger face (10 %), less compression (lossless, then the JPEG
  quality), sharper (10 %), larger file (2 %), name; the others are rejected
  as its duplicates. Groups form before sharpness is judged, so a downscaled
  copy (sharper per pixel) never stands in for an original too blurred to
  keep. The report says which copy was kept and why. Known limit: a same-size
  re-encode at a *higher* JPEG quality than its original looks better by
  every measure here and wins.

``qc_report.csv`` keeps its first seven columns (what analytics and the hub
read) and adds the evidence: score per reference, nearest impostor and its
score, the margin, face size and compression.
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
import os
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import imagehash
import numpy as np
from PIL import Image

from ai_influencer.dataset.contact_sheet import Tile, render_contact_sheet
from ai_influencer.dataset.manifest import sidecar_path
from ai_influencer.dataset.workspace import REPORT_NAME
from ai_influencer.io import atomic_write_bytes, atomic_write_text
from ai_influencer.vision.faces import (
    AGREEMENT_SLACK,
    MINSIM_DEFAULT,
    FaceEngine,
    Scorer,
    create_face_engine,
    largest,
    resolve_backend,
    scorer_for,
)
from ai_influencer.vision.image_io import DEFAULT_MAX_PIXELS, BadImageError, list_images, load_rgb
from ai_influencer.vision.quality import compression_quality, face_detail, face_sharpness

SHEET_NAME = "contact_sheet.png"  # in a reports/ subfolder so no stage ever trains on it
REPORTS_DIR = "reports"
THUMB = 160
LEGACY_FIELDS = ("file", "faces", "score", "sharpness", "duplicate_of", "verdict", "reason")
EVIDENCE_FIELDS = ("ref_scores", "nearest_impostor", "impostor_score", "margin", "face_px", "compression")
REPORT_FIELDS = LEGACY_FIELDS + EVIDENCE_FIELDS
SAME_PICTURE_BITS = 4  # pHash this close: one picture resized or re-encoded, even when a tiny face embeds badly
DETAIL_TOLERANCE = 1.3  # copies within this factor of the most detailed one count as equally detailed
FACE_PX_TOLERANCE = 0.9
SHARPNESS_TOLERANCE = 0.9  # JPEG artefacts add a little "sharpness": a re-encode must not win on that
BYTES_TOLERANCE = 0.98

ProgressCallback = Callable[[int, int, str], None]  # (done, total, file name)


@dataclass(frozen=True)
class QCThresholds:
    """Every knob of the decision; ``validate`` gives the error a user sees for a bad value."""

    minsim: float = MINSIM_DEFAULT
    minblur: float = 80.0
    max_faces: int = 1
    agreement_slack: float = AGREEMENT_SLACK
    min_margin: float | None = 0.0  # None: report the nearest impostor, do not decide on it
    dup_hash_distance: int = 10
    dup_min_score: float = 0.75

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
        if not 0.0 <= self.dup_min_score <= 1.0:
            raise ValueError(f"dup_min_score must be between 0 and 1, got {self.dup_min_score}")
        return self


@dataclass(frozen=True)
class EngineSpec:
    """Picklable recipe for building a face engine inside a worker process."""

    backend: str = "dlib"
    insightface_root: str = "models/insightface"
    providers: tuple[str, ...] = ("CPUExecutionProvider",)

    @classmethod
    def from_settings(cls, settings: object, backend: str | None = None) -> EngineSpec:
        """The one way to name the face engine a stage uses: an explicit backend, else the settings'."""
        return cls(
            backend or settings.face_backend,  # type: ignore[attr-defined]
            str(settings.insightface_root),  # type: ignore[attr-defined]
            tuple(settings.onnx_providers),  # type: ignore[attr-defined]
        )

    def resolved_backend(self) -> str:
        return resolve_backend(self.backend)

    def build(self) -> FaceEngine:
        return create_face_engine(
            self.backend, insightface_root=Path(self.insightface_root), providers=list(self.providers)
        )


@dataclass
class Analysis:
    """What one image says about itself; no field depends on any other image."""

    path: Path
    faces: int = 0
    embedding: np.ndarray | None = None
    sharpness: float = 0.0
    phash: str = ""
    error: str = ""
    thumbnail: bytes = b""  # small JPEG for the contact sheet, made while the image is decoded anyway
    box: tuple[int, int, int, int] | None = None  # the largest face (x0, y0, x1, y1)
    face_px: int = 0  # its width in source pixels
    detail: float = 0.0  # face width over its blur radius (see quality.face_detail)
    pixel_hash: str = ""  # of the decoded pixels: exact copies in any container
    compression: int = 0  # 100 lossless, else the estimated JPEG quality
    fmt: str = ""
    nbytes: int = 0


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


@dataclass
class QCResult:
    rows: list[QCRow]
    report: Path
    contact_sheet: Path
    accepted: list[Path] = field(default_factory=list)
    references_used: int = 0

    @property
    def counts(self) -> dict[str, int]:
        out = {"accepted": 0, "rejected": 0, "error": 0}
        for r in self.rows:
            out[r.verdict] += 1
        return out


def _thumbnail(rgb: np.ndarray, side: int = THUMB) -> Image.Image:
    im = Image.fromarray(rgb)
    im.thumbnail((side, side), Image.Resampling.BILINEAR)
    return im


def _jpeg(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def analyze(engine: FaceEngine, path: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> Analysis:
    try:
        rgb = load_rgb(path, max_pixels=max_pixels)
        nbytes = path.stat().st_size
    except BadImageError as exc:
        return Analysis(path, error=exc.reason)
    faces = engine.detect(rgb)
    face = largest(faces)
    thumb = _thumbnail(rgb)
    quality, fmt = compression_quality(path)
    digest = hashlib.sha1(rgb.tobytes(), usedforsecurity=False)
    digest.update(repr(rgb.shape).encode())
    # phash shrinks to 32x32 anyway: hashing the thumbnail gives the same bits for a fraction of the cost.
    result = Analysis(
        path,
        faces=len(faces),
        phash=str(imagehash.phash(thumb)),
        thumbnail=_jpeg(thumb),
        pixel_hash=digest.hexdigest(),
        compression=quality,
        fmt=fmt,
        nbytes=nbytes,
    )
    if face is not None:
        result.embedding = face.embedding
        result.sharpness = face_sharpness(rgb, face.box)
        result.detail = face_detail(rgb, face.box)
        result.box = face.box
        result.face_px = face.box[2] - face.box[0]
    return result


_worker_engine: FaceEngine | None = None


def _init_worker(spec: EngineSpec) -> None:
    global _worker_engine
    _worker_engine = spec.build()


def _analyze_in_worker(args: tuple[Path, int]) -> Analysis:
    assert _worker_engine is not None
    return analyze(_worker_engine, *args)


def analyze_many(
    paths: list[Path],
    *,
    engine: FaceEngine | None,
    spec: EngineSpec | None,
    workers: int,
    max_pixels: int,
    on_progress: ProgressCallback | None = None,
) -> list[Analysis]:
    """Analyses in ``paths`` order; ``on_progress`` after each one (in the calling process)."""
    out: list[Analysis] = []

    def collect(results: Iterable[Analysis]) -> list[Analysis]:
        for a in results:
            out.append(a)
            if on_progress is not None:
                on_progress(len(out), len(paths), a.path.name)
        return out

    if workers <= 1 or len(paths) < 4 or spec is None:
        eng = engine or (spec or EngineSpec()).build()
        return collect(analyze(eng, p, max_pixels) for p in paths)
    workers = min(workers, len(paths))
    with ProcessPoolExecutor(max_workers=workers, initializer=_init_worker, initargs=(spec,)) as pool:
        return collect(pool.map(_analyze_in_worker, [(p, max_pixels) for p in paths], chunksize=1))


def reference_centroid(engine: Scorer, refs: list[Analysis]) -> tuple[np.ndarray, int]:
    embeddings = [a.embedding for a in refs if a.embedding is not None]
    if not embeddings:
        problems = "; ".join(f"{a.path.name}: {a.error or 'no face'}" for a in refs) or "folder is empty"
        raise ValueError(f"no usable reference face ({problems})")
    return engine.centroid(embeddings), len(embeddings)


def references_needed(n: int) -> int:
    """How many references must agree on their own: all of one or two, two thirds (at least two) of more."""
    return n if n <= 2 else max(2, math.ceil(2 * n / 3))


def _hash_distance(a: str, b: str) -> int:
    """Hamming distance of two 64-bit pHashes in hex (what imagehash's ``-`` gives, without building objects:
    duplicate grouping compares every pair)."""
    return (int(a, 16) ^ int(b, 16)).bit_count()


@dataclass
class _Identity:
    score: float
    ref_scores: list[float]
    agree: int
    ok: bool


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
        (most(lambda a: a.compression), lambda a, w: f"less compressed ({_quality_label(w)} vs {_quality_label(a)})"),
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


def _quality_label(a: Analysis) -> str:
    if not a.fmt:
        return ""
    return f"{a.fmt} lossless" if a.compression >= 100 and a.fmt != "JPEG" else f"{a.fmt} q{a.compression}"


def decide(
    refs: list[Analysis], candidates: list[Analysis], scorer: Scorer, thresholds: QCThresholds
) -> tuple[dict[str, QCRow], int]:
    """Verdicts by file name, and how many references had a usable face. Pure and order-independent."""
    th = thresholds.validate()
    refs = sorted(refs, key=lambda a: a.path.name)
    cands = sorted(candidates, key=lambda a: a.path.name)
    centroid, n_refs = reference_centroid(scorer, refs)
    ref_embs = [a.embedding for a in refs if a.embedding is not None]
    need = references_needed(n_refs)
    floor = th.minsim - th.agreement_slack

    ident: dict[str, _Identity] = {}
    for a in cands:
        if a.embedding is None:
            continue
        score = scorer.identity_score(a.embedding, centroid)
        per_ref = [scorer.identity_score(a.embedding, r) for r in ref_embs]
        agree = sum(s >= floor for s in per_ref)
        ident[a.path.name] = _Identity(score, per_ref, agree, score >= th.minsim and agree >= need)

    # Faces judged to be someone else on their own evidence: sharp enough to trust, one person, identity failed.
    impostors = [
        a
        for a in cands
        if a.path.name in ident and not ident[a.path.name].ok and a.sharpness >= th.minblur and a.faces <= th.max_faces
    ]

    rows: dict[str, QCRow] = {}
    persona: list[Analysis] = []
    for a in cands:
        name = a.path.name
        if a.error:
            rows[name] = QCRow(name, 0, None, None, "", "error", a.error)
            continue
        if a.embedding is None:
            rows[name] = QCRow(name, a.faces, None, None, "", "rejected", "no face detected")
            continue
        idn = ident[name]
        row = QCRow(
            name,
            a.faces,
            round(idn.score, 4),
            round(a.sharpness, 1),
            "",
            "accepted",
            "",
            ref_scores=" ".join(f"{s:.3f}" for s in idn.ref_scores),
            face_px=a.face_px,
            compression=_quality_label(a),
        )
        nearest, nearest_score = None, -1.0
        for d in impostors:
            if d is a or _hash_distance(a.phash, d.phash) <= th.dup_hash_distance:
                continue  # another copy of this very picture is not another person
            assert d.embedding is not None
            s = scorer.identity_score(a.embedding, d.embedding)
            if s > nearest_score:
                nearest, nearest_score = d, s
        if nearest is not None:
            row.nearest_impostor = nearest.path.name
            row.impostor_score = round(nearest_score, 4)
            row.margin = round(idn.score - nearest_score, 4)
        reasons = []
        if idn.score < th.minsim:
            reasons.append(f"identity: {idn.score:.3f} < minsim {th.minsim:g}")
        elif idn.agree < need:
            reasons.append(
                f"identity: only {idn.agree} of {n_refs} references score >= {floor:.2f} "
                f"({row.ref_scores}); need {need}"
            )
        elif th.min_margin is not None and row.margin is not None and row.margin < th.min_margin:
            reasons.append(
                f"impostor: closer to {row.nearest_impostor} ({nearest_score:.3f}, judged another person) "
                f"than to the references ({idn.score:.3f})"
            )
        if a.faces > th.max_faces:
            reasons.append(f"faces: {a.faces} > max {th.max_faces}")
        if not reasons:
            persona.append(a)  # the persona alone in the picture: a candidate for its group of copies
        if a.sharpness < th.minblur:
            reasons.append(f"sharpness: face {a.sharpness:.1f} < minblur {th.minblur:g}")
        row.verdict, row.reason = ("rejected", "; ".join(reasons)) if reasons else ("accepted", "")
        rows[name] = row

    # Copies are grouped before sharpness is judged: the best copy speaks for the group, so a downscaled
    # copy (sharper per pixel) never replaces an original that is too blurred to keep.
    for group in _duplicate_groups(persona, scorer, th):
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
    return rows, n_refs


def _duplicate_groups(passing: list[Analysis], scorer: Scorer, th: QCThresholds) -> list[list[Analysis]]:
    """Connected groups of copies (union-find over every pair: no first-come order; input sorted by name)."""
    parent = list(range(len(passing)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, a in enumerate(passing):
        for j in range(i + 1, len(passing)):
            b = passing[j]
            bits = _hash_distance(a.phash, b.phash)
            same = a.pixel_hash == b.pixel_hash or bits <= min(SAME_PICTURE_BITS, th.dup_hash_distance)
            if not same and bits <= th.dup_hash_distance:
                assert a.embedding is not None and b.embedding is not None
                same = scorer.identity_score(a.embedding, b.embedding) >= th.dup_min_score
            if same:
                parent[root(j)] = root(i)
    groups: dict[int, list[Analysis]] = {}
    for i, a in enumerate(passing):
        groups.setdefault(root(i), []).append(a)
    return [g for g in groups.values() if len(g) > 1]


def run_qc(
    ref_dir: Path,
    cand_dir: Path,
    out_dir: Path,
    *,
    engine: FaceEngine | None = None,
    spec: EngineSpec | None = None,
    minsim: float = MINSIM_DEFAULT,
    minblur: float = 80.0,
    max_faces: int = 1,
    dup_hash_distance: int = 10,
    dup_min_score: float = 0.75,
    min_margin: float | None = 0.0,
    workers: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    on_progress: ProgressCallback | None = None,
) -> QCResult:
    """Score, filter and dedupe ``cand_dir`` against ``ref_dir``; copy the approved to ``out_dir``."""
    th = QCThresholds(
        minsim=minsim,
        minblur=minblur,
        max_faces=max_faces,
        min_margin=min_margin,
        dup_hash_distance=dup_hash_distance,
        dup_min_score=dup_min_score,
    ).validate()  # before any work: a typo like --minsim 34 fails at once
    if engine is None and spec is None:
        spec = EngineSpec()
    if engine is not None:
        spec = None  # an engine object given by the caller is used in-process
    # Scoring is pure numpy: the parent needs no loaded models when workers do the detection.
    scorer: Scorer = engine or scorer_for(spec.resolved_backend() if spec else "dlib")
    workers = os.cpu_count() or 1 if workers is None else workers
    ref_paths, cand_paths = list_images(ref_dir), list_images(cand_dir)
    # References and candidates go through one pool: no serial phase before the workers start.
    everything = analyze_many(
        ref_paths + cand_paths,
        engine=engine,
        spec=spec,
        workers=workers,
        max_pixels=max_pixels,
        on_progress=on_progress,
    )
    refs, analyses = everything[: len(ref_paths)], everything[len(ref_paths) :]
    verdicts, n_refs = decide(refs, analyses, scorer, th)

    out_dir.mkdir(parents=True, exist_ok=True)
    accepted = sorted(p for p in cand_paths if verdicts[p.name].verdict == "accepted")
    keep_names = {p.name for p in accepted} | {sidecar_path(out_dir, p.stem).name for p in accepted}
    for stale in out_dir.iterdir():  # out_dir mirrors the current verdicts; sources stay untouched
        managed = stale.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp", ".json")
        if managed and stale.is_file() and stale.name not in keep_names | {REPORT_NAME}:
            stale.unlink()
    for src in accepted:
        atomic_write_bytes(out_dir / src.name, src.read_bytes())
        side = sidecar_path(src.parent, src.stem)
        if side.is_file():
            atomic_write_bytes(out_dir / side.name, side.read_bytes())

    ordered = [verdicts[p.name] for p in cand_paths]
    report = write_report(ordered, out_dir / REPORT_NAME)
    thumbs = {a.path.name: a.thumbnail for a in analyses}
    tiles = [Tile(cand_dir / r.file, _label(r), r.verdict == "accepted", thumbs.get(r.file) or None) for r in ordered]
    sheet = render_contact_sheet(
        [("ACCEPTED", [t for t in tiles if t.ok]), ("REJECTED", [t for t in tiles if not t.ok])],
        out_dir / REPORTS_DIR / SHEET_NAME,
    )
    return QCResult(ordered, report, sheet, [out_dir / p.name for p in accepted], n_refs)


def _label(r: QCRow) -> str:
    """Two short lines under a contact-sheet tile: the evidence, then the verdict's reason."""
    score = "-" if r.score is None else f"{r.score:.2f}"
    refs = f" [{'/'.join(s[:4] for s in r.ref_scores.split())}]" if r.ref_scores else ""
    sharp = "-" if r.sharpness is None else f"{r.sharpness:.0f}"
    first = f"id {score}{refs} sh {sharp}"
    if r.margin is not None and r.verdict == "accepted":
        return f"{first}\nmargin {r.margin:+.2f}"
    return f"{first}\n{r.reason or r.verdict}"


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
