"""Identity QC (manual step 4: ``--minsim --minblur``).

For every candidate: detect faces, score the largest against the centroid of
the reference faces (``identity_score``, see faces.py), measure its sharpness
at a fixed scale, then drop near-duplicates (keeping the best-scoring copy).
Approved images (and their generation sidecars) are copied to the output
folder; ``qc_report.csv`` and ``contact_sheet.png`` explain every verdict.

The per-image work (decode, detect, embed, hash) runs in worker processes,
each holding its own face engine, so both cores of a small machine are used;
the verdict logic is cheap and stays in the parent.
"""

from __future__ import annotations

import csv
import io
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import imagehash
import numpy as np
from PIL import Image

from ai_influencer.dataset.contact_sheet import Tile, render_contact_sheet
from ai_influencer.dataset.manifest import sidecar_path
from ai_influencer.io import atomic_write_bytes, atomic_write_text
from ai_influencer.vision.faces import FaceEngine, Scorer, create_face_engine, largest, resolve_backend, scorer_for
from ai_influencer.vision.image_io import DEFAULT_MAX_PIXELS, BadImageError, list_images, load_rgb
from ai_influencer.vision.quality import face_sharpness

REPORT_NAME = "qc_report.csv"
SHEET_NAME = "contact_sheet.png"  # in a reports/ subfolder so no stage ever trains on it
REPORTS_DIR = "reports"
THUMB = 160
REPORT_FIELDS = ("file", "faces", "score", "sharpness", "duplicate_of", "verdict", "reason")


@dataclass(frozen=True)
class EngineSpec:
    """Picklable recipe for building a face engine inside a worker process."""

    backend: str = "dlib"
    insightface_root: str = "models/insightface"
    providers: tuple[str, ...] = ("CPUExecutionProvider",)

    def resolved_backend(self) -> str:
        return resolve_backend(self.backend, Path(self.insightface_root))

    def build(self) -> FaceEngine:
        return create_face_engine(
            self.backend, insightface_root=Path(self.insightface_root), providers=list(self.providers)
        )


@dataclass
class Analysis:
    path: Path
    faces: int = 0
    embedding: np.ndarray | None = None
    sharpness: float = 0.0
    phash: str = ""
    error: str = ""
    thumbnail: bytes = b""  # small JPEG for the contact sheet, made while the image is decoded anyway


@dataclass
class QCRow:
    file: str
    faces: int
    score: float | None
    sharpness: float | None
    duplicate_of: str
    verdict: str  # accepted | rejected | error
    reason: str


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
    except BadImageError as exc:
        return Analysis(path, error=exc.reason)
    faces = engine.detect(rgb)
    face = largest(faces)
    thumb = _thumbnail(rgb)
    # phash shrinks to 32x32 anyway: hashing the thumbnail gives the same bits for a fraction of the cost.
    result = Analysis(path, faces=len(faces), phash=str(imagehash.phash(thumb)), thumbnail=_jpeg(thumb))
    if face is not None:
        result.embedding = face.embedding
        result.sharpness = face_sharpness(rgb, face.box)
    return result


_worker_engine: FaceEngine | None = None


def _init_worker(spec: EngineSpec) -> None:
    global _worker_engine
    _worker_engine = spec.build()


def _analyze_in_worker(args: tuple[Path, int]) -> Analysis:
    assert _worker_engine is not None
    return analyze(_worker_engine, *args)


def analyze_many(
    paths: list[Path], *, engine: FaceEngine | None, spec: EngineSpec | None, workers: int, max_pixels: int
) -> list[Analysis]:
    if workers <= 1 or len(paths) < 4 or spec is None:
        eng = engine or (spec or EngineSpec()).build()
        return [analyze(eng, p, max_pixels) for p in paths]
    workers = min(workers, len(paths))
    with ProcessPoolExecutor(max_workers=workers, initializer=_init_worker, initargs=(spec,)) as pool:
        return list(pool.map(_analyze_in_worker, [(p, max_pixels) for p in paths], chunksize=2))


def reference_centroid(engine: Scorer, refs: list[Analysis]) -> tuple[np.ndarray, int]:
    embeddings = [a.embedding for a in refs if a.embedding is not None]
    if not embeddings:
        problems = "; ".join(f"{a.path.name}: {a.error or 'no face'}" for a in refs) or "folder is empty"
        raise ValueError(f"no usable reference face ({problems})")
    return engine.centroid(embeddings), len(embeddings)


def run_qc(
    ref_dir: Path,
    cand_dir: Path,
    out_dir: Path,
    *,
    engine: FaceEngine | None = None,
    spec: EngineSpec | None = None,
    minsim: float = 0.34,
    minblur: float = 80.0,
    max_faces: int = 1,
    dup_hash_distance: int = 10,
    dup_min_score: float = 0.85,
    workers: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> QCResult:
    """Score, filter and dedupe ``cand_dir`` against ``ref_dir``; copy the approved to ``out_dir``."""
    if engine is None and spec is None:
        spec = EngineSpec()
    if engine is not None:
        spec = None  # an engine object given by the caller is used in-process
    # Scoring is pure numpy: the parent needs no loaded models when workers do the detection.
    scorer: Scorer = engine or scorer_for(spec.resolved_backend() if spec else "dlib")
    workers = os.cpu_count() or 1 if workers is None else workers
    ref_paths, cand_paths = list_images(ref_dir), list_images(cand_dir)
    # References and candidates go through one pool: no serial phase before the workers start.
    everything = analyze_many(ref_paths + cand_paths, engine=engine, spec=spec, workers=workers, max_pixels=max_pixels)
    refs, analyses = everything[: len(ref_paths)], everything[len(ref_paths) :]
    centroid, n_refs = reference_centroid(scorer, refs)

    rows: dict[Path, QCRow] = {}
    passing: list[tuple[float, Analysis]] = []
    for a in analyses:
        name = a.path.name
        if a.error:
            rows[a.path] = QCRow(name, 0, None, None, "", "error", a.error)
            continue
        if a.embedding is None:
            rows[a.path] = QCRow(name, 0, None, None, "", "rejected", "no face detected")
            continue
        score = scorer.identity_score(a.embedding, centroid)
        row = QCRow(name, a.faces, round(score, 4), round(a.sharpness, 1), "", "accepted", "")
        reasons = []
        if score < minsim:
            reasons.append(f"identity {score:.3f} < minsim {minsim}")
        if a.sharpness < minblur:
            reasons.append(f"face sharpness {a.sharpness:.1f} < minblur {minblur}")
        if a.faces > max_faces:
            reasons.append(f"{a.faces} faces > max {max_faces}")
        if reasons:
            row.verdict, row.reason = "rejected", "; ".join(reasons)
        else:
            passing.append((score, a))
        rows[a.path] = row

    kept: list[Analysis] = []
    for _, a in sorted(passing, key=lambda t: -t[0]):
        h = imagehash.hex_to_hash(a.phash)
        for k in kept:
            assert a.embedding is not None and k.embedding is not None
            close_pixels = (h - imagehash.hex_to_hash(k.phash)) <= dup_hash_distance
            if close_pixels and scorer.identity_score(a.embedding, k.embedding) >= dup_min_score:
                rows[a.path].verdict = "rejected"
                rows[a.path].duplicate_of = k.path.name
                rows[a.path].reason = f"near-duplicate of {k.path.name}"
                break
        else:
            kept.append(a)

    out_dir.mkdir(parents=True, exist_ok=True)
    accepted = sorted(a.path for a in kept)
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

    ordered = [rows[p] for p in cand_paths if p in rows]
    report = write_report(ordered, out_dir / REPORT_NAME)
    thumbs = {a.path.name: a.thumbnail for a in analyses}
    tiles = [Tile(cand_dir / r.file, _label(r), r.verdict == "accepted", thumbs.get(r.file) or None) for r in ordered]
    sheet = render_contact_sheet(
        [("ACCEPTED", [t for t in tiles if t.ok]), ("REJECTED", [t for t in tiles if not t.ok])],
        out_dir / REPORTS_DIR / SHEET_NAME,
    )
    return QCResult(ordered, report, sheet, [out_dir / p.name for p in accepted], n_refs)


def _label(r: QCRow) -> str:
    score = "-" if r.score is None else f"{r.score:.2f}"
    sharp = "-" if r.sharpness is None else f"{r.sharpness:.0f}"
    return f"id {score}  sharp {sharp}\n{r.reason or r.verdict}"


def read_report(path: Path) -> dict[str, QCRow]:
    """qc_report.csv back into rows, by file name (what analytics and the hub join on)."""
    rows: dict[str, QCRow] = {}
    with path.open(newline="", encoding="utf-8") as fh:
        for d in csv.DictReader(fh):
            rows[d["file"]] = QCRow(
                file=d["file"],
                faces=int(d["faces"] or 0),
                score=float(d["score"]) if d.get("score") else None,
                sharpness=float(d["sharpness"]) if d.get("sharpness") else None,
                duplicate_of=d.get("duplicate_of") or "",
                verdict=d["verdict"],
                reason=d.get("reason") or "",
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
