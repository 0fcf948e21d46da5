"""The hybrid flow's review pause (issue 28, ``HybridParams.review``): after QC, the run waits for the user.

Why a pause and not a suspension: ``suspend_flow_run`` ends the flow's process and needs a deployment to
start it again, so ``influencer run`` (the flow in-process, no deployment) could never resume; a paused run
keeps its process and goes on where it stopped, the same for ``influencer run``, the hub's runner and a
worker. While it waits, the run's state is Paused, with a Prefect input form (``ReviewDecision``) whose
description links to the hub's review page.

Resumed with ``continue``: QC runs again as a subflow with the user's verdicts (every analysis comes from
the QC cache, about a second) and publishes ``qc_passed/``, so augment and train use the overridden set.
``stop``: the run ends Completed, named ``StoppedAtReview``, before augment. Nobody answers within
``review_timeout_s``: the run ends Failed, named ``ReviewTimedOut`` (``await_review`` says why it is not
Prefect's own pause timeout); in both cases QC's outputs and the user's verdicts are kept, and a later run
(or ``influencer augment`` / ``train``) goes on from there.
"""

from __future__ import annotations

import threading
from typing import Literal

from prefect import get_run_logger
from prefect.client.orchestration import get_client
from prefect.client.schemas.responses import SetStateStatus
from prefect.context import FlowRunContext
from prefect.exceptions import FlowPauseTimeout
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput
from prefect.states import Completed, Failed, State
from pydantic import Field

from ai_influencer.settings import Settings
from flows.params import HybridParams
from flows.results import HybridSummary, ReviewResult
from flows.stages import qc_flow
from tasks.results import QCSummary

STOPPED = "StoppedAtReview"
TIMED_OUT = "ReviewTimedOut"
POLL_S = 5  # how often the paused run asks whether it was resumed
SERVER_GRACE_S = 120  # Prefect's own pause deadline, after ours (flows/review.py's watchdog ends the review first)


class ReviewTimedOut(RuntimeError):
    """The state's exception of a run whose review was not answered in time.

    Why an exception and not the run's summary: Prefect takes a Failed state's data as its exception;
    with the summary there, every timed-out run logged "Engine execution exited with unexpected exception
    ... TypeError: Unexpected result for failed state" with a traceback on the worker, and ``influencer run``
    would have ended in that TypeError instead of this message."""


class ReviewDecision(RunInput):
    """The form the paused run shows in the Prefect UI (and takes as ``run_input`` through the API)."""

    action: Literal["continue", "stop"] = Field(
        default="continue",
        description="continue: QC again with your verdicts, then augment and train; stop: end the run here.",
    )


def review_page_url(settings: Settings) -> str:
    """The hub's review page as a browser on this machine reaches it (a hub bound to every address included)."""
    host = settings.hub_host if settings.hub_host not in ("0.0.0.0", "::", "") else "127.0.0.1"
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{settings.hub_port}/review"


def _description(url: str, qc: QCSummary | None) -> str:
    counts = ""
    if qc is not None:
        counts = f" QC accepted {qc.accepted} and rejected {qc.rejected} images."
    return (
        f"**Review QC's verdicts before augment and train.**{counts}\n\n"
        f"Open the review page: [{url}]({url}) (start it with `influencer hub` if it is not running). "
        "Accept (A) or reject (R) images there; your verdicts win over QC's.\n\n"
        "Then resume this run: **continue** runs QC again with your verdicts as they stand then and goes on to "
        "augment and train with that set; **stop** ends the run here (QC's outputs and your verdicts are kept)."
    )


def await_review(url: str, qc: QCSummary | None, timeout_s: int) -> str:
    """Pause the running flow until the user answers the form: ``continue``, ``stop`` or ``timeout``.

    Why a deadline of our own: a pause that Prefect lets expire can only end Failed with Prefect's message
    (the server refuses any other state after it), so the run could not say what happened. At
    ``timeout_s`` a watchdog resumes the run itself (input ``stop``) and the run ends in a state named
    ``ReviewTimedOut``; Prefect's own expiry, ``SERVER_GRACE_S`` later, only catches a run whose process died.
    """
    form = ReviewDecision.with_initial_data(description=_description(url, qc), action="continue")
    get_run_logger().info("waiting for your review at %s (then resume this run: continue or stop)", url)
    run_id = FlowRunContext.get().flow_run.id  # type: ignore[union-attr]  (a flow is running: hybrid_flow)
    expired = threading.Event()
    answered = threading.Event()

    def watchdog() -> None:
        if answered.wait(timeout_s):
            return
        expired.set()
        with get_client(sync_client=True) as client:
            result = client.resume_flow_run(run_id, run_input={"action": "stop"})
        if result.status != SetStateStatus.ACCEPT:  # the user answered in the same instant: theirs stands
            expired.clear()

    thread = threading.Thread(target=watchdog, name="review-deadline", daemon=True)
    thread.start()
    try:
        decision = pause_flow_run(
            wait_for_input=form, timeout=timeout_s + SERVER_GRACE_S, poll_interval=POLL_S, key="review"
        )
    except FlowPauseTimeout:  # the watchdog could not resume it (the server was unreachable at the time)
        return "timeout"
    finally:
        answered.set()
        thread.join(30)
    return "timeout" if expired.is_set() else decision.action


def review_after_qc(p: HybridParams, settings: Settings, out: HybridSummary) -> State | None:
    """The pause after QC; on ``continue`` QC is published again with the user's verdicts (``out.qc``) and
    None is returned (the flow goes on). Otherwise the state the run ends in, its result being ``out``."""
    url = review_page_url(settings)
    rounds_qc = getattr(out.generate, "qc", None)  # generate-until-N: the rounds ran QC
    qc = out.qc if out.qc is not None else rounds_qc
    decision = await_review(url, qc, p.review_timeout_s)
    out.review = ReviewResult(decision=decision, page=url)
    if decision == "timeout":
        message = (
            f"review not answered within {p.review_timeout_s} s ({url}); stopped after QC: its outputs and your "
            "verdicts are kept, run again (or `influencer augment`, `influencer train`) to go on"
        )
        return Failed(name=TIMED_OUT, message=message, data=ReviewTimedOut(message))
    if decision == "stop":
        return Completed(name=STOPPED, message="stopped at the review, before augment (as asked)", data=out)
    out.qc = qc_flow(p.qc, p.paths)  # the user's verdicts win; analyses come from the QC cache
    out.review.accepted = out.qc.accepted
    return None
