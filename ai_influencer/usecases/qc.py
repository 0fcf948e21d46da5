"""Use case: identity QC of the generated images (the manual's qc_face_sim.py), batch or streamed."""

from __future__ import annotations

from pathlib import Path

from ai_influencer.settings import Settings
from ai_influencer.vision.qc import EngineSpec, ProgressCallback, QCResult, QCThresholds, run_qc
from ai_influencer.vision.qc_stream import StreamingQC


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
    cache_dir: Path | None = None,
) -> QCResult:
    """Score, filter and dedupe the candidates against the references; a bad threshold fails first.

    ``cache_dir`` (the workspace's ``qc_cache``) keeps each image's analysis: an image checked before,
    in batch or streamed, is not analysed again.
    """
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
        cache_dir=cache_dir,
    )


def qc_stream(
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
    cache_dir: Path | None = None,
) -> StreamingQC:
    """The same QC, checking each image as it arrives (enter it, feed it, ``close()``, ``result()``);
    its result equals ``qc`` over the same folders."""
    return StreamingQC(
        ref_dir,
        cand_dir,
        out_dir,
        thresholds=QCThresholds(minsim=minsim, minblur=minblur, max_faces=max_faces),
        spec=EngineSpec.from_settings(settings, backend),
        workers=workers,
        cache_dir=cache_dir,
    )
