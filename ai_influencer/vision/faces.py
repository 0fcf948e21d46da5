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
not resemble (see vision/qc.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

MINSIM_DEFAULT = 0.34  # the manual's --minsim: "same person" on every backend's calibrated scale
AGREEMENT_SLACK = 0.15  # how much lower a single reference may score than minsim
DLIB_SAME_PERSON_DISTANCE = 0.48  # dlib descriptor distance to the reference centroid that scores MINSIM_DEFAULT
INSIGHTFACE_SAME_PERSON_COSINE = 0.45  # ArcFace cosine that scores MINSIM_DEFAULT (uncalibrated here, see doc)
LICENCES = {
    "dlib": "dlib models: public domain (davisking/dlib-models); offline from PyPI",
    "insightface": "InsightFace buffalo_l pretrained models: NON-COMMERCIAL research use only",
}


@dataclass
class Face:
    """One detected face: box (x0, y0, x1, y1) in pixels, detector score, identity embedding."""

    box: tuple[int, int, int, int]
    score: float
    embedding: np.ndarray
    landmarks: np.ndarray | None = None

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


class DlibEngine(DlibScoring):
    """HOG detector + 5-point aligner + 128-d ResNet descriptor (dlib, offline, public-domain models)."""

    name = "dlib"

    def __init__(self, *, upsample: int = 1, max_side: int = 1024) -> None:
        import dlib

        models = dlib_models_dir()
        self.upsample = upsample
        self.max_side = max_side
        self._detector = dlib.get_frontal_face_detector()
        self._shape = dlib.shape_predictor(str(models / "shape_predictor_5_face_landmarks.dat"))
        self._encoder = dlib.face_recognition_model_v1(str(models / "dlib_face_recognition_resnet_model_v1.dat"))

    def detect(self, rgb: np.ndarray) -> list[Face]:
        h, w = rgb.shape[:2]
        scale = min(1.0, self.max_side / max(h, w))
        small = rgb
        if scale < 1.0:
            import cv2

            small = cv2.resize(rgb, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
        small = np.ascontiguousarray(small)
        rects, scores, _ = self._detector.run(small, self.upsample, 0.0)
        faces = []
        for rect, score in zip(rects, scores, strict=True):
            shape = self._shape(small, rect)
            emb = np.asarray(self._encoder.compute_face_descriptor(small, shape), dtype=np.float32)
            box = (
                max(0, int(rect.left() / scale)),
                max(0, int(rect.top() / scale)),
                min(w, int(rect.right() / scale)),
                min(h, int(rect.bottom() / scale)),
            )
            pts = np.array([(p.x / scale, p.y / scale) for p in shape.parts()], dtype=np.float32)
            faces.append(Face(box=box, score=float(score), embedding=emb, landmarks=pts))
        return faces


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
    backend: str = "dlib", *, insightface_root: Path = Path("models/insightface"), providers: list[str] | None = None
) -> FaceEngine:
    if resolve_backend(backend) == "insightface":
        return InsightFaceEngine(insightface_pack_dir(insightface_root), providers=providers)
    return DlibEngine()
