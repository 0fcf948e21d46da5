"""One Prefect task per pipeline step, each a thin wrapper around one use case (ai_influencer.usecases).

A task adds orchestration only: retries (``shared_limits.retry``: the OpenRouter client owns HTTP faults),
caching and artifacts. Planning, QC and augmentation are cached by the *content* of their inputs
plus the code version (``shared_limits.caching``), and the flows re-run a cached QC/augment whose output
files are gone; preparation and generation are cached by their output files instead, which survive
even a lost result store: an image is named by a hash of its request, and a prepared reference
records the source's hash and the options it was made with.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from ai_influencer import usecases
from ai_influencer.options import AugmentOptions, PrepareOptions, QCOptions
from ai_influencer.qc.report import REPORT_FIELDS
from ai_influencer.qc.stage import QCResult
from ai_influencer.settings import Settings
from shared_limits.artifacts import ProgressArtifact, sheet_markdown
from shared_limits.caching import fingerprint, outputs_record
from shared_limits.clients import openrouter_client
from shared_limits.retry import retry_options
from tasks.results import (
    AnalyticsSummary,
    AugmentSummary,
    DownweightResult,
    PaidPlan,
    PrepareResult,
    QCSummary,
)

RETRY = retry_options()


@task(name="prepare", tags=["vision", "prepare"], task_run_name="prepare {in_dir}", **RETRY)
def prepare_task(in_dir: str, out_dir: str, options: PrepareOptions) -> PrepareResult:
    outcome = usecases.prepare(Settings(), Path(in_dir), Path(out_dir), options)
    for error in outcome.errors:
        get_run_logger().warning("skipped %s", error)
    return PrepareResult(usable=outcome.usable, errors=outcome.errors)


def _plan_key(context: Any, p: dict[str, Any]) -> str:
    # The workspace is part of the key: the result store is shared by every workspace of a PREFECT_HOME
    # (or server), and a brand-new data folder was handed another workspace's storyboard.
    workspace = str(Path(p["storyboard"]).resolve()) if p.get("storyboard") else None
    return fingerprint(p["prompt_bank"], extra=("plan", p["model"], workspace))


@task(name="plan", tags=["llm", "paid"], cache_key_fn=_plan_key, persist_result=True, **RETRY)
def plan_task(prompt_bank: str, model: str, storyboard: str | None = None) -> PaidPlan:
    """The paid LLM call; cached by workspace (the ``storyboard`` file it is for), prompt-bank content and
    model, so a re-run never pays twice and another workspace never gets this one's plan."""
    return usecases.plan(openrouter_client(), Path(prompt_bank), model)


def _qc_key(context: Any, p: dict[str, Any]) -> str:
    o: QCOptions = p["options"]
    extra = ("qc", p["out_dir"], o.minsim, o.minblur, o.max_faces, o.backend)
    # the review overrides' content is an input: a verdict changed on the review page re-runs QC (cached analyses)
    return fingerprint(p["ref_dir"], p["cand_dir"], p.get("overrides"), extra=extra)


@task(name="qc", tags=["vision", "qc"], cache_key_fn=_qc_key, persist_result=True, **RETRY)
def qc_task(
    ref_dir: str,
    cand_dir: str,
    out_dir: str,
    options: QCOptions,
    cache_dir: str | None = None,
    overrides: str | None = None,
) -> QCSummary:
    job = usecases.QCJob.for_options(
        Path(ref_dir), Path(cand_dir), Path(out_dir), options, cache_dir=Path(cache_dir) if cache_dir else None,
        overrides=Path(overrides) if overrides else None,
    )  # fmt: skip
    result = usecases.qc(Settings(), job, on_progress=ProgressArtifact("qc-progress", "QC: images analysed"))
    return publish_qc(result, options)


def publish_qc(result: QCResult, options: QCOptions) -> QCSummary:
    """QC's artifacts (verdict table, contact sheet) and the stage's summary, batch or streamed alike."""
    create_table_artifact(
        [{k: getattr(r, k) for k in REPORT_FIELDS} for r in result.rows],
        key="qc-report",
        description=f"QC verdicts (minsim {options.minsim}, minblur {options.minblur}): {result.counts}",
    )
    create_markdown_artifact(sheet_markdown(result.contact_sheet, "QC contact sheet"), key="qc-contact-sheet")
    return QCSummary(
        **result.counts,
        report=str(result.report),
        contact_sheet=str(result.contact_sheet),
        outputs=outputs_record([*result.accepted, result.report, result.contact_sheet]),
    )


def _augment_key(context: Any, p: dict[str, Any]) -> str:
    o: AugmentOptions = p["options"]
    extra = ("augment", p["out_dir"], p["captions_dir"], o.num_aug, o.seed, o.size, o.kohya_repeats or None)
    extra += (o.vlm_model if o.vlm_captions else None,)
    return fingerprint(p["in_dir"], p["prompt_bank"], extra=extra)


@task(name="augment", tags=["dataset"], cache_key_fn=_augment_key, persist_result=True, **RETRY)
def augment_task(
    in_dir: str,
    out_dir: str,
    captions_dir: str,
    manifest: str | None,
    prompt_bank: str,
    options: AugmentOptions,
) -> AugmentSummary:
    outcome = usecases.augment(
        Path(in_dir),
        Path(out_dir),
        Path(captions_dir),
        prompt_bank=Path(prompt_bank),
        manifest=Path(manifest) if manifest else None,
        options=options,
        client=openrouter_client,
    )
    if outcome.captions is not None:
        for err in outcome.captions.errors:
            get_run_logger().warning("VLM caption fell back to the manifest caption: %s", err)
    result = outcome.result
    return outcome.summary().model_copy(update={"outputs": outputs_record([*result.images, *result.captions])})


@task(name="analytics", tags=["analytics"], **RETRY)
def analytics_task(synth_dir: str, qc_report: str) -> AnalyticsSummary:
    """Cost per accepted image and drift per prompt value, as table artifacts."""
    rep = usecases.report(Path(synth_dir), Path(qc_report))
    sections = (("run", "by_run"), ("model", "by_model"), ("total", "total"))
    create_table_artifact(
        [{"by": by, **r.as_dict()} for by, key in sections for r in rep.costs[key]],
        key="cost-per-accepted",
        description="Spend, accepted images and cost per accepted image",
    )
    create_table_artifact(
        [{k: v for k, v in r.as_dict().items() if k != "reasons"} for r in rep.drift],
        key="prompt-drift",
        description="QC acceptance and identity score per prompt-bank value (worst first)",
    )
    return rep.summary()


@task(name="downweight-bank", tags=["analytics"], **RETRY)
def downweight_task(prompt_bank: str, synth_dir: str, qc_report: str, out: str) -> DownweightResult:
    drift = usecases.report(Path(synth_dir), Path(qc_report)).drift
    path, changes = usecases.downweight(Path(prompt_bank), drift, Path(out))
    return DownweightResult(prompt_bank=str(path), changes=changes)
