"""One flow per stage, for per-stage deployments and runs from the UI."""

from __future__ import annotations

from prefect import flow, get_run_logger

from ai_influencer import usecases
from ai_influencer.dataset.workspace import LORA_NAME
from ai_influencer.settings import Settings
from ai_influencer.usecases.evaluate import default_candidates
from ai_influencer.usecases.train import TrainConfig
from flows.params import AugmentParams, EvaluateParams, Paths, PlanParams, PrepareParams, QCParams, TrainParams
from shared_limits.caching import call_with_intact_outputs
from tasks.results import AugmentSummary, EvaluateSummary, PlanResult, PrepareResult, QCSummary, TrainSummary
from tasks.stages import augment_task, plan_task, prepare_task, qc_task
from tasks.training import evaluate_task, train_task


@flow(name="prepare", log_prints=True)
def prepare_flow(params: PrepareParams = PrepareParams(), paths: Paths = Paths()) -> PrepareResult:
    s = Settings()
    p, ws = params.resolve(s), paths.resolve(s).workspace()
    return prepare_task(str(ws.input_raw), str(ws.cleaned), p)


@flow(name="plan", log_prints=True)
def plan_flow(params: PlanParams = PlanParams(), paths: Paths = Paths()) -> PlanResult:
    s = Settings()
    p, paths = params.resolve(s), paths.resolve(s)
    storyboard = paths.workspace().storyboard
    paid = plan_task(str(paths.bank), p.model, str(storyboard))
    # written from the (maybe cached, already paid) payload: a deleted storyboard comes back for free
    summary = usecases.write_plan(paid, storyboard)
    print(f"storyboard: {summary.shown()}")
    return summary


@flow(name="qc", log_prints=True)
def qc_flow(params: QCParams = QCParams(), paths: Paths = Paths()) -> QCSummary:
    s = Settings()
    ws = paths.resolve(s).workspace()
    p = params.resolve(s).for_workspace(ws)  # empty thresholds: this persona's calibration, else the defaults
    summary: QCSummary = call_with_intact_outputs(
        qc_task,
        ref_dir=str(ws.cleaned),
        cand_dir=str(ws.synth),
        out_dir=str(ws.qc_passed),
        options=p,
        cache_dir=str(ws.qc_cache),
        overrides=str(ws.qc_overrides),  # the user's verdicts from the review page win over QC's
        log=get_run_logger().info,
    )
    print(f"qc: {summary.shown()}")
    return summary


@flow(name="augment", log_prints=True)
def augment_flow(params: AugmentParams = AugmentParams(), paths: Paths = Paths()) -> AugmentSummary:
    s = Settings()
    p, paths = params.resolve(s), paths.resolve(s)
    ws = paths.workspace()
    summary: AugmentSummary = call_with_intact_outputs(
        augment_task,
        in_dir=str(ws.qc_passed),
        out_dir=str(ws.augment),
        captions_dir=str(ws.captions),
        manifest=str(ws.manifest),
        prompt_bank=str(paths.bank),
        options=p,
        log=get_run_logger().info,
    )
    print(f"augment: {summary.shown()}")
    return summary


def train_config(train: TrainParams, paths: Paths) -> TrainConfig:
    """TrainParams (the UI form) -> the TrainConfig: the workspace's folders (usecases.train_config), the form's
    fields, then ``overrides``."""
    ws = paths.workspace()
    cfg = usecases.train_config(
        ws,
        base_model=train.base_path(ws),
        **train.model_dump(exclude={"base_model", "use_kohya", "overrides"}),
        **train.overrides,
    )
    return cfg


@flow(name="train", log_prints=True)
def train_flow(
    params: TrainParams = TrainParams(), paths: Paths = Paths(), output_name: str = LORA_NAME
) -> TrainSummary:
    s = Settings()
    p, paths = params.resolve(s), paths.resolve(s)
    kohya = s.kohya_path if p.use_kohya else None
    if p.use_kohya and not kohya:
        raise ValueError("use_kohya is set but INFLUENCER_KOHYA_PATH (an sd-scripts checkout) is not")
    summary = train_task(train_config(p, paths), output_name, str(kohya) if kohya else None)
    print(f"train: {summary.model_dump()}")
    return summary


@flow(name="evaluate", log_prints=True)
def evaluate_flow(
    params: EvaluateParams = EvaluateParams(),
    paths: Paths = Paths(),
    train: TrainParams = TrainParams(),
    loras: list[str] | None = None,
) -> EvaluateSummary:
    """Score the final LoRA (and, by default, every checkpoint of its run) and name the best."""
    s = Settings()
    p, paths, train = params.resolve(s), paths.resolve(s), train.resolve(s)
    ws = paths.workspace()
    candidates = list(loras or []) or [str(f) for f in default_candidates(ws.lora_dir, checkpoints=p.checkpoints)]
    summary = evaluate_task(
        candidates,
        base_model=str(train.base_path(ws)),
        refs_dir=str(ws.cleaned),
        out_dir=str(ws.evaluation),
        prompt_bank=str(paths.bank),
        options=p,
        history_db=str(ws.identity_history),
        dataset_dir=str(train_config(train, paths).dataset),
        train_params=train.model_dump(),
    )
    print(f"evaluate: best {summary.best}")
    return summary
