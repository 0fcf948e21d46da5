"""The hybrid pipeline: prepare -> plan -> generate -> qc -> [video] -> augment -> train -> evaluate, each skippable.

Stages run as subflows so each appears in the UI with its own state, logs and
artifacts, and a re-run of the whole pipeline skips finished work stage by
stage (content-addressed images, cached plan/QC/augment, per-image QC analyses).
With ``streaming`` (the default) generate and QC overlap: QC is a task that checks
each image as the generate subflow writes it, and gives the verdicts batch QC would.
Augment waits for QC's end: a later image can still replace an accepted one as its
better copy. With ``run_video`` (off by default: clips are paid by the second) the storyboard's shots
become clips after QC, each starting from its scene's best QC-passed image (``flows.video``).
"""

from __future__ import annotations

from prefect import flow

from ai_influencer.options import GenerateOptions
from ai_influencer.options.fields import default_of
from ai_influencer.settings import Settings
from flows.generate import check_image_route, generate_flow
from flows.params import HybridParams, current_params
from flows.results import HybridSummary
from flows.review import review_after_qc
from flows.rounds import generate_until_flow
from flows.stages import augment_flow, evaluate_flow, plan_flow, prepare_flow, qc_flow, train_flow
from flows.streaming import streamed_qc
from flows.video import check_video_options, video_flow
from tasks.stages import analytics_task


def _name() -> str:
    p = current_params()
    gen = p.get("generate") or {}
    per_scene = gen.get("per_scene", default_of(GenerateOptions, "per_scene"))
    return f"hybrid-{(gen.get('model') or 'default').split('/')[-1]}-{per_scene}x"


@flow(name="hybrid", flow_run_name=_name, log_prints=True)
def hybrid_flow(params: HybridParams = HybridParams()) -> HybridSummary:
    s = Settings()
    p = params.resolve(s)
    ws = p.paths.workspace()
    out = HybridSummary()
    if p.run_generate:  # free; an option the image endpoint does not take fails before the plan is paid for
        check_image_route(p.generate, p.paths)
    if p.run_video:  # the same for the clips: an unsupported video parameter fails before anything is paid
        check_video_options(p.video)
    if p.run_prepare:
        out.prepare = prepare_flow(p.prepare, p.paths)
    if p.run_plan:
        out.plan = plan_flow(p.plan, p.paths)
    if p.run_generate and p.target_accepted:
        out.generate = generate_until_flow(
            target=p.target_accepted, generate=p.generate, qc=p.qc, paths=p.paths, max_rounds=p.max_rounds,
            downweight_failing=p.downweight_failing, streaming=p.streaming,
        )  # fmt: skip
    elif p.run_generate and p.run_qc and p.streaming:
        with streamed_qc(p.qc, p.paths, s) as box:  # QC checks each image as it is generated
            out.generate = generate_flow(p.generate, p.paths)
        out.qc = box.qc
    elif p.run_generate:
        out.generate = generate_flow(p.generate, p.paths)
    if p.run_qc and out.qc is None and not (p.run_generate and p.target_accepted):  # the rounds ran QC
        out.qc = qc_flow(p.qc, p.paths)
    if p.run_qc or (p.run_generate and p.target_accepted):
        out.analytics = analytics_task(str(ws.synth), str(ws.qc_report))
        if p.review:  # pause for the user's verdicts (flows/review.py); stopped or timed out: the run ends here
            ended = review_after_qc(p, s, out)
            if ended is not None:
                return ended  # type: ignore[return-value]  (a State: Prefect ends the run in it)
    if p.run_video:
        out.video = video_flow(p.video, p.paths)
    if p.run_augment:
        out.augment = augment_flow(p.augment, p.paths)
    base = p.train.base_path(ws)
    if (p.run_train or p.run_evaluate) and not base.exists():
        # A fresh machine has no SDXL checkpoint (licence: users bring their own). The dataset is
        # done; say exactly what is missing instead of failing the whole run at its last step.
        print(f"train/evaluate skipped: no base SDXL model at {base} (see docs/training.md)")
        out.skipped = f"train/evaluate: no base model at {base}"
        return out
    if p.run_train:
        out.train = train_flow(p.train, p.paths)
    if p.run_evaluate:
        out.evaluate = evaluate_flow(p.evaluate, p.paths, p.train)
    print(f"hybrid pipeline finished: {out.shown()}")
    return out
