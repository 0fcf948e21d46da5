"""The generation fan-out: every image is its own retrying task behind the shared limits."""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from uuid import UUID

from prefect import flow, get_run_logger
from prefect.artifacts import create_progress_artifact, create_table_artifact, update_progress_artifact
from prefect.runtime import flow_run
from prefect.task_runners import ThreadPoolTaskRunner

from ai_influencer.dataset.manifest import rebuild_manifest
from ai_influencer.generation import already_done, build_requests, iter_reference_images, preflight
from ai_influencer.pacing import AdaptiveRate, PacingStats, StopRequested, drain_on_signals, rate_limit_capacity
from ai_influencer.prompt_bank import compose_prompts, load_prompt_bank
from flows.params import GenerateParams, Paths, current_params
from tasks.clients import RUN_STOP, openrouter_client
from tasks.limits import InflightPool, RunSeat, ensure_limit
from tasks.rate import RateDispatcher
from tasks.stages import generate_image_task, release_ledger

INFLIGHT_LEASE_S = 60.0  # the server accepts >= 60 s


def _name() -> str:
    p = current_params()
    model = (p.get("model") or "default").split("/")[-1]
    return f"generate-{model}-{p.get('per_scene', 12)}per-scene"


@flow(name="generate", flow_run_name=_name, log_prints=True, task_runner=ThreadPoolTaskRunner(max_workers=64))
def generate_flow(params: GenerateParams | None = None, paths: Paths | None = None) -> dict:
    """Generate ``per_scene`` images per scene; finished images are never paid for again.

    SIGTERM (a Prefect cancellation, a stopped worker) or Ctrl-C drains the run: nothing new is
    sent, requests already sent finish (each within the client's deadline) and are saved, the
    manifest is rebuilt, and only then is the signal passed on to Prefect.
    """
    params, paths = params or GenerateParams(), paths or Paths()
    logger = get_run_logger()
    out_dir = Path(paths.sub("synth_openrouter"))
    refs = list(iter_reference_images(Path(paths.sub("cleaned")))) if params.use_references else []
    bank = load_prompt_bank(paths.prompt_bank)
    requests = build_requests(compose_prompts(bank, params.per_scene, params.seed), params.model, params.size, refs)
    todo = [r for r in requests if already_done(r, out_dir) is None]
    lim = params.limits
    rate_state, burst, rate = ensure_limit(
        lim.rate_limit_name, rate_limit_capacity(lim.rate_per_s), slot_decay_per_second=lim.rate_per_s
    )
    inflight_state, max_inflight, _ = ensure_limit(lim.inflight_limit_name, lim.max_inflight)
    if rate <= 0:
        raise ValueError(f"global concurrency limit {lim.rate_limit_name!r} has no slot decay: it is not a rate limit")
    logger.info(
        "%d images requested, %d already on disk, %d to generate (rate limit %s %s: %.2f/s; in-flight %s %s: %d)",
        len(requests),
        len(requests) - len(todo),
        len(todo),
        lim.rate_limit_name,
        rate_state,
        rate,
        lim.inflight_limit_name,
        inflight_state,
        max_inflight,
    )
    estimate = params.estimate_usd
    if todo:
        estimate = preflight(openrouter_client(), params.model, estimate)
        if params.budget_usd is not None and estimate is None:
            raise ValueError(f"budget_usd needs a price: {params.model} lists none; set estimate_usd")
    run_id = str(flow_run.id or "local")
    RUN_STOP.clear()
    with drain_on_signals(RUN_STOP):
        return _dispatch(params, requests, todo, out_dir, refs, run_id, estimate, burst, rate, max_inflight)


def _dispatch(
    params: GenerateParams,
    requests: list,
    todo: list,
    out_dir: Path,
    refs: list[Path],
    run_id: str,
    estimate: float | None,
    burst: int,
    rate: float,
    max_inflight: int,
) -> dict:
    """Submit one task per image at its send time, wait for all, summarise (see generate_flow)."""
    logger = get_run_logger()
    lim = params.limits
    # Sharing with other runs (other workers, the hub, a cron run): this run holds a seat among the
    # runs that use this provider limit, and from it the in-flight slots and the requests per second
    # of its fair share, which shrink when a run joins and grow when one leaves (see tasks.limits).
    # In-flight slots are unit leases renewed in the background: a killed run's come back when they
    # expire (INFLIGHT_LEASE_S), on the embedded server too (reclaim_expired_leases).
    progress = ProgressReporter(len(todo))
    futures: list = []
    results: list[dict] = []
    failed: list[str] = []
    pacing = PacingStats()
    try:
        with (
            frozen_heap(),
            RunSeat(lim.rate_limit_name, lease_s=INFLIGHT_LEASE_S, stop=RUN_STOP, logger=logger) as seat,
            InflightPool(lim.inflight_limit_name, seat, max_inflight, lease_s=INFLIGHT_LEASE_S, stop=RUN_STOP) as pool,
            RateDispatcher(
                lim.rate_limit_name, rate, burst, AdaptiveRate(rate, stop=RUN_STOP), seat=seat
            ) as dispatcher,
            progress,
        ):
            if seat.runs > 1:
                logger.info(
                    "%d runs share %s: this one sends up to %.0f req/s with %d in flight (seat %d)",
                    seat.runs, lim.rate_limit_name, dispatcher.share_rate(), pool.target() or 0, seat.index,
                )  # fmt: skip
            pool.demand = len(todo)

            def on_done(_f: object) -> None:
                progress.one_done()
                pool.release()

            for r in todo:
                pool.acquire()
                if RUN_STOP.is_set():
                    pool.release()
                    break
                send_at = dispatcher.next_send_time()
                fut = generate_image_task.submit(
                    r,
                    str(out_dir),
                    [str(p) for p in refs],
                    lim.rate_limit_name,
                    lim.inflight_limit_name,
                    run_id,
                    params.budget_usd,
                    estimate,
                    send_at,
                    dispatcher.rate_per_s,
                )
                fut.add_done_callback(on_done)
                futures.append(fut)
            pool.demand = pool.in_use  # what is left is what is in flight: spare slots go back now
            for fut in futures:
                fut.wait()
                if fut.state.is_completed():
                    results.append(fut.result())
                else:
                    failed.append(str(fut.state.message or fut.state.name))
            pacing = dispatcher.adaptive.finish()
    except StopRequested:  # stopped while waiting for a seat or a slot: nothing more was sent
        pass
    ledger = release_ledger(run_id)
    manifest = rebuild_manifest(out_dir)
    paid = [r for r in results if r["status"] == "generated"]
    budget_stopped = sum(r["status"] == "budget" for r in results)
    halted = sum(r["status"] == "halted" for r in results)
    stopped = sum(r["status"] == "stopped" for r in results) + len(todo) - len(futures)
    spent = round(ledger.spent_usd if ledger else sum(r["cost_usd"] for r in paid), 6)
    by_scene: dict[str, list[float]] = {}
    for r in paid:
        by_scene.setdefault(r.get("scene") or "?", []).append(r["cost_usd"])
    create_table_artifact(
        [{"scene": k, "images": len(v), "cost_usd": round(sum(v), 6)} for k, v in sorted(by_scene.items())]
        + [{"scene": "TOTAL", "images": len(paid), "cost_usd": spent}],
        key="generate-cost",
        description=f"Cost of this run (budget: {params.budget_usd}); manifest total ${manifest['total_cost_usd']}",
    )
    summary = {
        "requested": len(requests),
        "already_done": len(requests) - len(todo),
        "generated": len(paid),
        "failed": len(failed),
        "stopped_by_budget": budget_stopped,
        "not_sent_after_fatal_error": halted,
        "not_sent_after_stop": stopped,
        "stopped_by": RUN_STOP.reason,
        "spent_usd": spent,
        "unpriced": sum(bool(r.get("unpriced")) for r in paid),
        "rate_limited_429": pacing.rate_limited,
        "settled_rate_per_s": round(pacing.settled_rate, 3) if pacing.settled_rate else None,
        "manifest_count": manifest["count"],
    }
    print(f"generation summary: {summary}")
    if pacing.decreases:
        logger.warning("the provider answered 429 to %d requests: %s", pacing.rate_limited, pacing.describe())
    if failed and (halted or len(failed) == len(futures)) and not RUN_STOP.is_set():
        raise RuntimeError(
            f"generation stopped: {failed[0]} ({len(paid)} images generated in this run are kept; "
            f"{halted} requests were not sent)"
        )
    return summary


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

    def __init__(self, total: int) -> None:
        self.total = max(1, total)
        self._done = 0
        self._shown = -1.0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="generate-progress", daemon=True)
        self._artifact: UUID | None = None

    def __enter__(self) -> ProgressReporter:
        self._artifact = create_progress_artifact(0.0, key="generate-progress", description="images generated this run")
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._push()

    def one_done(self) -> None:
        with self._lock:
            self._done += 1

    def _push(self) -> None:
        with self._lock:
            percent = round(100.0 * min(self._done, self.total) / self.total, 1)
        if percent != self._shown and self._artifact is not None:
            try:
                update_progress_artifact(self._artifact, percent)
                self._shown = percent
            except Exception as exc:  # progress is informative: a failed update must not stop generation
                get_run_logger().debug("progress update failed: %s", exc)

    def _loop(self) -> None:
        while not self._stop.wait(self.PERIOD_S):
            self._push()
