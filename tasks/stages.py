"""One Prefect task per pipeline step. Each calls exactly one domain function.

Retries: ``task_retries`` attempts with exponential backoff and jitter, but
``should_retry`` stops at once on errors no retry can fix (401/402/403/400,
budget, configuration). Caching: planning, QC and augmentation use cache keys
built from the *content* of their inputs, so a re-run skips them (the flows
re-create a deleted output from the cached result or with ``refresh_cache``);
preparation and generation are cached by their output files instead, which
survive even a lost result store: an image is named by a hash of its request,
and a prepared reference records the source's hash and the options it was
made with (a replaced photo or changed option makes it again).
"""

from __future__ import annotations

import base64
import io
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from PIL import Image
from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.concurrency.sync import concurrency, rate_limit
from prefect.runtime import task_run

from ai_influencer.costs import BudgetExceededError, CostLedger, RunHaltedError
from ai_influencer.generation import GenerationOutcome, ImageRequest, generate_one
from ai_influencer.openrouter import AuthError, InsufficientCreditsError, OpenRouterError
from ai_influencer.pacing import AdaptiveRate, StopRequested
from ai_influencer.prompt_bank import load_prompt_bank
from ai_influencer.settings import Settings
from ai_influencer.storyboard import plan_storyboard
from tasks.caching import fingerprint, outputs_record
from tasks.clients import RUN_STOP, openrouter_client
from tasks.rate import RateDispatcher, send_clock, take_rate_slots
from tasks.retry import retry_options

RETRY = retry_options()


# ---- prepare -----------------------------------------------------------------------
@task(name="prepare", tags=["vision", "prepare"], task_run_name="prepare {in_dir}", **RETRY)
def prepare_task(in_dir: str, out_dir: str, do_rembg: bool, do_facecrop: bool, size: int, backend: str) -> dict:
    from ai_influencer.vision.background import BackgroundRemover
    from ai_influencer.vision.faces import create_face_engine
    from ai_influencer.vision.prepare import prepare_references

    s = Settings()
    engine = create_face_engine(backend, insightface_root=s.insightface_root, providers=s.onnx_providers)
    remover = BackgroundRemover(s.rembg_model, s.rembg_home, s.onnx_providers) if do_rembg else None
    items = prepare_references(
        Path(in_dir), Path(out_dir), engine=engine, remover=remover, do_facecrop=do_facecrop, out_size=size
    )
    logger = get_run_logger()
    for item in items:
        if item.status == "error":
            logger.warning("skipped %s: %s", item.source, item.reason)
    usable = sum(i.status in ("ok", "skipped") for i in items)
    if usable < 2:
        raise ValueError(f"at least 2 usable reference photos are needed in {in_dir}, found {usable}")
    return {"usable": usable, "errors": [f"{i.source.name}: {i.reason}" for i in items if i.status == "error"]}


# ---- plan ----------------------------------------------------------------------------
def _plan_key(context: Any, p: dict[str, Any]) -> str:
    return fingerprint(p["prompt_bank"], extra=("plan", p["model"]))


@task(name="plan", tags=["llm", "paid"], cache_key_fn=_plan_key, persist_result=True, **RETRY)
def plan_task(prompt_bank: str, model: str) -> dict:
    """The paid LLM call; cached by prompt-bank content + model, so a re-run never pays twice."""
    bank = load_prompt_bank(prompt_bank)
    board, result = plan_storyboard(openrouter_client(), bank, model)
    payload = board.model_dump(mode="json")
    payload["_meta"] = {"model": result.model, "generation_id": result.id, "usage": result.usage.model_dump()}
    return payload


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
    **RETRY,
)
def generate_image_task(
    request: ImageRequest,
    out_dir: str,
    references: list[str],
    rate_limit_name: str,
    inflight_limit_name: str,
    run_id: str,
    budget_usd: float | None = None,
    estimate_usd: float | None = None,
    send_at: float | None = None,
    send_rate_per_s: float = 0.0,
) -> dict:
    """One paid image behind the in-flight cap and the rate limit; the output file makes it idempotent.

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
            references=[Path(r) for r in references],
            gate=gate,
            pacer=_TaskPacer(rate_limit_name, send_at, send_rate_per_s),
            ledger=ledger,
            run_id=run_id,
        )
    except StopRequested as exc:
        return {"key": request.key, "status": "stopped", "error": str(exc), "cost_usd": 0.0}
    except BudgetExceededError as exc:
        return {"key": request.key, "status": "budget", "error": str(exc), "cost_usd": 0.0}
    except RunHaltedError as exc:
        return {"key": request.key, "status": "halted", "error": str(exc), "cost_usd": 0.0}
    except (AuthError, InsufficientCreditsError) as exc:
        ledger.halt(str(exc))  # every other image of this run would fail the same way: send no more requests
        get_run_logger().error("image %s: %s; no further requests are sent in this run", request.key, exc)
        raise
    except OpenRouterError as exc:
        get_run_logger().warning("image %s failed: %s", request.key, exc)
        raise
    record = outcome.record
    return {
        "key": request.key,
        "status": outcome.status,
        "file": record.file if record else None,
        "cost_usd": (record.cost_usd or 0.0) if record and outcome.paid else 0.0,
        "unpriced": bool(record and outcome.paid and record.cost_usd is None),
        "scene": request.meta.get("scene"),
    }


# ---- qc ------------------------------------------------------------------------------------
def _qc_key(context: Any, p: dict[str, Any]) -> str:
    extra = ("qc:calibrated-v2", p["out_dir"], p["minsim"], p["minblur"], p["max_faces"], p["backend"])
    return fingerprint(p["ref_dir"], p["cand_dir"], extra=extra)


def _inline_jpeg(path: Path, max_side: int) -> str:
    """A small JPEG data URI: artifacts are stored in the Prefect database, so images go in scaled down."""
    with Image.open(path) as im:
        im = im.convert("RGB")
        im.thumbnail((max_side, max_side))
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=70)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def _sheet_markdown(sheet: Path, title: str) -> str:
    return f"### {title}\n\n![contact sheet]({_inline_jpeg(sheet, 1200)})\n\nFull size: `{sheet}`"


def _samples_markdown(images: list[Path], title: str) -> str:
    shown = " ".join(f"![{p.name}]({_inline_jpeg(p, 256)})" for p in images)
    return f"### {title}\n\n{shown}\n\nFiles: " + ", ".join(f"`{p}`" for p in images)


class _QCProgress:
    """Per-image progress of the QC task as a Prefect progress artifact (at most one update per whole percent)."""

    def __init__(self) -> None:
        from prefect.artifacts import create_progress_artifact

        self._artifact = create_progress_artifact(0.0, key="qc-progress", description="QC: images analysed")
        self._shown = 0

    def __call__(self, done: int, total: int, name: str) -> None:
        from prefect.artifacts import update_progress_artifact

        percent = int(100 * done / max(1, total))
        if percent > self._shown or done == total:
            try:
                update_progress_artifact(self._artifact, float(percent))
                self._shown = percent
            except Exception as exc:  # progress is informative: a failed update must not fail QC
                get_run_logger().debug("QC progress update failed at %s: %s", name, exc)


@task(name="qc", tags=["vision", "qc"], cache_key_fn=_qc_key, persist_result=True, **RETRY)
def qc_task(
    ref_dir: str, cand_dir: str, out_dir: str, minsim: float, minblur: float, max_faces: int, backend: str
) -> dict:
    from ai_influencer.vision.qc import REPORT_FIELDS, EngineSpec, run_qc

    s = Settings()
    spec = EngineSpec(backend, str(s.insightface_root), tuple(s.onnx_providers))
    result = run_qc(
        Path(ref_dir),
        Path(cand_dir),
        Path(out_dir),
        spec=spec,
        minsim=minsim,
        minblur=minblur,
        max_faces=max_faces,
        on_progress=_QCProgress(),
    )
    create_table_artifact(
        [{k: getattr(r, k) for k in REPORT_FIELDS} for r in result.rows],
        key="qc-report",
        description=f"QC verdicts (minsim {minsim}, minblur {minblur}): {result.counts}",
    )
    create_markdown_artifact(_sheet_markdown(result.contact_sheet, "QC contact sheet"), key="qc-contact-sheet")
    return {
        **result.counts,
        "report": str(result.report),
        "contact_sheet": str(result.contact_sheet),
        "outputs": outputs_record([*result.accepted, result.report, result.contact_sheet]),
    }


# ---- augment --------------------------------------------------------------------------------
def _augment_key(context: Any, p: dict[str, Any]) -> str:
    extra = ("augment", p["out_dir"], p["captions_dir"], p["num_aug"], p["seed"], p["size"], p["kohya_repeats"])
    extra += (p.get("vlm_model"),)
    return fingerprint(p["in_dir"], p["prompt_bank"], extra=extra)


@task(name="augment", tags=["dataset"], cache_key_fn=_augment_key, persist_result=True, **RETRY)
def augment_task(
    in_dir: str,
    out_dir: str,
    captions_dir: str,
    manifest: str | None,
    num_aug: int,
    seed: int,
    size: int,
    prompt_bank: str,
    kohya_repeats: int | None,
    vlm_model: str | None = None,
) -> dict:
    from ai_influencer.dataset.augment import augment_and_caption

    bank = load_prompt_bank(prompt_bank)
    captioner = None
    if vlm_model:
        from ai_influencer.dataset.vlm_captions import VlmCaptioner

        captioner = VlmCaptioner.for_bank(openrouter_client(), vlm_model, bank, Path(captions_dir))
    result = augment_and_caption(
        Path(in_dir),
        Path(out_dir),
        Path(captions_dir),
        manifest=Path(manifest) if manifest and Path(manifest).is_file() else None,
        num_aug=num_aug,
        seed=seed,
        size=size,
        bank=bank,
        kohya_repeats=kohya_repeats,
        caption_for=captioner,
    )
    out = {
        "images": len(result.images),
        "captions": len(result.captions),
        "errors": result.errors,
        "outputs": outputs_record([*result.images, *result.captions]),
    }
    if captioner is not None:
        st = captioner.stats
        out["vlm"] = {"cached": st.cached, "paid": st.paid, "fallback": st.fallback, "cost_usd": st.cost_usd}
        for err in st.errors:
            get_run_logger().warning("VLM caption fell back to the manifest caption: %s", err)
    return out


# ---- train / evaluate -------------------------------------------------------------------------
@task(name="train", tags=["gpu", "train"], task_run_name="train {output_name}", **RETRY)
def train_task(config: dict, output_name: str, kohya_path: str | None = None) -> dict:
    """Trains or resumes (a retry continues from the last checkpoint, it does not start over)."""
    from ai_influencer.training.config import TrainConfig

    cfg = TrainConfig.model_validate({**config, "output_name": output_name})
    logger = get_run_logger()
    if kohya_path:
        from ai_influencer.training.kohya_backend import train_with_kohya

        out = train_with_kohya(cfg, Path(kohya_path), on_line=logger.info)
        return {"output": str(out), "backend": "kohya", "checkpoints": []}
    from prefect.artifacts import create_progress_artifact, update_progress_artifact

    from ai_influencer.training.trainer import train_lora

    progress = create_progress_artifact(0.0, key="train-progress", description="LoRA training steps")

    def on_step(step: int, total: int, loss: float) -> None:
        if step == total or step % max(1, total // 50) == 0:
            update_progress_artifact(progress, 100.0 * step / total)
            logger.info("step %d/%d loss %.4f", step, total, loss)

    def on_sample(step: int, images: list[Path]) -> None:
        create_markdown_artifact(
            _samples_markdown(images, f"{output_name}: samples at step {step}"),
            key="train-samples",
            description=f"LoRA sample images at step {step}",
        )

    result = train_lora(cfg, on_step=on_step, on_sample=on_sample, progress=False)
    for problem in result.problems:
        logger.warning("skipped %s", problem)
    return {
        "output": str(result.output),
        "backend": "built-in",
        "steps": result.steps,
        "resumed_from": result.resumed_from,
        "final_loss": result.losses[-1] if result.losses else None,
        "seconds": round(result.seconds, 1),
        "checkpoints": [str(p) for p in result.checkpoints],
        "run_dir": str(result.run_dir) if result.run_dir else None,
        "samples": [str(p) for p in result.samples],
    }


@task(name="evaluate", tags=["gpu", "evaluate"], **RETRY)
def evaluate_task(
    loras: list[str],
    base_model: str,
    refs_dir: str,
    out_dir: str,
    prompt_bank: str,
    samples: int,
    steps: int,
    guidance: float,
    size: int,
    strength: float,
    backend: str,
    history_db: str | None = None,
    dataset_dir: str | None = None,
    train_params: dict | None = None,
) -> dict:
    """Scores every LoRA on the same prompts and seeds; each result also goes into the identity history."""
    from ai_influencer.analytics.history import IdentityHistory, dataset_version_of, record_choice
    from ai_influencer.training.evaluate import evaluate_loras, report_dir
    from ai_influencer.training.inference import LocalGenParams
    from ai_influencer.vision.faces import create_face_engine

    s = Settings()
    engine = create_face_engine(backend, insightface_root=s.insightface_root, providers=s.onnx_providers)
    choice = evaluate_loras(
        [Path(p) for p in loras],
        base=Path(base_model),
        config_dir=None,
        bank=load_prompt_bank(prompt_bank),
        refs_dir=Path(refs_dir),
        out_dir=Path(out_dir),
        engine=engine,
        k=samples,
        params=LocalGenParams(steps=steps, guidance=guidance, width=size, height=size, strength=strength),
    )
    rows = choice.rows()
    if history_db:
        version = dataset_version_of(Path(dataset_dir) if dataset_dir else None)
        bank = load_prompt_bank(prompt_bank)
        ids = record_choice(
            IdentityHistory(Path(history_db)),
            choice,
            persona=bank.persona.name,
            dataset_version=version,
            params=train_params or {},
        )
        for row in rows:
            row["history_id"] = ids[row["lora"]]
    create_table_artifact(rows, key="identity-evaluation", description="Identity score per LoRA checkpoint")
    sheet = report_dir(Path(out_dir), choice.best) / "contact_sheet.png"
    if sheet.is_file():
        create_markdown_artifact(
            _sheet_markdown(sheet, f"Samples of the best LoRA ({choice.best.name})"), key="identity-contact-sheet"
        )
    return {"best": str(choice.best), "candidates": rows}


# ---- analytics ---------------------------------------------------------------------------------
@task(name="analytics", tags=["analytics"], **RETRY)
def analytics_task(synth_dir: str, qc_report: str) -> dict:
    """Cost per accepted image and drift per prompt value, as table artifacts."""
    from ai_influencer.analytics.report import cost_report, drift_report, join

    items, problems = join(Path(synth_dir), Path(qc_report))
    costs = cost_report(items)
    drift = drift_report(items)
    create_table_artifact(
        [{"by": "run", **r.as_dict()} for r in costs["by_run"]]
        + [{"by": "model", **r.as_dict()} for r in costs["by_model"]]
        + [{"by": "total", **r.as_dict()} for r in costs["total"]],
        key="cost-per-accepted",
        description="Spend, accepted images and cost per accepted image",
    )
    create_table_artifact(
        [{k: v for k, v in r.as_dict().items() if k != "reasons"} for r in drift],
        key="prompt-drift",
        description="QC acceptance and identity score per prompt-bank value (worst first)",
    )
    total = costs["total"][0] if costs["total"] else None
    return {
        "spend_usd": total.spend_usd if total else 0.0,
        "accepted": total.accepted if total else 0,
        "cost_per_accepted_usd": total.cost_per_accepted_usd if total else None,
        "worst_values": [f"{r.category}={r.value} ({r.acceptance_rate:.0%} of {r.n})" for r in drift[:3]],
        "problems": problems,
    }


@task(name="downweight-bank", tags=["analytics"], **RETRY)
def downweight_task(prompt_bank: str, synth_dir: str, qc_report: str, out: str) -> dict:
    from ai_influencer.analytics.report import drift_report, join, write_downweighted_bank

    items, _ = join(Path(synth_dir), Path(qc_report))
    path, changes = write_downweighted_bank(load_prompt_bank(prompt_bank), drift_report(items), Path(out))
    return {"prompt_bank": str(path), "changes": changes}


@task(name="promote", tags=["train"], **RETRY)
def promote_task(
    candidate: str,
    candidate_score: tuple[float | None, float | None],
    live: str,
    live_score: tuple[float | None, float | None] | None,
    history_db: str,
    candidate_history_id: int | None,
) -> dict:
    from ai_influencer.analytics.history import IdentityHistory
    from ai_influencer.training.promote import promote_if_better

    result = promote_if_better(Path(candidate), candidate_score, Path(live), live_score)
    if result.promoted and candidate_history_id:
        IdentityHistory(Path(history_db)).mark_promoted(candidate_history_id)
    get_run_logger().info(result.reason)
    return {
        "promoted": result.promoted,
        "reason": result.reason,
        "live": str(result.live),
        "previous": str(result.previous) if result.previous else None,
    }
