"""One flow per stage, for per-stage deployments and runs from the UI."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger

from ai_influencer.io import atomic_write_json
from ai_influencer.storyboard import Storyboard
from flows.params import AugmentParams, EvaluateParams, Paths, PlanParams, PrepareParams, QCParams, TrainParams
from tasks.caching import call_with_intact_outputs
from tasks.stages import augment_task, evaluate_task, plan_task, prepare_task, qc_task, train_task


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
    summary = call_with_intact_outputs(
        qc_task,
        paths.sub("cleaned"),
        paths.sub("synth_openrouter"),
        paths.sub("qc_passed"),
        p.minsim,
        p.minblur,
        p.max_faces,
        p.backend,
        log=get_run_logger().info,
    )
    print(f"qc: { {k: v for k, v in summary.items() if k != 'outputs'} }")
    return summary


@flow(name="augment", log_prints=True)
def augment_flow(params: AugmentParams | None = None, paths: Paths | None = None) -> dict:
    p, paths = params or AugmentParams(), paths or Paths()
    summary = call_with_intact_outputs(
        augment_task,
        paths.sub("qc_passed"),
        paths.sub("augment"),
        paths.sub("captions"),
        paths.sub("synth_openrouter/manifest.json"),
        p.num_aug,
        p.seed,
        p.size,
        paths.prompt_bank,
        p.kohya_repeats,
        p.vlm_model if p.vlm_captions else None,
        log=get_run_logger().info,
    )
    print(f"augment: { {k: v for k, v in summary.items() if k != 'outputs'} }")
    return summary


def base_model_path(train: TrainParams, paths: Paths) -> Path:
    return Path(train.base_model) if train.base_model else Path(paths.models_root) / "base" / "sdxl.safetensors"


def train_config(train: TrainParams, paths: Paths) -> dict:
    """TrainParams (the UI form) -> a TrainConfig dict; the dataset is augment's kohya layout."""
    data = Path(paths.data_root)
    dataset = data / "augment" / "kohya"
    cfg = {
        "base_model": str(base_model_path(train, paths)),
        "dataset": str(dataset if dataset.is_dir() else data / "augment"),
        "captions_dir": str(data / "captions"),
        "output_dir": str(Path(paths.models_root) / "lora"),
        **train.model_dump(exclude={"base_model", "use_kohya", "overrides"}),
        **train.overrides,
    }
    return cfg


@flow(name="train", log_prints=True)
def train_flow(
    params: TrainParams | None = None, paths: Paths | None = None, output_name: str = "influencer_lora"
) -> dict:
    from ai_influencer.settings import Settings

    p, paths = params or TrainParams(), paths or Paths()
    kohya = Settings().kohya_path if p.use_kohya else None
    if p.use_kohya and not kohya:
        raise ValueError("use_kohya is set but INFLUENCER_KOHYA_PATH (an sd-scripts checkout) is not")
    summary = train_task(train_config(p, paths), output_name, str(kohya) if kohya else None)
    print(f"train: {summary}")
    return summary


@flow(name="evaluate", log_prints=True)
def evaluate_flow(
    params: EvaluateParams | None = None,
    paths: Paths | None = None,
    train: TrainParams | None = None,
    loras: list[str] | None = None,
) -> dict:
    """Score the final LoRA (and, by default, every checkpoint of its run) and name the best."""
    from ai_influencer.training.evaluate import default_candidates

    p, paths, train = params or EvaluateParams(), paths or Paths(), train or TrainParams()
    lora_dir = Path(paths.models_root) / "lora"
    candidates = list(loras or []) or [str(f) for f in default_candidates(lora_dir, checkpoints=p.checkpoints)]
    summary = evaluate_task(
        candidates,
        str(base_model_path(train, paths)),
        paths.sub("cleaned"),
        str(lora_dir / "evaluation"),
        paths.prompt_bank,
        p.samples,
        p.steps,
        p.guidance,
        p.size,
        p.strength,
        p.backend,
        str(lora_dir / "identity_history.sqlite"),
        train_config(train, paths)["dataset"],
        train.model_dump(),
    )
    print(f"evaluate: best {summary['best']}")
    return summary
