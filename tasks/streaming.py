"""Streamed QC inside a flow run: the open stream of a candidate folder, and the QC task that publishes it.

The hybrid flow (and generate-until-N) opens the stream, submits ``qc_stream_task`` and then runs the
generate subflow in the same process. The generate flow finds the stream by its output folder
(``stream_for``) and hands it every finished image, and with a target it stops dispatching once
enough images pass (``ai_influencer.qc.stream.UntilAccepted``). The task waits until the
stream is closed, then publishes what batch QC publishes: the same report, contact sheet, artifacts
and summary. Each stage keeps its own run in the UI: generate as its subflow, QC as this task.

A registry rather than a flow parameter: a stream is a live object of this process (worker processes,
open files), which no parameter can carry, and the generate deployment's run form stays as it is.
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


_streams: dict[str, QCStream] = {}
_lock = threading.Lock()


def _key(folder: str | Path) -> str:
    return str(Path(folder).resolve())


def stream_for(folder: str | Path) -> QCStream | None:
    """The stream checking ``folder`` in this process, if a flow opened one."""
    with _lock:
        return _streams.get(_key(folder))


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
) -> Iterator[QCStream]:
    """Check the references (a bad one fails here, before anything is paid), then keep the stream open
    for the generate flow; closed and removed on exit."""
    job = usecases.QCJob.for_options(ref_dir, cand_dir, out_dir, options, cache_dir=cache_dir)
    stream = usecases.qc_stream(settings, job)
    key = _key(cand_dir)
    with stream:
        handle = QCStream(stream, options, target)
        with _lock:
            if key in _streams:
                raise RuntimeError(f"{cand_dir} already has a QC stream in this process (two runs on one folder)")
            _streams[key] = handle
        try:
            yield handle
        finally:
            with _lock:
                _streams.pop(key, None)


@task(name="qc", tags=["vision", "qc"], task_run_name="qc (streamed) {cand_dir}", cache_policy=NO_CACHE)
def qc_stream_task(cand_dir: str) -> QCSummary:
    """QC of the folder's stream: checks images while they are generated, then publishes the verdicts.

    No Prefect retries: the stream is a live object of this run. A failure leaves every analysis made
    so far in the workspace's QC cache, so the next run resumes without checking those images again.
    """
    handle = stream_for(cand_dir)
    if handle is None:
        raise RuntimeError(f"no QC stream is open for {cand_dir} in this process")
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
