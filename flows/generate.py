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
from ai_influencer.generation import already_done, build_requests, iter_reference_images
from ai_influencer.openrouter import BadRequestError, InsufficientCreditsError
from ai_influencer.prompt_bank import compose_prompts, load_prompt_bank
from flows.params import GenerateParams, Paths, current_params
from tasks.common import RateDispatcher, ensure_limit, inflight_slots, openrouter_client, rate_limit_capacity
from tasks.stages import generate_image_task

INFLIGHT_LEASE_S = 60.0  # the server accepts >= 60 s


def _name() -> str:
    p = current_params()
    model = (p.get("model") or "default").split("/")[-1]
    return f"generate-{model}-{p.get('per_scene', 12)}per-scene"


@flow(name="generate", flow_run_name=_name, log_prints=True, task_runner=ThreadPoolTaskRunner(max_workers=64))
def generate_flow(params: GenerateParams | None = None, paths: Paths | None = None) -> dict:
    """Generate ``per_scene`` images per scene; finished images are never paid for again."""
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
        estimate = preflight(params.model, estimate)
    run_id = str(flow_run.id or "local")
    # The in-flight cap: this run holds `parallel` slots of the global limit for its whole duration, so
    # all runs and workers together never exceed it. (Taking a slot per request costs ~2 s of server
    # round-trips each, measured, more than an image's latency.) The rate limit is spent per request by
    # one dispatcher (see RateDispatcher); each task waits for its exact send time.
    parallel = max(1, min(max_inflight, len(todo)))
    window = threading.BoundedSemaphore(parallel)
    progress = ProgressReporter(len(todo))

    def on_done(_f: object) -> None:
        progress.one_done()
        window.release()

    futures = []
    # A short lease (renewed in the background while this process lives) frees the slots within
    # INFLIGHT_LEASE_S if the run is killed, so a resumed run is not locked out for Prefect's default 300 s;
    # on a server without a repossessor (the embedded one) inflight_slots frees expired leases itself.
    with (
        frozen_heap(),
        inflight_slots(lim.inflight_limit_name, parallel, INFLIGHT_LEASE_S, logger),
        RateDispatcher(lim.rate_limit_name, rate, burst) as dispatcher,
        progress,
    ):
        for r in todo:
            window.acquire()
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
        results, failed = [], []
        for fut in futures:
            fut.wait()
            if fut.state.is_completed():
                results.append(fut.result())
            else:
                failed.append(str(fut.state.message or fut.state.name))
    manifest = rebuild_manifest(out_dir)
    paid = [r for r in results if r["status"] == "generated"]
    budget_stopped = sum(r["status"] == "budget" for r in results)
    halted = sum(r["status"] == "halted" for r in results)
    spent = round(sum(r["cost_usd"] for r in paid), 6)
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
        "spent_usd": spent,
        "manifest_count": manifest["count"],
    }
    print(f"generation summary: {summary}")
    if failed and (halted or len(failed) == len(futures)):
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


def preflight(model: str, estimate_usd: float | None) -> float | None:
    """Free checks before any paid call: the key works (GET /key) and the model exists; price estimate.

    A bad key or an exhausted key fails the run here, with zero paid requests.
    """
    client = openrouter_client()
    info = client.key_info()
    if info.limit_remaining is not None and info.limit_remaining <= 0:
        raise InsufficientCreditsError("the OpenRouter key has no credit left (GET /key limit_remaining <= 0)")
    if estimate_usd is not None:
        return estimate_usd
    models = {m.id: m for m in client.list_models()}
    if model not in models:
        raise BadRequestError(f"unknown OpenRouter model {model!r}; see `influencer models -m image`")
    if "image" not in models[model].output_modalities:
        raise BadRequestError(f"model {model!r} does not output images")
    price = models[model].pricing.get("image")
    try:
        return float(price) if price not in (None, "", "0") else None
    except (TypeError, ValueError):
        return None
