"""Streamed QC inside a flow run: the open stream of a candidate folder, and the QC task that publishes it.

The hybrid flow (and generate-until-N) opens the stream, submits ``qc_stream_task`` with it and then runs
the generate subflow in the same thread, inside ``tasks.context.qc_stream_scope``. The generate flow finds
the stream there (``open_qc_stream``, for its output folder) and hands it every finished image, and with a
target it stops dispatching once enough images pass (``ai_influencer.qc.stream.UntilAccepted``). The task
waits until the stream is closed, then publishes what batch QC publishes: the same report, contact sheet,
artifacts and summary. Each stage keeps its own run in the UI: generate as its subflow, QC as this task.

A scope rather than a flow parameter: a stream is a live object of this process (worker processes, open
files), which no parameter can carry, and the generate deployment's run form stays as it is.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from ai_influencer import usecases
from ai_influencer.options import QCOptions
from ai_influencer.qc.stream import StreamingQC
from ai_influencer.settings import Settings
from shared_limits.artifacts import ProgressArtifact
from tasks.results import QCSummary
from tasks.stages import publish_qc


@dataclass
class QCStream:
    """The stream of one candidate folder in this process, and the target of generate-until-N if any."""

    stream: StreamingQC
    options: QCOptions
    target: int | None = None


# The folders with an open stream in this process: a guard (two runs streaming one folder would each
# write its report), not a way to find a stream.
_open_folders: set[Path] = set()
_lock = threading.Lock()


@contextmanager
def open_stream(
    settings: Settings,
    ref_dir: Path,
    cand_dir: Path,
    out_dir: Path,
    cache_dir: Path,
    *,
    options: QCOptions,
    target: int | None = None,
    overrides: Path | None = None,
) -> Iterator[QCStream]:
    """Check the references (a bad one fails here, before anything is paid), then keep the stream open
    for the generate flow; closed on exit."""
    job = usecases.QCJob.for_options(ref_dir, cand_dir, out_dir, options, cache_dir=cache_dir, overrides=overrides)
    stream = usecases.qc_stream(settings, job)
    folder = Path(cand_dir).resolve()
    with stream:
        with _lock:
            if folder in _open_folders:
                raise RuntimeError(f"{cand_dir} already has a QC stream in this process (two runs on one folder)")
            _open_folders.add(folder)
        try:
            yield QCStream(stream, options, target)
        finally:
            with _lock:
                _open_folders.discard(folder)


@task(name="qc", tags=["vision", "qc"], task_run_name="qc (streamed) {cand_dir}", cache_policy=NO_CACHE)
def qc_stream_task(cand_dir: str, handle: QCStream) -> QCSummary:
    """QC of the folder's stream: checks images while they are generated, then publishes the verdicts.

    No Prefect retries: the stream is a live object of this run. A failure leaves every analysis made
    so far in the workspace's QC cache, so the next run resumes without checking those images again.
    """
    stream = handle.stream
    progress = ProgressArtifact("qc-progress", "QC: images checked as they arrive")
    while not stream.wait_closed(1.0):
        progress(stream.checked, max(1, stream.seen), "")
    result = stream.result()
    progress(len(result.rows), max(1, len(result.rows)), "")
    pool = stream.pool
    get_run_logger().info(
        "streamed QC: %d images, %d analysed now, %d from the QC cache", len(result.rows), pool.analysed,
        pool.from_cache,
    )  # fmt: skip
    summary = publish_qc(result, handle.options)
    return summary.model_copy(update={"streamed": True, "analysed": pool.analysed, "from_cache": pool.from_cache})
