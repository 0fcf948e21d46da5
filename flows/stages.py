"""One flow per stage, for per-stage deployments and runs from the UI."""

from __future__ import annotations

from pathlib import Path

from prefect import flow

from ai_influencer.io import atomic_write_json
from ai_influencer.storyboard import Storyboard
from flows.params import AugmentParams, Paths, PlanParams, PrepareParams, QCParams
from tasks.stages import augment_task, plan_task, prepare_task, qc_task


@flow(name="prepare", log_prints=True)
def prepare_flow(params: PrepareParams | None = None, paths: Paths | None = None) -> dict:
    p, paths = params or PrepareParams(), paths or Paths()
    return prepare_task(paths.sub("input_raw"), paths.sub("cleaned"), p.do_rembg, p.do_facecrop, p.size, p.backend)


@flow(name="plan", log_prints=True)
def plan_flow(params: PlanParams | None = None, paths: Paths | None = None) -> dict:
    p, paths = params or PlanParams(), paths or Paths()
    out = Path(paths.sub("text/storyboard.json"))
    payload = plan_task(paths.prompt_bank, p.model)
    board = Storyboard.model_validate(payload)
    atomic_write_json(out, payload)  # also restores a deleted file from the cached (already paid) result
    summary = {
        "storyboard": str(out),
        "shots": len(board.shots),
        "caption_seeds": len(board.caption_seeds),
        "cost_usd": payload["_meta"]["usage"].get("cost"),
    }
    print(f"storyboard: {summary}")
    return summary


@flow(name="qc", log_prints=True)
def qc_flow(params: QCParams | None = None, paths: Paths | None = None) -> dict:
    p, paths = params or QCParams(), paths or Paths()
    summary = qc_task(
        paths.sub("cleaned"),
        paths.sub("synth_openrouter"),
        paths.sub("qc_passed"),
        p.minsim,
        p.minblur,
        p.max_faces,
        p.backend,
    )
    print(f"qc: {summary}")
    return summary


@flow(name="augment", log_prints=True)
def augment_flow(params: AugmentParams | None = None, paths: Paths | None = None) -> dict:
    p, paths = params or AugmentParams(), paths or Paths()
    summary = augment_task(
        paths.sub("qc_passed"),
        paths.sub("augment"),
        paths.sub("captions"),
        paths.sub("synth_openrouter/manifest.json"),
        p.num_aug,
        p.seed,
        p.size,
        paths.prompt_bank,
        p.kohya_repeats,
    )
    print(f"augment: {summary}")
    return summary
