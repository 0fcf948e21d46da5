"""Generate and QC overlapped: QC checks each image as it is generated (``HybridParams.streaming``).

    with streamed_qc(qc_params, paths) as box:
        box.generate = generate_flow(...)     # any number of generate subflows (rounds)
    box.qc                                   # the QC stage's summary, as qc_flow returns it

On exit the stream is closed and the QC task finishes over every image in the folder, also when
generation failed: images already paid for are checked and reported all the same.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from ai_influencer.settings import Settings
from ai_influencer.usecases.qc import StreamingQC
from flows.params import Paths, QCParams
from tasks.context import qc_stream_scope
from tasks.results import QCSummary
from tasks.streaming import open_stream, qc_stream_task


@dataclass
class Streamed:
    stream: StreamingQC
    qc: QCSummary | None = None  # set when the stream is closed and its QC task finished


@contextmanager
def streamed_qc(qc: QCParams, paths: Paths, settings: Settings, target: int | None = None) -> Iterator[Streamed]:
    """Must run inside a flow (it submits the QC task to the flow's task runner); params resolved."""
    ws = paths.workspace()
    qc = qc.for_workspace(ws)  # empty thresholds: this persona's calibration, else the defaults
    assert qc.minsim is not None and qc.minblur is not None
    with open_stream(
        settings, ref_dir=ws.cleaned, cand_dir=ws.synth, out_dir=ws.qc_passed, cache_dir=ws.qc_cache, options=qc,
        target=target, overrides=ws.qc_overrides,
    ) as handle:  # fmt: skip
        future = qc_stream_task.submit(str(ws.synth), handle)
        box = Streamed(handle.stream)
        try:
            with qc_stream_scope(handle):  # the generate subflows in this block find it
                yield box
        except BaseException:
            handle.stream.close()
            future.wait()  # the paid images are checked and reported; generation's error is the one raised
            raise
        handle.stream.close()
        box.qc = future.result()
