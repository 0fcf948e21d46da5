"""Face engines: one protocol, two real backends, one factory.

Why dlib is the default and InsightFace only by explicit choice: InsightFace
buffalo_l (ArcFace) is the stronger model, but its pretrained weights are for
NON-COMMERCIAL research only and must be fetched by the user; dlib's models
(``dlib-bin`` + ``face-recognition-models``) are public domain, install from
PyPI and run offline. ``auto`` is kept for old configurations and means dlib:
a model with a non-commercial licence is never picked up because its files
happen to be on disk.

Why one calibrated "identity score": the backends measure similarity
differently (Euclidean distance for dlib, smaller is closer; cosine for
ArcFace), but users set one threshold, the manual's ``--minsim 0.34``. Each
backend maps its measure linearly onto a higher-is-closer 0..1 scale whose
0.34 is that backend's same-person decision point for a candidate against the
centroid of two or more references (docs/identity-calibration.md):

* dlib: ``1 - 0.66 * d / 0.48``. d = 0.48 to the reference centroid is the
  decision point. dlib was trained to put pairs of one person below 0.6 - 0.04
  and of two people above 0.6 + 0.04; the centroid of two references shrinks the
  same-person spread by sqrt(3/4), so 0.56 becomes 0.485. The old mapping put
  0.34 at d = 0.594, inside the range where look-alikes score (a held-out set
  had one pair of actors at d = 0.51-0.58 against the other's references, while
  every same-person photo there measured d <= 0.46). On the calibration set
  (bench/identity.py) no different-person case comes near: d >= 0.69.
* insightface: ``1 - 0.66 * (1 - cos) / 0.55``, i.e. cosine 0.45 scores 0.34
  (insightface's PersonAnalysis default and deepface's buffalo_l cut; 0.28 is
  the loose "likely same" of InsightFace's demo). UNCALIBRATED here: the
  weights are not available on this project's machines; run bench/identity.py
  with the pack in place to check it.

``AGREEMENT_SLACK``: each reference on its own must score at least
``minsim - 0.15`` (dlib: pair distance <= 0.589, inside the model's own 0.6 radius),
so a candidate cannot pass on a centroid that sits between references it does
not resemble (see qc/decision.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from ai_influencer.options.qc import QC_DEFAULTS

# The manual's --minsim (options.qc): the calibrated scale is built so that it means "same person" on every backend.
MINSIM_DEFAULT = QC_DEFAULTS.minsim
AGREEMENT_SLACK = 0.15  # how much lower a single reference may score than minsim
DLIB_SAME_PERSON_DISTANCE = 0.48  # dlib descriptor distance to the reference centroid that scores MINSIM_DEFAULT
INSIGHTFACE_SAME_PERSON_COSINE = 0.45  # ArcFace cosine that scores MINSIM_DEFAULT (uncalibrated here, see doc)
LICENCES = {
    "dlib": "dlib models: public domain (davisking/dlib-models); offline from PyPI",
    "insightface": "InsightFace buffalo_l pretrained models: NON-COMMERCIAL research use only",
}


@dataclass
class Face:
    """One detected face: box (x0, y0, x1, y1) in pixels, detector score, identity embedding.

    ``embedding`` is None for a face from ``DlibEngine.locate`` whose descriptor was not asked for yet;
    ``native`` is the engine's own handle on it (dlib: the detection image and the 5-point shape).
    """

    box: tuple[int, int, int, int]
    score: float
    embedding: np.ndarray | None
    landmarks: np.ndarray | None = None
    native: object = field(default=None, repr=False, compare=False)

    @property
    def area(self) -> int:
        x0, y0, x1, y1 = self.box
        return max(0, x1 - x0) * max(0, y1 - y0)


class FaceModelMissingError(RuntimeError):
    """The selected backend's model files are absent; the message says where to put them."""


@runtime_checkable
class Scorer(Protocol):
    """How a backend turns embeddings into a centroid and an identity score (no models needed)."""

    def centroid(self, embeddings: list[np.ndarray]) -> np.ndarray: ...

    def identity_score(self, embedding: np.ndarray, reference: np.ndarray) -> float:
        """Calibrated 0..1, higher is more similar; >= 0.34 means same person on this backend (module doc)."""
        ...

    def identity_scores(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """``identity_score`` of every row of ``a`` against every row of ``b``, as a matrix."""
        ...


@runtime_checkable
class FaceEngine(Scorer, Protocol):
    name: str

    def detect(self, rgb: np.ndarray) -> list[Face]:
        """All faces in an RGB uint8 image, each with its identity embedding."""
        ...


class DlibScoring:
    """Euclidean distance of 128-d dlib descriptors, mapped to ``1 - 0.66 * d / 0.48``."""

    def centroid(self, embeddings: list[np.ndarray]) -> np.ndarray:
        return np.mean(np.stack(embeddings), axis=0)

    def _score(self, distance: np.ndarray) -> np.ndarray:
        return np.clip(1.0 - (1.0 - MINSIM_DEFAULT) * distance / DLIB_SAME_PERSON_DISTANCE, 0.0, 1.0)

    def identity_score(self, embedding: np.ndarray, reference: np.ndarray) -> float:
        return float(self._score(np.asarray(np.linalg.norm(embedding - reference))))

    def identity_scores(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Every row of ``a`` against every row of ``b`` (an ``len(a) x len(b)`` matrix).

        Why a matrix: QC compares every candidate with every impostor and every possible copy, and
        one call per pair made ``decide`` quadratic in Python (2 s for 1000 images, measured). The
        squared distance is expanded as ``|a|^2 + |b|^2 - 2 a.b`` (one BLAS product); descriptors
        have norms near 1, so float64 rounding stays below 1e-12 of a distance.
        """
        a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
        squared = (a * a).sum(axis=1)[:, None] + (b * b).sum(axis=1)[None, :] - 2.0 * (a @ b.T)
        return self._score(np.sqrt(np.maximum(squared, 0.0)))


class CosineScoring:
    """Cosine of L2-normalised ArcFace embeddings (re-normalised centroid), mapped so cosine 0.45 -> 0.34."""

    def centroid(self, embeddings: list[np.ndarray]) -> np.ndarray:
        mean = np.mean(np.stack(embeddings), axis=0)
        return mean / (np.linalg.norm(mean) or 1.0)

    def _score(self, cosine: np.ndarray) -> np.ndarray:
        scaled = 1.0 - (1.0 - MINSIM_DEFAULT) * (1.0 - cosine) / (1.0 - INSIGHTFACE_SAME_PERSON_COSINE)
        return np.clip(scaled, 0.0, 1.0)

    def identity_score(self, embedding: np.ndarray, reference: np.ndarray) -> float:
        denom = float(np.linalg.norm(embedding) * np.linalg.norm(reference)) or 1.0
        return float(self._score(np.asarray(float(np.dot(embedding, reference) / denom))))

    def identity_scores(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Every row of ``a`` against every row of ``b`` (see ``DlibScoring.identity_scores``)."""
        na = np.linalg.norm(a, axis=1, keepdims=True)
        nb = np.linalg.norm(b, axis=1, keepdims=True)
        denom = na @ nb.T
        denom[denom == 0] = 1.0
        return self._score((a @ b.T) / denom)


def largest(faces: list[Face]) -> Face | None:
    return max(faces, key=lambda f: f.area) if faces else None


def dlib_models_dir() -> Path:
    """Where ``face-recognition-models`` put its .dat files.

    Found via the import system rather than by importing the package, whose
    ``__init__`` needs ``pkg_resources`` (gone from recent setuptools).
    """
    import importlib.util

    spec = importlib.util.find_spec("face_recognition_models")
    locations = list(spec.submodule_search_locations or []) if spec else []
    for loc in locations:
        models = Path(loc) / "models"
        if (models / "dlib_face_recognition_resnet_model_v1.dat").is_file():
            return models
    raise FaceModelMissingError(
        "dlib face models not found: install them with `pip install face-recognition-models` "
        "(public-domain dlib models, ~100 MB)"
    )


# dlib's frontal face detector scans a HOG pyramid (scan_fhog_pyramid<pyramid_down<6>>): each level is 5/6 of the
# one above, and a detection at level l is a HOG_WINDOW-pixel square in that level's pixels (measured on the model).
HOG_WINDOW = 73
HOG_LEVEL_RATIO = 6 / 5
COARSE_FRACTION = 1 / 8  # QC's first pass sees faces down to 1/8 of the image's long side...
SECOND_FACE_RATIO = 1 / 3  # ...and must see every face at least 1/3 as wide as the largest one it found
LEVEL_MARGIN = 2  # a face found this close to the first scanned level may be one a finer level found better
FALLBACK_STEP = 4  # levels to go down when a pass finds no face
DIRECT_MAX_SCALE = 1.0  # a pyramid level no larger than the scanned image is one resize of it (see _HogPyramid)


def _rect_key(r: object) -> tuple[int, int, int, int]:
    return (r.left(), r.top(), r.right(), r.bottom())  # type: ignore[attr-defined]


class _HogPyramid:
    """The pyramid ``detector.run(small, 1)`` scans, built lazily from the top; a level smaller than ``small``
    is made in one resize instead of the whole chain above it.

    Why: that call (upsample once, then every 5/6 level down to 80 px) spends most of its time on the
    two largest levels, which only small faces need. Scanning from level ``j`` of the same pyramid gives
    the same detections with the same scores for every face found at level ``j`` or below; the
    upsampling is dlib's ``pyramid_up`` (a bilinear ``resize_image`` to ``pyr2.rect_up`` size) and the
    levels its ``pyramid_down(6)`` (each side ``floor(5 n / 6)``), checked against the full call on every
    test photo. Building level ``j`` still costs the upsampled image and every level down to ``j``: at
    1024 px that chain (73 ms) cost more than the scan itself. A level at most as large as ``small``
    (``DIRECT_MAX_SCALE``) is therefore one area resize of ``small`` (2 ms, OpenCV): the same size, so
    every detection maps back by the same geometry, with pixels a little off dlib's chain. Measured
    (docs/streaming.md): on 330 rendered 1024 px candidates 2-3 % of the boxes moved (one HOG cell, or
    the neighbouring pyramid level: 5/6 as wide) and no face count changed; the identity score moved by
    0.0099 at most. Levels larger than ``small`` (an upscale) stay dlib's exact chain: a one-step
    enlarged copy moved scores by up to 0.019.
    """

    def __init__(self, small: np.ndarray) -> None:
        import dlib

        self._dlib = dlib
        self.p6, self.p2 = dlib.pyramid_down(6), dlib.pyramid_down(2)
        h, w = small.shape[:2]
        top = self.p2.rect_up(dlib.rectangle(0, 0, w - 1, h - 1))
        self._small = small
        self._sizes = [(top.bottom() + 1, top.right() + 1)]  # (rows, columns) of each level
        self._levels: list[np.ndarray] = []

    def size(self, j: int) -> tuple[int, int]:
        while len(self._sizes) <= j:
            rows, cols = self._sizes[-1]
            self._sizes.append((rows * 5 // 6, cols * 5 // 6))
        return self._sizes[j]

    def direct(self, j: int) -> bool:
        """Whether level ``j`` is no larger than ``small`` (made in one resize, see the class doc)."""
        rows, cols = self.size(j)
        return cols <= self._small.shape[1] * DIRECT_MAX_SCALE and rows <= self._small.shape[0] * DIRECT_MAX_SCALE

    def first_direct_level(self) -> int:
        j = 0
        while not self.direct(j):
            j += 1
        return j

    def level(self, j: int) -> np.ndarray:
        rows, cols = self.size(j)
        if self.direct(j):
            import cv2

            return cv2.resize(self._small, (cols, rows), interpolation=cv2.INTER_AREA)
        if not self._levels:
            self._levels.append(self._dlib.resize_image(self._small, *self._sizes[0]))
        while len(self._levels) <= j:
            self._levels.append(self.p6(self._levels[-1]))
        return self._levels[j]

    def to_small(self, rect: object, j: int) -> tuple[tuple[int, int, int, int], int] | None:
        """A detection made on level ``j`` as the full call reports it (in the input image), and the
        pyramid level it came from; None when it cannot be mapped exactly.

        The detector maps its level-l box up with one rounding (``rect_up(box, l)``); a run started on
        level j rounds at j too. The level-l box is a HOG_WINDOW square, so it is found by search and
        mapped up in one step, as the full call does."""
        dlib = self._dlib
        found: set[tuple[tuple[int, int, int, int], int]] = set()
        want = _rect_key(rect)
        for m in range(64):
            base = self.p6.rect_down(rect, m)
            if base.width() < HOG_WINDOW - 4:
                break
            for dx in (-2, -1, 0, 1, 2):
                for dy in (-2, -1, 0, 1, 2):
                    x, y = base.left() + dx, base.top() + dy
                    cand = dlib.rectangle(x, y, x + HOG_WINDOW - 1, y + HOG_WINDOW - 1)
                    if _rect_key(self.p6.rect_up(cand, m)) == want:
                        found.add((_rect_key(self.p2.rect_down(self.p6.rect_up(cand, m + j))), m + j))
        boxes = {b for b, _ in found}
        if len(boxes) != 1:
            return None
        return boxes.pop(), min(level for _, level in found)


def _min_face(level: int) -> float:
    """The smallest face box (input-image pixels) a scan starting at ``level`` can report."""
    return HOG_WINDOW * HOG_LEVEL_RATIO**level / 2


def _level_for(face_px: float) -> int:
    """The deepest start level that still sees faces of ``face_px``."""
    if face_px <= _min_face(0):
        return 0
    return math.floor(math.log(face_px / _min_face(0)) / math.log(HOG_LEVEL_RATIO))


class DlibEngine(DlibScoring):
    """HOG detector + 5-point aligner + 128-d ResNet descriptor (dlib, offline, public-domain models).

    ``detect`` finds every face down to ~37 px and describes each one (what reference preparation and
    evaluation use). QC uses the staged calls instead: ``locate`` (boxes and landmarks, a coarse-to-fine
    scan), ``face_chip`` and ``embed_chip`` (the descriptor, ~90 ms a face, only for an image that passed
    the cheaper checks). ``legacy=True`` keeps QC on the path of release 0.1 (full scan, every face
    described) for ``bench/qc.py``'s baseline.
    """

    name = "dlib"

    def __init__(self, *, upsample: int = 1, max_side: int = 1024, legacy: bool = False) -> None:
        import dlib

        models = dlib_models_dir()
        self.upsample = upsample
        self.max_side = max_side
        self.legacy = legacy
        self._detector = dlib.get_frontal_face_detector()
        self._shape = dlib.shape_predictor(str(models / "shape_predictor_5_face_landmarks.dat"))
        self._resnet = models / "dlib_face_recognition_resnet_model_v1.dat"
        self._encoder = dlib.face_recognition_model_v1(str(self._resnet))
        self._net: object | None = None  # dlib's network on ONNX Runtime, built on QC's first descriptor
        self._net_tried = legacy  # the legacy path keeps dlib's own code

    def _small(self, rgb: np.ndarray) -> tuple[np.ndarray, float]:
        h, w = rgb.shape[:2]
        scale = min(1.0, self.max_side / max(h, w))
        small = rgb
        if scale < 1.0:
            import cv2

            small = cv2.resize(rgb, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
        return np.ascontiguousarray(small), scale

    def _faces(self, small: np.ndarray, scale: float, full: tuple[int, int], rects: list, scores: list) -> list[Face]:
        import dlib

        w, h = full
        faces = []
        for r, score in zip(rects, scores, strict=True):
            rect = r if isinstance(r, dlib.rectangle) else dlib.rectangle(*r)
            shape = self._shape(small, rect)
            box = (
                max(0, int(rect.left() / scale)),
                max(0, int(rect.top() / scale)),
                min(w, int(rect.right() / scale)),
                min(h, int(rect.bottom() / scale)),
            )
            pts = np.array([(p.x / scale, p.y / scale) for p in shape.parts()], dtype=np.float32)
            faces.append(Face(box=box, score=float(score), embedding=None, landmarks=pts, native=(small, shape)))
        return faces

    def detect(self, rgb: np.ndarray) -> list[Face]:
        small, scale = self._small(rgb)
        rects, scores, _ = self._detector.run(small, self.upsample, 0.0)
        faces = self._faces(small, scale, (rgb.shape[1], rgb.shape[0]), list(rects), list(scores))
        for f in faces:
            _, shape = f.native  # type: ignore[misc]
            f.embedding = np.asarray(self._encoder.compute_face_descriptor(small, shape), dtype=np.float32)
        return faces

    def locate(self, rgb: np.ndarray) -> list[Face]:
        """The faces (boxes, scores, landmarks; no descriptor) QC counts: those ``detect`` finds, except faces
        narrower than 1/3 of the largest one and than 1/8 of the image (or, below ~615 px, than the ~76 px the
        detector's window covers without enlarging the image). A box may sit one HOG cell or one pyramid level
        off ``detect``'s and its score differ a little: coarse levels are resized copies (``_HogPyramid``)."""
        small, scale = self._small(rgb)
        if self.legacy or self.upsample != 1:
            rects, scores, _ = self._detector.run(small, self.upsample, 0.0)
            rects, scores = list(rects), list(scores)
        else:
            rects, scores = self._coarse_to_fine(small)
        return self._faces(small, scale, (rgb.shape[1], rgb.shape[0]), rects, scores)

    def _coarse_to_fine(self, small: np.ndarray) -> tuple[list, list[float]]:
        """Scan from a coarse pyramid level, never an enlarged one (the first pass of a 512 px image would
        otherwise pay for dlib's upsampled chain: 45 instead of 65 ms); go finer while a face sits near the
        first scanned level (a finer level may have found it better) or a face a third as wide as the largest
        could hide above it, or nothing was found. Level 0 is the full call, so the worst case is today's
        result, a little later."""
        pyramid = _HogPyramid(small)
        j = max(_level_for(max(small.shape[:2]) * COARSE_FRACTION), pyramid.first_direct_level())
        while j > 0:
            rects, scores, _ = self._detector.run(pyramid.level(j), 0, 0.0)
            mapped = [pyramid.to_small(r, j) for r in rects]
            if any(m is None for m in mapped):
                break
            if not mapped:
                j = max(0, j - FALLBACK_STEP)
                continue
            boxes = [m[0] for m in mapped if m is not None]
            lowest = min(m[1] for m in mapped if m is not None)
            need = _level_for(max(b[2] - b[0] for b in boxes) * SECOND_FACE_RATIO)
            if lowest >= j + LEVEL_MARGIN and j <= need:
                return boxes, list(scores)
            j = max(0, min(j - 1, lowest - LEVEL_MARGIN, need))
        rects, scores, _ = self._detector.run(small, 1, 0.0)
        return [_rect_key(r) for r in rects], list(scores)

    def face_chip(self, face: Face) -> np.ndarray:
        """The 150 px aligned face the descriptor reads (dlib's ``compute_face_descriptor`` makes the same)."""
        import dlib

        small, shape = face.native  # type: ignore[misc]
        return dlib.get_face_chip(small, shape, 150, 0.25)

    def embed_chip(self, chip: np.ndarray) -> np.ndarray:
        """The 128-d descriptor of an aligned chip: dlib's network on ONNX Runtime (same numbers, ~10x faster,
        ``dlib_descriptor``), or dlib's own code when that could not be built."""
        if not self._net_tried:
            self._net_tried = True
            self._net = _fast_descriptor(self._resnet, self._encoder)
        if self._net is not None:
            return self._net.embed([chip])[0]  # type: ignore[attr-defined]
        return np.asarray(self._encoder.compute_face_descriptor(chip), dtype=np.float32)


def _fast_descriptor(model_file: Path, reference: object) -> object | None:
    """dlib's descriptor network on ONNX Runtime, checked against dlib; None (and a warning) if unavailable."""
    import logging

    try:
        from ai_influencer.vision.dlib_descriptor import DlibDescriptor

        return DlibDescriptor.load(model_file, reference)
    except Exception as exc:  # any failure: dlib's own descriptor, slower but the same numbers
        logging.getLogger(__name__).warning("dlib face descriptor stays on dlib's own code (slower): %s", exc)
        return None


INSIGHTFACE_REQUIRED = ("detection", "recognition")


class InsightFaceEngine(CosineScoring):
    """InsightFace buffalo_l: SCRFD-10GF detector + ArcFace w600k_r50 (512-d). Models are NON-COMMERCIAL."""

    name = "insightface"

    def __init__(self, pack_dir: Path, *, providers: list[str] | None = None, det_size: int = 640) -> None:
        check_insightface_pack(pack_dir)
        from insightface.app import FaceAnalysis

        providers = providers or ["CPUExecutionProvider"]
        try:
            self._app = FaceAnalysis(
                name=str(Path(pack_dir).resolve()),
                allowed_modules=list(INSIGHTFACE_REQUIRED),
                providers=providers,
            )
        except AssertionError as exc:
            raise FaceModelMissingError(
                f"{pack_dir}: incomplete buffalo_l pack ({exc or 'a model is missing'})"
            ) from None
        ctx = 0 if any(p.startswith(("CUDA", "Tensorrt")) for p in providers) else -1
        self._app.prepare(ctx_id=ctx, det_size=(det_size, det_size))

    def detect(self, rgb: np.ndarray) -> list[Face]:
        bgr = np.ascontiguousarray(rgb[:, :, ::-1])
        out = []
        for f in self._app.get(bgr):
            x0, y0, x1, y1 = (int(v) for v in f.bbox)
            out.append(
                Face(
                    box=(max(0, x0), max(0, y0), x1, y1),
                    score=float(f.det_score),
                    embedding=np.asarray(f.normed_embedding, dtype=np.float32),
                    landmarks=None if f.kps is None else np.asarray(f.kps, dtype=np.float32),
                )
            )
        return out


def check_insightface_pack(pack_dir: Path) -> None:
    """Fail early and clearly instead of InsightFace's download attempt or bare AssertionError."""
    pack = Path(pack_dir)
    hint = (
        f"put the buffalo_l *.onnx files (det_10g.onnx, w600k_r50.onnx, ...) directly in {pack}/ "
        "(InsightFace model zoo; non-commercial research licence), or use the dlib backend"
    )
    if not pack.is_dir():
        raise FaceModelMissingError(f"InsightFace model pack not found at {pack}: {hint}")
    onnx = sorted(pack.glob("*.onnx"))
    names = {p.name for p in onnx}
    missing = [n for n in ("det_10g.onnx", "w600k_r50.onnx") if n not in names]
    if not onnx or (missing and len(onnx) < 2):
        raise FaceModelMissingError(f"InsightFace model pack at {pack} is incomplete (missing {missing}): {hint}")


def insightface_pack_dir(root: Path) -> Path:
    return Path(root) / "models" / "buffalo_l"


def resolve_backend(backend: str) -> str:
    """``auto`` (kept for old settings) is dlib: InsightFace's non-commercial models only when asked for by name."""
    if backend not in ("auto", "dlib", "insightface"):
        raise ValueError(f"unknown face backend {backend!r} (expected dlib or insightface; auto means dlib)")
    return "dlib" if backend == "auto" else backend


def scorer_for(backend: str) -> Scorer:
    return CosineScoring() if backend == "insightface" else DlibScoring()


def create_face_engine(
    backend: str = "dlib",
    *,
    insightface_root: Path = Path("models/insightface"),
    providers: list[str] | None = None,
    legacy: bool = False,
) -> FaceEngine:
    """``legacy``: dlib on release 0.1's QC path (bench/qc.py's baseline only)."""
    if resolve_backend(backend) == "insightface":
        return InsightFaceEngine(insightface_pack_dir(insightface_root), providers=providers)
    return DlibEngine(legacy=legacy)
