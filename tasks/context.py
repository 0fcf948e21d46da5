"""One flow run's live objects, handed explicitly to the tasks that use them (issue 25).

Why: the tasks found the run's budget ledger, its rate dispatcher and the QC stream of its folder in
process-wide dictionaries keyed by strings (a run id, a limit's name, a folder path), filled by one module
and read by another; two runs in one process on the same limit or folder met in them, and a missing entry
was a ``None`` found at run time. Now the generate flow builds a ``RunContext`` once and passes it to every
image task (an in-process object: the flow's task runner is a thread pool), and the QC stream a flow opens
is passed to its task and, for the generate subflows it wraps, scoped with ``qc_stream_scope``.

What stays process-wide, on purpose: the stop flag (signals reach a process, not a run:
``shared_limits.clients.RUN_STOP``), the pooled HTTP clients (one connection pool per credentials) and the
send clock of a limit (every run of a process shares the provider's rate).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import TYPE_CHECKING

from ai_influencer.pacing import StopFlag
from shared_limits.clients import RUN_STOP

if TYPE_CHECKING:
    from ai_influencer import usecases
    from ai_influencer.openrouter import OpenRouterClient
    from shared_limits.rate import RateDispatcher
    from tasks.streaming import QCStream


class RunContext:
    """What the tasks of one generate run share: its id, output folder, client, budget ledger, rate
    dispatcher, the QC stream checking its folder (if any) and the stop flag.

    A plain class, not a dataclass: Prefect walks dataclass and model parameters looking for futures, and this
    one holds threads and sockets.
    """

    def __init__(
        self,
        *,
        run_id: str,
        out_dir: Path,
        client: OpenRouterClient,
        ledger: usecases.CostLedger,
        dispatcher: RateDispatcher | None = None,
        qc: QCStream | None = None,
        stop: StopFlag = RUN_STOP,
    ) -> None:
        self.run_id, self.out_dir, self.client, self.ledger = run_id, out_dir, client, ledger
        self.dispatcher, self.qc, self.stop = dispatcher, qc, stop

    def __repr__(self) -> str:  # the task run's parameters in logs: no client, no secrets
        return f"RunContext(run_id={self.run_id!r}, out_dir={str(self.out_dir)!r})"


_open_stream: ContextVar[QCStream | None] = ContextVar("open_qc_stream", default=None)


@contextmanager
def qc_stream_scope(stream: QCStream) -> Iterator[None]:
    """Within this block (the flow that opened the stream and the subflows it calls, in this thread), the
    generate flow finds the stream checking its folder (``open_qc_stream``)."""
    token = _open_stream.set(stream)
    try:
        yield
    finally:
        _open_stream.reset(token)


def open_qc_stream(folder: Path) -> QCStream | None:
    """The QC stream opened around this flow for ``folder``; None when none is (or it checks another folder)."""
    stream = _open_stream.get()
    if stream is None or stream.stream.cand_dir.resolve() != Path(folder).resolve():
        return None
    return stream


class VideoRunContext:
    """What the clip tasks of one video run share: the Video API, the clip store and budget, the wait policy,
    the identity checker, the jobs-at-once limit, and the run's halt flag (a fatal answer stops new submits).

    Handed to each ``video_clip_task`` (a plain class for the same reason as ``RunContext``); the tasks found
    it in a registry keyed by the run id before.
    """

    def __init__(
        self,
        *,
        run_id: str,
        api: usecases.video.VideoAPI,
        store: usecases.video.VideoStore,
        budget: usecases.video.VideoBudget,
        policy: usecases.video.WaitPolicy,
        identity: usecases.video.ClipIdentityChecker | None,
        retry_failed: bool,
        limit_name: str,
        stop: StopFlag = RUN_STOP,
    ) -> None:
        self.run_id, self.api, self.store, self.budget, self.policy = run_id, api, store, budget, policy
        self.identity, self.retry_failed, self.limit_name, self.stop = identity, retry_failed, limit_name, stop
        self.halt = StopFlag()

    def __repr__(self) -> str:  # the task run's parameters in logs: no client, no secrets
        return f"VideoRunContext(run_id={self.run_id!r}, limit={self.limit_name!r})"
