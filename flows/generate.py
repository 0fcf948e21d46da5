"""The generation fan-out: every request (up to n images) is its own retrying task; the engine is the
CLI's (``ai_influencer.generation.dispatch.dispatch``), with slots shared through the Prefect server. Before the
first request the plan, the route (every parameter checked against its endpoint) and the price
estimate are logged and published as a markdown artifact (``generate-plan``)."""

from __future__ import annotations

import contextlib
import gc
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from uuid import UUID

from prefect import flow, get_run_logger
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.runtime import flow_run
from prefect.task_runners import ThreadPoolTaskRunner

from ai_influencer import usecases
from ai_influencer.dataset.workspace import Workspace
from ai_influencer.options import GenerateOptions
from ai_influencer.options.fields import default_of
from ai_influencer.settings import Settings
from ai_influencer.usecases.generate import (
    AdaptiveRate,
    CostLedger,
    Dispatched,
    ImageRequest,
    ImageRoute,
    PacingStats,
    StopRequested,
    dispatch,
    drain_on_signals,
    iter_reference_images,
    rate_limit_capacity,
    rebuild_manifest,
)
from ai_influencer.usecases.qc import StreamingQC, UntilAccepted
from flows.params import GenerateParams, Paths, current_params
from flows.results import GenerateSummary
from shared_limits.clients import RUN_STOP, openrouter_client
from shared_limits.limits import InflightPool, RunSeat, context_thread, ensure_limit
from shared_limits.prefect_compat import flush_api_logs
from shared_limits.rate import RateDispatcher, SharedSlots
from tasks.context import RunContext, open_qc_stream
from tasks.generate import generate_image_task
from tasks.results import ImageTaskResult
from tasks.streaming import QCStream

INFLIGHT_LEASE_S = 60.0  # the server accepts >= 60 s


def _name() -> str:
    p = current_params()
    model = (p.get("model") or "default").split("/")[-1]
    return f"generate-{model}-{p.get('per_scene', default_of(GenerateOptions, 'per_scene'))}per-scene"


@flow(name="generate", flow_run_name=_name, log_prints=True, task_runner=ThreadPoolTaskRunner(max_workers=64))
def generate_flow(params: GenerateParams = GenerateParams(), paths: Paths = Paths()) -> GenerateSummary:
    """Generate ``per_scene`` images per scene; finished images are never paid for again.

    SIGTERM (a Prefect cancellation, a stopped worker) or Ctrl-C drains the run: nothing new is
    sent, requests already sent finish (each within the client's deadline) and are saved, the
    manifest is rebuilt, and only then is the signal passed on to Prefect.
    """
    s = Settings()
    params, paths = params.resolve(s), paths.resolve(s)
    ws = paths.workspace()
    assert params.model is not None
    plan = usecases.plan_requests(
        paths.bank, ws.synth, params, references=ws.cleaned if params.use_references else None
    )
    lim = params.limits
    rate_state, burst, rate = ensure_limit(
        lim.rate_limit_name, rate_limit_capacity(lim.rate_per_s), slot_decay_per_second=lim.rate_per_s
    )
    inflight_state, max_inflight, _ = ensure_limit(lim.inflight_limit_name, lim.max_inflight)
    if rate <= 0:
        raise ValueError(f"global concurrency limit {lim.rate_limit_name!r} has no slot decay: it is not a rate limit")
    logger = get_run_logger()
    logger.info(
        "%s (rate limit %s %s: %.2f req/s; in-flight %s %s: %d)",
        plan.summary(), lim.rate_limit_name, rate_state, rate, lim.inflight_limit_name, inflight_state, max_inflight,
    )  # fmt: skip
    # Free calls only; an unsupported parameter or a budget without a price fails here, in one line, before
    # the first paid request (the CLI's checks: usecases.start_run).
    route = usecases.start_run(
        openrouter_client(), plan, budget_usd=params.budget_usd, estimate_usd=params.estimate_usd
    )
    if route is not None:
        for line in usecases.describe_plan(plan, route):
            logger.info("plan: %s", line)
        create_markdown_artifact(
            usecases.plan_markdown(plan, route, params.budget_usd),
            key="generate-plan",
            description="What this run will ask and pay for, before its first request",
        )
    run = _Run(
        params=params, plan=plan, ws=ws, run_id=str(flow_run.id or "local"), route=route, rate=rate, burst=burst,
        max_inflight=max_inflight,
    )  # fmt: skip
    RUN_STOP.clear()
    with drain_on_signals(RUN_STOP):
        return run.execute()


def check_image_route(params: GenerateParams, paths: Paths) -> ImageRoute:
    """The generate stage's options checked against the image endpoint: free calls only, so that a run
    (the hybrid flow) fails on an unsupported option before it pays for anything, its plan included."""
    s = Settings()
    params, paths = params.resolve(s), paths.resolve(s)
    assert params.model is not None
    ws = paths.workspace()
    refs = 0
    if params.use_references:  # the cleaned photos, or before prepare ran, the photos it will clean
        refs = len(list(iter_reference_images(ws.cleaned))) or len(list(iter_reference_images(ws.input_raw)))
    return usecases.check_route(openrouter_client(), params.model, params.image_options(), references=refs)


class _Run:
    """One generate flow run: the shared engine (``dispatch``) with slots shared through the server."""

    def __init__(
        self,
        *,
        params: GenerateParams,
        plan: usecases.RequestPlan,
        ws: Workspace,
        run_id: str,
        route: ImageRoute | None,
        rate: float,
        burst: int,
        max_inflight: int,
    ) -> None:
        self.params, self.plan, self.ws, self.run_id = params, plan, ws, run_id
        self.route, self.rate, self.burst, self.max_inflight = route, rate, burst, max_inflight
        self.logger = get_run_logger()
        self.pacing = PacingStats()
        self.until: UntilAccepted | None = None
        # The run's one budget ledger, made before any task runs: every image task checks it (RunContext).
        self.ledger = CostLedger(budget_usd=params.budget_usd, estimate_usd=params.estimate_usd)

    def execute(self) -> GenerateSummary:
        done = Dispatched([], [], list(self.plan.todo))
        with contextlib.suppress(StopRequested):  # stopped while waiting for a seat: nothing was sent
            done = self._dispatch()
        if RUN_STOP.is_set():
            self.logger.warning(
                "stopped (%s): all %d requests sent have finished, their images are saved; %d not sent",
                RUN_STOP.reason, len(done.results) + len(done.errors), len(done.not_sent),
            )  # fmt: skip
            flush_api_logs()  # on the server before the signal is passed on and the run is Cancelled
        return self._summarise(done, self.ledger)

    def _dispatch(self) -> Dispatched:
        # Sharing with other runs (other workers, the hub, a cron run): this run holds a seat among the
        # runs that use this provider limit, and from it the in-flight slots and the requests per second
        # of its fair share, which shrink when a run joins and grow when one leaves (see shared_limits.limits).
        # In-flight slots are unit leases renewed in the background: a killed run's come back when they
        # expire (INFLIGHT_LEASE_S), on the embedded server too (reclaim_expired_leases).
        lim, todo = self.params.limits, self.plan.todo
        with (
            frozen_heap(),
            RunSeat(
                lim.rate_limit_name,
                lease_s=INFLIGHT_LEASE_S,
                stop=RUN_STOP,
                logger=self.logger,
                workspace=str(self.ws.data_root.resolve()),
            ) as seat,
            InflightPool(
                lim.inflight_limit_name, seat, self.max_inflight, lease_s=INFLIGHT_LEASE_S, stop=RUN_STOP
            ) as pool,
            RateDispatcher(
                lim.rate_limit_name, self.rate, self.burst, AdaptiveRate(self.rate, stop=RUN_STOP), seat=seat
            ) as dispatcher,
            ProgressReporter(self.plan.images_todo, self.logger) as progress,
        ):
            if seat.runs > 1:
                self.logger.info(
                    "%d runs share %s: this one sends up to %.0f req/s (seat %d)",
                    seat.runs, lim.rate_limit_name, dispatcher.share_rate(), seat.index,
                )  # fmt: skip
            checks = self._checks(progress)
            context = RunContext(
                run_id=self.run_id, out_dir=self.ws.synth, client=openrouter_client(), ledger=self.ledger,
                dispatcher=dispatcher, qc=checks.link, stop=RUN_STOP,
            )  # fmt: skip
            done = dispatch(
                todo,
                submit=self._submit(context),
                slots=SharedSlots(pool, dispatcher),
                stop=RUN_STOP,
                on_done=checks.on_done,
                keep_going=self.until.keep_going if self.until is not None else None,
                window=self.until,
            )
            self.pacing = dispatcher.adaptive.finish()
        return done

    def _checks(self, progress: ProgressReporter) -> _Checks:
        """What happens to each finished request: progress, and with a QC stream open on this folder
        (the hybrid flow, generate-until-N) its image is checked at once; with a target, dispatch stops
        once enough images pass (``UntilAccepted``)."""
        link = open_qc_stream(self.ws.synth)
        if link is not None and link.target:
            self.until = UntilAccepted(link.stream, link.target, self.max_inflight, self._produced, stop=RUN_STOP)
            self.logger.info(
                "QC checks each image as it arrives; dispatch stops once %d pass (at most %d unchecked)",
                link.target, self.max_inflight,
            )  # fmt: skip
        return _Checks(progress, link, self.until, self._produced)

    def _produced(self, result: object) -> list[tuple[Path, bool]] | None:
        """The images a finished request left in the output folder, and whether each was paid for now."""
        if isinstance(result, ImageTaskResult) and result.images and result.status in PRODUCED:
            return [(self.ws.synth / str(file), bool(paid)) for file, paid in result.images]
        return None

    def _submit(self, context: RunContext) -> Callable[[ImageRequest, float], Any]:
        lim, refs = self.params.limits, [str(p) for p in self.plan.references]
        assert context.dispatcher is not None

        def submit(request: ImageRequest, send_at: float) -> Any:
            return generate_image_task.submit(
                request=request, route=self.route, out_dir=str(self.ws.synth), references=refs,
                rate_limit_name=lim.rate_limit_name, inflight_limit_name=lim.inflight_limit_name, context=context,
                send_at=send_at, send_rate_per_s=context.dispatcher.rate_per_s,
            )  # fmt: skip

        return submit

    def _summarise(self, done: Dispatched, ledger: CostLedger) -> GenerateSummary:
        manifest = rebuild_manifest(self.ws.synth)
        results: list[ImageTaskResult] = done.results
        paid = [r for r in results if r.status == "generated"]
        halted = sum(r.slots for r in results if r.status == "halted")
        images = sum(r.new for r in paid)
        spent = round(ledger.spent_usd, 6)
        by_scene: dict[str, list[tuple[int, float]]] = {}
        for r in paid:
            by_scene.setdefault(r.scene or "?", []).append((r.new, r.cost_usd))
        create_table_artifact(
            [
                {"scene": k, "images": sum(n for n, _ in v), "cost_usd": round(sum(c for _, c in v), 6)}
                for k, v in sorted(by_scene.items())
            ]
            + [{"scene": "TOTAL", "images": images, "cost_usd": spent}],
            key="generate-cost",
            description=f"Cost of this run (budget: {self.params.budget_usd}; estimate before it: "
            f"{self._estimate_text()}); manifest total ${manifest['total_cost_usd']}",
        )
        reached = self.until is not None and not RUN_STOP.is_set() and not self.until.keep_going()
        summary = GenerateSummary(
            requested=len(self.plan.slots),
            already_done=self.plan.already_done,
            kept_from_earlier_references=self.plan.kept,
            generated=images,
            requests_paid=len(paid),
            short_answers=sum(r.short for r in paid),
            images_per_request=self.params.n,
            route=self.route.kind if self.route else None,
            failed=len(done.errors),
            stopped_by_budget=sum(r.slots for r in results if r.status == "budget"),
            not_sent_after_fatal_error=halted,
            not_sent_after_stop=sum(r.slots for r in results if r.status == "stopped")
            + (0 if reached else done.not_sent_images),
            stopped_by=RUN_STOP.reason,
            spent_usd=spent,
            estimate_usd=self._estimate_usd(),
            unpriced=sum(r.unpriced for r in paid),
            rate_limited_429=self.pacing.rate_limited,
            settled_rate_per_s=round(self.pacing.settled_rate, 3) if self.pacing.settled_rate else None,
            manifest_count=manifest["count"],
        )
        if self.until is not None:
            summary.target_accepted = self.until.target
            summary.accepted = self.until.stream.accepted()
            summary.not_sent_after_target = done.not_sent_images if reached else 0
            summary.overshoot = self.until.overshoot  # paid beyond the image that reached the target
        print(f"generation summary: {summary.model_dump(exclude_unset=True)}")
        if self.pacing.decreases:
            self.logger.warning(
                "the provider answered 429 to %d requests: %s", self.pacing.rate_limited, self.pacing.describe()
            )
        submitted = len(results) + len(done.errors)
        if done.errors and (halted or len(done.errors) == submitted) and not RUN_STOP.is_set():
            raise RuntimeError(
                f"generation stopped: {done.errors[0]} ({images} images generated in this run are kept; "
                f"{halted} images were not asked for)"
            )
        return summary

    def _estimate_usd(self) -> float | None:
        return usecases.estimate(self.plan, self.route).total_usd if self.route else None

    def _estimate_text(self) -> str:
        value = self._estimate_usd()
        return "n/a" if value is None else f"${value:.4f}"


PRODUCED = ("generated", "skipped", "recovered")


class _Checks:
    """The dispatch's ``on_done``: progress, then the image to the QC stream (directly, not waiting for
    the stream's folder watcher) or, with a target, through ``UntilAccepted``."""

    def __init__(
        self,
        progress: ProgressReporter,
        link: QCStream | None,
        until: UntilAccepted | None,
        produced: Callable[[object], list[tuple[Path, bool]] | None],
    ) -> None:
        self.progress, self.link, self.until, self.produced = progress, link, until, produced
        self.stream: StreamingQC | None = link.stream if link is not None else None

    def on_done(self, future: Any, request: ImageRequest) -> None:
        self.progress.one_done(request.n)
        if self.until is not None:
            self.until.on_done(future, request.n)
        elif self.stream is not None:
            try:
                images = self.produced(future.result())
            except Exception:  # a failed request: nothing to check
                images = None
            for path, _paid in images or []:
                self.stream.feed(path)


@contextmanager
def frozen_heap() -> Iterator[None]:
    """Keep the objects alive now (modules, clients, settings) out of the garbage collector's scans.

    Why: a full collection walks every object in the process; with Prefect loaded one took 0.2-0.4 s
    during dispatch, a pause in which no request is sent (measured: the largest gaps at the provider).
    ``gc.freeze`` moves today's objects to a permanent generation; ``unfreeze`` gives them back.
    """
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


class ProgressReporter:
    """The run's progress artifact, updated once a second from its own thread.

    Why a thread: an artifact update is an API call, and on a busy SQLite-backed server one can wait
    seconds; made from the dispatch loop it held back every request behind it.
    """

    PERIOD_S = 1.0

    def __init__(self, total: int, logger: logging.Logger | logging.LoggerAdapter) -> None:
        self.total = max(1, total)
        self.logger = logger
        self._done = 0
        self._shown = -1.0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = context_thread(self._loop, "generate-progress")
        self._artifact: UUID | None = None

    def __enter__(self) -> ProgressReporter:
        self._artifact = create_progress_artifact(0.0, key="generate-progress", description="images generated this run")
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._push()

    def one_done(self, images: int = 1) -> None:
        with self._lock:
            self._done += images

    def _push(self) -> None:
        with self._lock:
            percent = round(100.0 * min(self._done, self.total) / self.total, 1)
        if percent != self._shown and self._artifact is not None:
            try:
                update_progress_artifact(self._artifact, percent)
                self._shown = percent
            except Exception as exc:  # progress is informative: a failed update must not stop generation
                self.logger.debug("progress update failed: %s", exc)

    def _loop(self) -> None:
        while not self._stop.wait(self.PERIOD_S):
            self._push()
