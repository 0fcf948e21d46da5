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
from prefect.tasks import exponential_backoff

from ai_influencer.costs import BudgetExceededError, CostLedger, RunHaltedError
from ai_influencer.generation import GenerationOutcome, ImageRequest, generate_one
from ai_influencer.openrouter import AuthError, InsufficientCreditsError, OpenRouterError
from ai_influencer.prompt_bank import load_prompt_bank
from ai_influencer.settings import Settings
from ai_influencer.storyboard import plan_storyboard
from tasks.common import RateDispatcher, fingerprint, openrouter_client, send_clock, should_retry, take_rate_slots

_settings = Settings()
RETRY = {
    "retries": _settings.task_retries,
    "retry_delay_seconds": exponential_backoff(backoff_factor=max(_settings.task_retry_delay_s, 0.01)),
    "retry_jitter_factor": 0.5,
    "retry_condition_fn": should_retry,
}


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


def ledger_for(run_id: str, budget_usd: float | None, estimate_usd: float | None) -> CostLedger:
    """One ledger per flow run, shared by the run's task threads (tasks run in the flow's process)."""
    if run_id not in _ledgers:
        _ledgers[run_id] = CostLedger(budget_usd=budget_usd, estimate_usd=estimate_usd)
    return _ledgers[run_id]


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
    request's rate slot: the task only waits for its send time; any retry (the HTTP client's or
    Prefect's) takes a new rate slot and goes through the same per-process send clock.
    """
    attempts = 0

    @contextmanager
    def gate():
        if send_at is None:
            with concurrency(inflight_limit_name, occupy=1, strict=True):
                yield
        else:
            yield

    def pace() -> None:
        """Before every request: the first one of the first run goes at the dispatcher's send time
        (its rate slot is already taken); any other (a retry) takes a slot of its own first."""
        nonlocal attempts
        attempts += 1
        if send_at is None:
            rate_limit(rate_limit_name, occupy=1, strict=True)
            return
        not_before = send_at
        if attempts > 1 or task_run.run_count > 1:
            dispatcher = RateDispatcher.active(rate_limit_name)
            if dispatcher is not None:  # the flow's own process: its dispatcher hands out the slot
                not_before = dispatcher.next_send_time(lead_s=0.0)
            else:
                with get_client(sync_client=True) as client:
                    take_rate_slots(client, rate_limit_name, 1)
                not_before = 0.0
        send_clock.wait(rate_limit_name, not_before, send_rate_per_s)

    ledger = ledger_for(run_id, budget_usd, estimate_usd)
    try:
        outcome: GenerationOutcome = generate_one(
            openrouter_client(),
            request,
            Path(out_dir),
            references=[Path(r) for r in references],
            gate=gate,
            pace=pace,
            ledger=ledger,
            run_id=run_id,
        )
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
        "scene": request.meta.get("scene"),
    }


# ---- qc ------------------------------------------------------------------------------------
def _qc_key(context: Any, p: dict[str, Any]) -> str:
    extra = ("qc:calibrated-v2", p["out_dir"], p["minsim"], p["minblur"], p["max_faces"], p["backend"])
    return fingerprint(p["ref_dir"], p["cand_dir"], extra=extra)


def _sheet_markdown(sheet: Path, title: str) -> str:
    with Image.open(sheet) as im:
        im = im.convert("RGB")
        im.thumbnail((1200, 1200))
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=70)
    data = base64.b64encode(buf.getvalue()).decode()
    return f"### {title}\n\n![contact sheet](data:image/jpeg;base64,{data})\n\nFull size: `{sheet}`"


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
    return {**result.counts, "report": str(result.report), "contact_sheet": str(result.contact_sheet)}


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
    out = {"images": len(result.images), "captions": len(result.captions), "errors": result.errors}
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

    result = train_lora(cfg, on_step=on_step, progress=False)
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
