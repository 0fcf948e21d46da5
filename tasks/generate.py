"""The per-request Prefect task: one paid request (up to n images) behind the run's shared slots and
the rate limit.

Its output files are its cache (one per slot), so it persists no result; HTTP faults are retried by
the OpenRouter client only (see shared_limits.retry).
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.concurrency.sync import concurrency, rate_limit
from prefect.runtime import task_run

from ai_influencer.costs import BudgetExceededError, CostLedger, RunHaltedError
from ai_influencer.generation.engine import GenerationOutcome, ImageRequest, generate_one
from ai_influencer.openrouter import AuthError, InsufficientCreditsError, OpenRouterError
from ai_influencer.openrouter.capabilities import ImageRoute
from ai_influencer.pacing import AdaptiveRate, StopRequested
from shared_limits.clients import RUN_STOP, openrouter_client
from shared_limits.rate import RateDispatcher, send_clock, take_rate_slots
from shared_limits.retry import retry_options
from tasks.results import ImageTaskResult

# ---- generate one image --------------------------------------------------------------
_ledgers: dict[str, CostLedger] = {}
_ledgers_lock = threading.Lock()


def ledger_for(run_id: str, budget_usd: float | None, estimate_usd: float | None) -> CostLedger:
    """The one ledger of a flow run, shared by the run's task threads (tasks run in the flow's process).

    Created under a lock: two threads checking and inserting at once made two ledgers that each
    allowed the whole budget.
    """
    with _ledgers_lock:
        ledger = _ledgers.get(run_id)
        if ledger is None:
            ledger = _ledgers[run_id] = CostLedger(budget_usd=budget_usd, estimate_usd=estimate_usd)
        return ledger


def release_ledger(run_id: str) -> CostLedger | None:
    """Forget a finished run's ledger (a long-lived worker process runs many flows)."""
    with _ledgers_lock:
        return _ledgers.pop(run_id, None)


class _TaskPacer:
    """The pacer of one image task: every attempt at its exact send time, 429s slow the process down.

    The first attempt of the first task run goes at the dispatcher's send time (its rate slot is
    already taken); any other (a retry) takes a slot of its own first: from the flow's dispatcher
    in this process, else from the server. Sends are spaced by the per-process send clock at the
    adaptive rate, and a 429 pause holds every task of the process.
    """

    def __init__(self, rate_limit_name: str, send_at: float | None, send_rate_per_s: float) -> None:
        self.name = rate_limit_name
        self.send_at = send_at
        self.rate = send_rate_per_s
        self.attempts = 0
        self.dispatcher = RateDispatcher.active(rate_limit_name)
        self.adaptive = self.dispatcher.adaptive if self.dispatcher else AdaptiveRate(send_rate_per_s or None)
        self.adaptive.stop = self.adaptive.stop or RUN_STOP

    def before_send(self) -> None:
        RUN_STOP.check()
        self.attempts += 1
        if self.send_at is None:
            rate_limit(self.name, occupy=1, strict=True)
            self.adaptive.hold()
            return
        not_before = self.send_at
        if self.attempts > 1 or task_run.run_count > 1:
            if self.dispatcher is not None:  # the flow's own process: its dispatcher hands out the slot
                not_before = self.dispatcher.next_send_time(lead_s=0.0)
            else:
                with get_client(sync_client=True) as client:
                    take_rate_slots(client, self.name, 1)
                not_before = 0.0
        self.adaptive.hold()
        rate = (
            self.dispatcher.send_rate
            if self.dispatcher is not None
            else min(self.rate, self.adaptive.rate or self.rate)
        )
        send_clock.wait(self.name, not_before, rate)
        RUN_STOP.check()

    def on_response(self, rate_limited: bool, retry_after: float | None = None) -> None:
        self.adaptive.on_response(rate_limited, retry_after)


@task(
    name="generate-image",
    # No tags on purpose: Prefect asks the server for tag-based concurrency slots for every tagged task
    # run, through one serialized queue per tag set, and on a SQLite server each "database is locked"
    # (503) in that queue held every image behind it for 2-6 s (measured: 3.6 vs 9+ images/s). The
    # in-flight cap and the rate limit are our own global limits; find image runs by the task name.
    task_run_name="image {request.key}",
    # The content-addressed output file is this task's cache; Prefect's input hashing and result
    # store lookups would only add per-image overhead.
    cache_policy=NO_CACHE,
    persist_result=False,
    **retry_options(),
)
def generate_image_task(
    request: ImageRequest,
    route: ImageRoute,
    out_dir: str,
    references: list[str],
    rate_limit_name: str,
    inflight_limit_name: str,
    run_id: str,
    budget_usd: float | None = None,
    estimate_usd: float | None = None,
    send_at: float | None = None,
    send_rate_per_s: float = 0.0,
) -> ImageTaskResult:
    """One paid request for the slots ``request`` owes, sent as ``route`` says (checked before the run);
    behind the in-flight cap and the rate limit; the slots' files make it idempotent.

    Run standalone, the task takes one in-flight slot and one rate-limit slot itself. Dispatched by
    ``generate_flow`` (``send_at`` given), the flow already holds the in-flight slots and took this
    request's rate slot: the task only waits for its send time (see ``_TaskPacer``). HTTP faults are
    retried by the client only; a drained run (SIGTERM, cancellation) sends nothing new.
    """

    @contextmanager
    def gate():
        if send_at is None:
            with concurrency(inflight_limit_name, occupy=1, strict=True):
                yield
        else:
            yield

    ledger = ledger_for(run_id, budget_usd, estimate_usd)
    try:
        outcome: GenerationOutcome = generate_one(
            openrouter_client(),
            request,
            Path(out_dir),
            route=route,
            references=[Path(r) for r in references],
            gate=gate,
            pacer=_TaskPacer(rate_limit_name, send_at, send_rate_per_s),
            ledger=ledger,
            run_id=run_id,
        )
    except StopRequested as exc:
        return _not_sent(request, "stopped", exc)
    except BudgetExceededError as exc:
        return _not_sent(request, "budget", exc)
    except RunHaltedError as exc:
        return _not_sent(request, "halted", exc)
    except (AuthError, InsufficientCreditsError) as exc:
        ledger.halt(str(exc))  # every other image of this run would fail the same way: send no more requests
        get_run_logger().error("image %s: %s; no further requests are sent in this run", request.key, exc)
        raise
    except OpenRouterError as exc:
        get_run_logger().warning("image %s failed: %s", request.key, exc)
        raise
    fresh = [r for r in outcome.records if r.file in outcome.fresh]
    if outcome.short:
        get_run_logger().warning("request %s: %s (the rest stay owed)", request.key, outcome.error)
    return ImageTaskResult(
        key=request.key,
        status=outcome.status,
        images=outcome.images,  # (file, paid now) of every image of its slots on disk
        file=outcome.record.file if outcome.record else None,
        asked=outcome.asked,
        slots=request.n,
        new=outcome.new,
        short=outcome.short,
        cost_usd=sum(r.cost_usd or 0.0 for r in fresh),
        unpriced=bool(fresh and fresh[0].cost_usd is None),
        scene=request.meta.get("scene"),
    )


def _not_sent(request: ImageRequest, status: str, exc: Exception) -> ImageTaskResult:
    return ImageTaskResult(key=request.key, status=status, error=str(exc), slots=request.n)
