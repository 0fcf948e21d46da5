"""QC step 1: everything measured on one image alone.

Faces, the largest face's embedding, sharpness, detail, perceptual and pixel hashes and file compression
depend on the image and nothing else, so they can be measured in any order, in worker processes (each
holding its own face engine, see ``qc.pool``), or one by one as images arrive: the verdicts come later,
from ``qc.decision.decide`` over the whole batch.

Cheapest first (docs/streaming.md has the costs): the image is decoded once and its hashes, thumbnail and
compression come from those pixels; the face engine then finds the faces (a coarse-to-fine scan on dlib);
the face descriptor, the largest single cost left, is computed only when a ``Gate`` cannot already reject
the image: a copy of a reference, more faces than allowed, a blurred face. Which checks those are depends
only on the thresholds and the references' hashes, so ``decide`` can tell from an analysis alone whether its
missing descriptor matters, and a stored analysis is re-done only when a new gate needs the descriptor.
"""

from __future__ import annotations

import hashlib
import io
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import imagehash
import numpy as np
from PIL import Image, ImageOps

from ai_influencer.imaging import DEFAULT_MAX_PIXELS, BadImageError, load_rgb
from ai_influencer.vision.faces import FaceEngine, create_face_engine, largest, resolve_backend
from ai_influencer.vision.quality import compression_quality, face_detail, face_sharpness

THUMB = 160
SAME_PICTURE_BITS = 4  # pHash this close: one picture resized or re-encoded, even when a tiny face embeds badly

ProgressCallback = Callable[[int, int, str], None]  # (done, total, file name)


@dataclass(frozen=True)
class EngineSpec:
    """Picklable recipe for building a face engine inside a worker process."""

    backend: str = "dlib"
    insightface_root: str = "models/insightface"
    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    legacy: bool = False  # release 0.1's QC path, for bench/qc.py's baseline: never stored in the analysis cache

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
            self.backend,
            insightface_root=Path(self.insightface_root),
            providers=list(self.providers),
            legacy=self.legacy,
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
    phash_mirror: str = ""  # of the mirror image: a reference copied and flipped is still a copy
    skipped: str = ""  # "copy", "faces" or "blur": the face has no descriptor because that check rejects it


@dataclass(frozen=True)
class ReferencePrint:
    """What a copy of a reference is recognised by, without any face model."""

    name: str
    pixel_hash: str
    phash: str
    phash_mirror: str


@dataclass(frozen=True)
class Gate:
    """The checks cheaper than the face descriptor; an image failing one of them never pays for it.

    Picklable (it travels to the worker processes with each image)."""

    minblur: float = 0.0
    max_faces: int = 1_000_000
    references: tuple[ReferencePrint, ...] = ()

    @classmethod
    def build(cls, minblur: float, max_faces: int, refs: list[Analysis]) -> Gate:
        prints = tuple(
            ReferencePrint(a.path.name, a.pixel_hash, a.phash, a.phash_mirror)
            for a in sorted(refs, key=lambda a: a.path.name)
            if not a.error
        )
        return cls(minblur, max_faces, prints)


def hash_bits(a: str, b: str) -> int:
    """Hamming distance of two hex pHashes; 65 (no match possible) when either is missing."""
    return (int(a, 16) ^ int(b, 16)).bit_count() if a and b else 65


def copy_of_reference(a: Analysis, references: tuple[ReferencePrint, ...]) -> str:
    """The name of the reference ``a`` copies (identical pixels, or a pHash within ``SAME_PICTURE_BITS`` of the
    reference or of its mirror image: resized, re-encoded, retouched or flipped), or ""."""
    for ref in references:
        if a.pixel_hash and a.pixel_hash == ref.pixel_hash:
            return ref.name
        if min(hash_bits(a.phash, ref.phash), hash_bits(a.phash, ref.phash_mirror)) <= SAME_PICTURE_BITS:
            return ref.name
    return ""


def skip_reason(a: Analysis, gate: Gate | None) -> str:
    """Why ``a`` needs no face descriptor under ``gate`` ("copy", "faces", "blur"), or "" when it does."""
    if gate is None or a.error or a.faces == 0 or a.box is None:
        return ""
    if copy_of_reference(a, gate.references):
        return "copy"
    if a.faces > gate.max_faces:
        return "faces"
    if a.sharpness < gate.minblur:
        return "blur"
    return ""


def _thumbnail(rgb: np.ndarray, side: int = THUMB) -> Image.Image:
    im = Image.fromarray(rgb)
    im.thumbnail((side, side), Image.Resampling.BILINEAR)
    return im


def _jpeg(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def analyze(engine: FaceEngine, path: Path, max_pixels: int = DEFAULT_MAX_PIXELS, gate: Gate | None = None) -> Analysis:
    """Everything QC measures on ``path``; the descriptor only when ``gate`` cannot reject the image without it."""
    if getattr(engine, "legacy", False):
        return analyze_legacy(engine, path, max_pixels)
    try:
        rgb = load_rgb(path, max_pixels=max_pixels)
        nbytes = path.stat().st_size
    except BadImageError as exc:
        return Analysis(path, error=exc.reason)
    thumb = _thumbnail(rgb)
    quality, fmt = compression_quality(path)
    digest = hashlib.sha1(rgb.tobytes(), usedforsecurity=False)
    digest.update(repr(rgb.shape).encode())
    # phash shrinks to 32x32 anyway: hashing the thumbnail gives the same bits for a fraction of the cost.
    result = Analysis(
        path,
        phash=str(imagehash.phash(thumb)),
        phash_mirror=str(imagehash.phash(ImageOps.mirror(thumb))),
        thumbnail=_jpeg(thumb),
        pixel_hash=digest.hexdigest(),
        compression=quality,
        fmt=fmt,
        nbytes=nbytes,
    )
    staged = hasattr(engine, "locate")
    faces = engine.locate(rgb) if staged else engine.detect(rgb)  # type: ignore[attr-defined]
    result.faces = len(faces)
    face = largest(faces)
    if face is None:
        return result
    result.sharpness = face_sharpness(rgb, face.box)
    result.detail = face_detail(rgb, face.box)
    result.box = face.box
    result.face_px = face.box[2] - face.box[0]
    result.skipped = skip_reason(result, gate)
    if not result.skipped:
        embedding = engine.embed_chip(engine.face_chip(face)) if staged else face.embedding  # type: ignore[attr-defined]
        result.embedding = embedding
    return result


def analyze_legacy(engine: FaceEngine, path: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> Analysis:
    """Release 0.1's analysis, unchanged (every face described, full scan): bench/qc.py's baseline."""
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


def quality_label(a: Analysis) -> str:
    """The file's compression as the report shows it: ``PNG lossless``, ``JPEG q85``; empty for unreadable files."""
    if not a.fmt:
        return ""
    return f"{a.fmt} lossless" if a.compression >= 100 and a.fmt != "JPEG" else f"{a.fmt} q{a.compression}"


_worker_engine: FaceEngine | None = None


def init_worker(spec: EngineSpec) -> None:
    """In a worker process of ``qc.pool.AnalysisPool``: its own face engine, built once.

    Stopping is the parent's decision. A terminal's Ctrl-C and the Prefect runner's cancellation
    (SIGTERM) reach the whole process group; a worker that died of it broke the pool
    (``BrokenProcessPool``) while the parent was still draining its paid requests, so workers ignore
    both and the parent shuts the pool down. A worker whose parent is gone (SIGKILL) exits by itself.
    """
    global _worker_engine
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    parent = os.getppid()
    threading.Thread(target=_exit_with_parent, args=(parent,), name="parent-watch", daemon=True).start()
    _worker_engine = spec.build()


def _exit_with_parent(parent: int) -> None:
    while True:
        time.sleep(1.0)
        if os.getppid() != parent:  # re-parented: the pool's owner died without shutting it down
            os._exit(0)


def analyze_in_worker(args: tuple[Path, int, Gate | None]) -> Analysis:
    assert _worker_engine is not None
    return analyze(_worker_engine, *args)
