"""Use case: identity QC of the generated images (the manual's qc_face_sim.py)."""

from __future__ import annotations

from pathlib import Path

from ai_influencer.settings import Settings
from ai_influencer.vision.qc import EngineSpec, ProgressCallback, QCResult, QCThresholds, run_qc


def qc(
    settings: Settings,
    ref_dir: Path,
    cand_dir: Path,
    out_dir: Path,
    *,
    minsim: float,
    minblur: float,
    max_faces: int = 1,
    backend: str | None = None,
    workers: int | None = None,
    on_progress: ProgressCallback | None = None,
) -> QCResult:
    """Score, filter and dedupe the candidates against the references; a bad threshold fails first."""
    QCThresholds(minsim=minsim, minblur=minblur, max_faces=max_faces).validate()
    return run_qc(
        ref_dir,
        cand_dir,
        out_dir,
        spec=EngineSpec.from_settings(settings, backend),
        minsim=minsim,
        minblur=minblur,
        max_faces=max_faces,
        workers=workers,
        on_progress=on_progress,
    )
