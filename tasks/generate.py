"""The per-request Prefect task: one paid request (up to n images) behind the run's shared slots and
the rate limit. The run's client, budget ledger, rate dispatcher and stop flag come with the task's
``context`` (``tasks.context.RunContext``), built once by the generate flow.

Its output files are its cache (one per slot), so it persists no result; HTTP faults are retried by
the OpenRouter client only (see shared_limits.retry).
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.concurrency.sync import concurrency, rate_limit
from prefect.runtime import task_run

from ai_influencer.adaptive_pacing import AdaptiveRate
from ai_influencer.costs import BudgetExceededError, CostLedger, RunHaltedError
from ai_influencer.generation.engine import GenerationOutcome, ImageRequest, generate_one
from ai_influencer.openrouter import AuthError, InsufficientCreditsError, OpenRouterError
from ai_influencer.openrouter.capabilities import ImageRoute
from ai_influencer.pacing import StopFlag, StopRequested
from shared_limits.clients import openrouter_client
from shared_limits.rate import RateDispatcher, send_clock, take_rate_slots
from shared_limits.retry import retry_options
from tasks.context import RunContext
from tasks.results import ImageTaskResult


class _TaskPacer:
    """The pacer of one image task: every attempt at its exact send time, 429s slow the process down.

    The first attempt of the first task run goes at the dispatcher's send time (its rate slot is
    already taken); any other (a retry) takes a slot of its own first: from the flow's dispatcher
    in this process, else from the server. Sends are spaced by the per-process send clock at the
    adaptive rate, and a 429 pause holds every task of the process.
    """

    def __init__(
        self,
        rate_limit_name: str,
        send_at: float | None,
        send_rate_per_s: float,
        *,
        dispatcher: RateDispatcher | None,
        stop: StopFlag,
    ) -> None:
        self.name = rate_limit_name
        self.send_at = send_at
        self.rate = send_rate_per_s
        self.attempts = 0
        self.stop = stop
        self.dispatcher = dispatcher  # the run's, in the flow's process: a retry takes its slot there
        self.adaptive = self.dispatcher.adaptive if self.dispatcher else AdaptiveRate(send_rate_per_s or None)
        self.adaptive.stop = self.adaptive.stop or stop

    def before_send(self) -> None:
        self.stop.check()
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
        self.stop.check()

    def on_response(self, rate_limited: bool, retry_after: float | None = None, *, own_limit: bool = False) -> None:
        self.adaptive.on_response(rate_limited, retry_after, own_limit=own_limit)


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
    context: RunContext | None = None,
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

    if context is None:  # standalone: this process's client, no budget, no dispatcher
        context = RunContext(run_id=str(task_run.id), out_dir=Path(out_dir), client=openrouter_client(),
                             ledger=CostLedger())  # fmt: skip
    ledger = context.ledger
    pacer = _TaskPacer(rate_limit_name, send_at, send_rate_per_s, dispatcher=context.dispatcher, stop=context.stop)
    try:
        outcome: GenerationOutcome = generate_one(
            context.client,
            request,
            Path(out_dir),
            route=route,
            references=[Path(r) for r in references],
            gate=gate,
            pacer=pacer,
            ledger=ledger,
            run_id=context.run_id,
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
