"""Use case: identity QC of the generated images (the manual's qc_face_sim.py), batch or streamed."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ai_influencer.options.qc import QCOptions
from ai_influencer.qc.analysis import EngineSpec, ProgressCallback
from ai_influencer.qc.decision import QCThresholds
from ai_influencer.qc.stage import QCResult, run_qc
from ai_influencer.qc.stream import StreamingQC, UntilAccepted
from ai_influencer.review.overrides import OverrideStore
from ai_influencer.review.persona import effective_thresholds as effective_thresholds  # for the QC flows
from ai_influencer.settings import Settings


@dataclass(frozen=True)
class QCJob:
    """One QC: three folders and the thresholds. Batch and streamed QC take the same job, so they cannot
    drift apart in what they check. A bad threshold fails when the thresholds are made, before any image is
    touched; ``for_options`` makes the job of a run's QC options (``options.qc.QCOptions``).

    ``cache_dir`` (the workspace's ``qc_cache``) keeps each image's analysis: an image checked before,
    in batch or streamed, is not analysed again. ``overrides`` (the workspace's ``qc_overrides``): the
    user's verdicts from the review page, which win over QC's own (``review.overrides``).
    """

    ref_dir: Path
    cand_dir: Path
    out_dir: Path
    thresholds: QCThresholds = field(default_factory=QCThresholds)
    backend: str | None = None
    workers: int | None = None
    cache_dir: Path | None = None
    overrides: Path | None = None

    @classmethod
    def for_options(cls, ref_dir: Path, cand_dir: Path, out_dir: Path, options: QCOptions, **job: Any) -> QCJob:
        """The job of a run's QC options: their thresholds and face backend (``job``: the other fields)."""
        return cls(ref_dir, cand_dir, out_dir, QCThresholds.from_options(options), backend=options.backend, **job)

    @property
    def override_store(self) -> OverrideStore | None:
        return OverrideStore(self.overrides) if self.overrides is not None else None


def qc(settings: Settings, job: QCJob, *, on_progress: ProgressCallback | None = None) -> QCResult:
    """Score, filter and dedupe the candidates against the references."""
    return run_qc(
        job.ref_dir,
        job.cand_dir,
        job.out_dir,
        spec=EngineSpec.from_settings(settings, job.backend),
        thresholds=job.thresholds,
        workers=job.workers,
        on_progress=on_progress,
        cache_dir=job.cache_dir,
        overrides=job.override_store,
    )


def qc_stream(settings: Settings, job: QCJob) -> StreamingQC:
    """The same QC, checking each image as it arrives (enter it, feed it, ``close()``, ``result()``);
    its result equals ``qc`` over the same folders."""
    return StreamingQC(
        job.ref_dir,
        job.cand_dir,
        job.out_dir,
        thresholds=job.thresholds,
        spec=EngineSpec.from_settings(settings, job.backend),
        workers=job.workers,
        cache_dir=job.cache_dir,
        overrides=job.override_store,
    )


__all__ = ["QCJob", "StreamingQC", "UntilAccepted", "qc", "qc_stream"]
