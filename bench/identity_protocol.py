"""The reusable part of ``bench/identity.py``: labelled face embeddings, the score mappings, ROC statistics,
the rule on main 6400e76 re-implemented from the same measurements ("before"), and how one persona run is
scored. The tables and the command line are in ``bench/identity.py``.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import imagehash
import numpy as np

from ai_influencer.imaging import load_rgb
from ai_influencer.qc.analysis import Analysis
from ai_influencer.vision.faces import (
    DLIB_SAME_PERSON_DISTANCE,
    INSIGHTFACE_SAME_PERSON_COSINE,
    MINSIM_DEFAULT,
    FaceEngine,
    scorer_for,
)
from tests.support.calibration import LabelledPhoto, Variant

OLD_DLIB_SCALE = 0.9  # main 6400e76: score = 1 - d / 0.9


# ---- data ---------------------------------------------------------------------------------------
@dataclass
class FaceRec:
    file: str
    identity: str
    picture: str
    embedding: np.ndarray


def embed_faces(engine: FaceEngine, photos: list[LabelledPhoto]) -> list[FaceRec]:
    """Every labelled face; group photos' faces are matched left to right."""
    out = []
    for p in photos:
        faces = sorted(engine.detect(load_rgb(p.path)), key=lambda f: f.box[0])
        if p.group:
            if len(faces) != len(p.identities):
                print(f"  ! {p.name}: {len(faces)} faces found, {len(p.identities)} labelled; skipped")
                continue
            out += [
                FaceRec(p.name, i, pic, f.embedding) for f, i, pic in zip(faces, p.identities, p.pictures, strict=True)
            ]
        elif faces:
            big = max(faces, key=lambda f: f.area)
            out.append(FaceRec(p.name, p.identity, p.picture, big.embedding))
    return out


# ---- scores --------------------------------------------------------------------------------------
def raw_similarity(backend: str, a: np.ndarray, b: np.ndarray) -> float:
    """Higher is closer, unclipped: -distance for dlib, cosine for ArcFace."""
    if backend == "dlib":
        return -float(np.linalg.norm(a - b))
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def calibrated(backend: str, raw: float) -> float:
    """faces.py's mapping without the clip to 0..1 (so ROC thresholds stay distinct)."""
    if backend == "dlib":
        return 1 - (1 - MINSIM_DEFAULT) * (-raw) / DLIB_SAME_PERSON_DISTANCE
    return 1 - (1 - MINSIM_DEFAULT) * (1 - raw) / (1 - INSIGHTFACE_SAME_PERSON_COSINE)


def old_score(backend: str, raw: float) -> float:
    return 1 + raw / OLD_DLIB_SCALE if backend == "dlib" else raw


def centroid(backend: str, embs: list[np.ndarray]) -> np.ndarray:
    return scorer_for(backend).centroid(embs)


@dataclass
class Roc:
    genuine: np.ndarray
    impostor: np.ndarray

    def far(self, t: float) -> float:
        return float(np.mean(self.impostor >= t))

    def tar(self, t: float) -> float:
        return float(np.mean(self.genuine >= t))

    def auc(self) -> float:
        g, i = self.genuine[:, None], self.impostor[None, :]
        return float(np.mean((g > i) + 0.5 * (g == i)))

    def eer(self) -> float:
        best = (2.0, 1.0)
        for t in np.unique(np.concatenate([self.genuine, self.impostor])):
            far, frr = self.far(t), 1 - self.tar(t)
            best = min(best, (abs(far - frr), (far + frr) / 2))
        return best[1]

    def tar_at(self, far: float) -> tuple[float, float]:
        """(TAR, threshold) at the lowest threshold whose FAR <= far."""
        ok = [t for t in np.unique(np.concatenate([self.genuine, self.impostor, [np.inf]])) if self.far(t) <= far]
        t = min(ok)
        if t == np.inf:
            t = float(self.impostor.max()) + 1e-9
        return self.tar(t), float(t)


def pair_roc(backend: str, faces: list[FaceRec]) -> tuple[Roc, list[tuple[float, str, str]]]:
    g, i, worst = [], [], []
    for a, b in itertools.combinations(faces, 2):
        if a.picture == b.picture:
            continue
        s = raw_similarity(backend, a.embedding, b.embedding)
        if a.identity == b.identity:
            g.append(s)
        else:
            i.append(s)
            worst.append((s, f"{a.file}:{a.identity}", f"{b.file}:{b.identity}"))
    return Roc(np.array(g), np.array(i)), sorted(worst, reverse=True)[:3]


@dataclass
class RefCase:
    persona: str
    refs: tuple[str, str]
    face: FaceRec
    centroid_raw: float
    per_ref_raw: list[float]

    @property
    def genuine(self) -> bool:
        return self.face.identity == self.persona


def two_ref_cases(backend: str, faces: list[FaceRec], refs: dict[str, Analysis], reps: dict[str, LabelledPhoto]):
    by_person: dict[str, list[str]] = defaultdict(list)
    for picture, p in sorted(reps.items()):
        if picture in refs and refs[picture].embedding is not None:
            by_person[p.identity].append(picture)
    cases = []
    for person, pictures in sorted(by_person.items()):
        for pair in itertools.combinations(pictures, 2):
            embs = [refs[p].embedding for p in pair]
            c = centroid(backend, embs)
            for f in faces:
                if f.picture in pair:
                    continue
                per = [raw_similarity(backend, f.embedding, e) for e in embs]
                cases.append(RefCase(person, pair, f, raw_similarity(backend, f.embedding, c), per))
    return cases


def fmt_rate(x: float, n: int) -> str:
    return f"{x * 100:5.1f}% ({round(x * n)}/{n})"


# ---- the sharpness before ----------------------------------------------------------------------
def legacy_sharpness(a: Analysis) -> float:
    """main 6400e76: Laplacian variance of the face box resized to 256x256."""
    if a.box is None:
        return 0.0
    rgb = load_rgb(a.path)
    x0, y0, x1, y1 = a.box
    crop = rgb[max(0, y0) : y1, max(0, x0) : x1]
    if crop.size == 0:
        return 0.0
    gray = cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY)
    interp = cv2.INTER_AREA if min(gray.shape[:2]) >= 256 else cv2.INTER_CUBIC
    return float(cv2.Laplacian(cv2.resize(gray, (256, 256), interpolation=interp), cv2.CV_64F).var())


# ---- the held-out protocol -----------------------------------------------------------------------
@dataclass
class RunStats:
    others: int = 0  # candidate files of other people (and group photos): the false-accept opportunities
    accepted: int = 0
    true_accepts: int = 0
    persona_pictures: int = 0
    recalled: int = 0
    blurred: int = 0
    blurred_rejected: int = 0
    dup_pairs: int = 0
    dup_caught: int = 0
    near_pairs: int = 0
    near_caught: int = 0
    reenc_pairs: int = 0
    reenc_caught: int = 0
    degraded_kept: int = 0
    false_files: list[str] = field(default_factory=list)
    degraded_files: list[str] = field(default_factory=list)
    missed: list[str] = field(default_factory=list)

    def add(self, o: RunStats) -> None:
        for k, v in vars(o).items():
            if isinstance(v, list):
                getattr(self, k).extend(v)
            else:
                setattr(self, k, getattr(self, k) + v)


def legacy_decide(
    backend: str, refs: list[Analysis], cands: list[Analysis], legacy_sharp: dict[Path, float]
) -> set[str]:
    """main 6400e76's verdicts: centroid score >= 0.34 (old mapping), Laplacian >= 80, one face, greedy dedupe."""
    embs = [r.embedding for r in refs if r.embedding is not None]
    c = centroid(backend, embs)
    passing = []
    for a in cands:
        if a.embedding is None or a.faces > 1:
            continue
        s = old_score(backend, raw_similarity(backend, a.embedding, c))
        if s >= 0.34 and legacy_sharp[a.path] >= 80:
            passing.append((s, a))
    kept: list[Analysis] = []
    for _, a in sorted(passing, key=lambda t: -t[0]):
        h = imagehash.hex_to_hash(a.phash)
        dup = any(
            h - imagehash.hex_to_hash(k.phash) <= 10
            and old_score(backend, raw_similarity(backend, a.embedding, k.embedding)) >= 0.85
            for k in kept
        )
        if not dup:
            kept.append(a)
    return {a.path.name for a in kept}


def score_run(persona: str, variants: list[Variant], accepted: set[str]) -> RunStats:
    st = RunStats()
    by_source: dict[str, dict[str, Variant]] = defaultdict(dict)
    for v in variants:
        by_source[v.source.name][v.kind] = v
    persona_pictures: dict[str, bool] = {}
    for v in variants:
        is_persona = not v.source.group and v.source.identity == persona
        st.others += not is_persona
        if v.path.name in accepted:
            st.accepted += 1
            st.true_accepts += is_persona
            if not is_persona:
                st.false_files.append(v.path.name)
        if is_persona:
            persona_pictures.setdefault(v.source.picture, False)
            if v.path.name in accepted:
                persona_pictures[v.source.picture] = True
        if v.kind in ("blur04", "blur10") and is_persona:
            st.blurred += 1
            st.blurred_rejected += v.path.name not in accepted
    for copies in by_source.values():
        orig = copies.get("original")
        if orig is None or orig.source.group:
            continue
        for kind in ("dup", "near", "reenc"):
            if kind not in copies:
                continue
            both = orig.path.name in accepted and copies[kind].path.name in accepted
            either = orig.path.name in accepted or copies[kind].path.name in accepted
            if not either:
                continue
            if kind == "dup":
                st.dup_pairs += 1
                st.dup_caught += not both
            else:
                if kind == "near":
                    st.near_pairs += 1
                    st.near_caught += not both
                else:
                    st.reenc_pairs += 1
                    st.reenc_caught += not both
                if copies[kind].path.name in accepted and orig.path.name not in accepted:
                    st.degraded_kept += 1
                    st.degraded_files.append(copies[kind].path.name)
    st.persona_pictures = len(persona_pictures)
    st.recalled = sum(persona_pictures.values())
    st.missed = [p for p, ok in persona_pictures.items() if not ok]
    return st
