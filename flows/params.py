"""Flow parameters as pydantic models, so the Prefect UI renders them as forms.

Each stage's parameters ARE its options model (``ai_influencer.options``: every default, bound and help
text written once, the manual's ``per_scene 12``, ``minsim 0.34``, ``minblur 80``, ``num_aug 1``), plus
``RunParams.resolve``. A field that comes from the configuration (model names, folders, limits, face
backend) defaults to empty and is filled from the *worker's* settings when the run starts (``resolve``):
reading Settings at import baked the deploying machine's environment into every
deployment's defaults. Every flow takes a filled model as its default, so the
UI's run form opens with its fields. No secret is ever a parameter: the
OpenRouter key comes from the credentials block or the environment inside the
tasks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Self

from pydantic import BaseModel, Field

from ai_influencer.dataset.workspace import Workspace
from ai_influencer.options import (
    AugmentOptions,
    EvaluateOptions,
    GenerateOptions,
    PlanOptions,
    PrepareOptions,
    QCOptions,
    TrainOptions,
)
from ai_influencer.options.fields import BACKEND_HELP, default_of, from_settings, help_of
from ai_influencer.options.video import VideoOptions
from ai_influencer.settings import Settings


def current_params(name: str = "params") -> dict:
    """The running flow's parameter as a dict (a model object in-process, a dict from a deployment)."""
    from prefect.runtime import flow_run

    value = flow_run.parameters.get(name) or {}
    return value.model_dump() if isinstance(value, BaseModel) else dict(value)


class RunParams(BaseModel):
    """Parameters whose empty fields are filled from Settings when a run starts."""

    SETTINGS: ClassVar[dict[str, str]] = {}  # field -> Settings attribute

    def resolve(self, settings: Settings) -> Self:
        """A copy with every empty configuration field taken from ``settings``, nested models too."""
        update: dict[str, Any] = {}
        for field, attr in self.SETTINGS.items():
            if getattr(self, field) is None:
                value = getattr(settings, attr)
                update[field] = str(value) if isinstance(value, Path) else value
        for field in type(self).model_fields:
            value = getattr(self, field)
            if isinstance(value, RunParams):
                update[field] = value.resolve(settings)
        return self.model_copy(update=update)


class Paths(RunParams):
    SETTINGS: ClassVar[dict[str, str]] = {
        "data_root": "data_root",
        "prompt_bank": "prompt_bank",
        "models_root": "models_root",
    }
    data_root: str | None = Field(default=None, description=from_settings("data_root", "Workspace data folder"))
    prompt_bank: str | None = Field(default=None, description=from_settings("prompt_bank", "Prompt bank YAML"))
    models_root: str | None = Field(
        default=None, description=from_settings("models_root", "Models folder (base/, lora/)")
    )

    def workspace(self) -> Workspace:
        """The workspace these (resolved) paths point at: every folder name comes from there."""
        assert self.data_root is not None and self.models_root is not None, "resolve() the paths first"
        return Workspace(Path(self.data_root), Path(self.models_root))

    @property
    def bank(self) -> Path:
        assert self.prompt_bank is not None, "resolve() the paths first"
        return Path(self.prompt_bank)


class PrepareParams(PrepareOptions, RunParams):
    SETTINGS: ClassVar[dict[str, str]] = {"backend": "face_backend"}


class PlanParams(PlanOptions, RunParams):
    SETTINGS: ClassVar[dict[str, str]] = {"model": "text_model"}


class Limits(RunParams):
    SETTINGS: ClassVar[dict[str, str]] = {
        "rate_limit_name": "image_rate_limit_name",
        "rate_per_s": "image_rate_per_s",
        "inflight_limit_name": "image_inflight_limit_name",
        "max_inflight": "image_max_inflight",
    }
    rate_limit_name: str | None = Field(
        default=None, description=from_settings("image_rate_limit_name", "Global concurrency limit with slot decay")
    )
    rate_per_s: float | None = Field(
        default=None, gt=0, description=from_settings("image_rate_per_s", "Requests/s, used when the limit is created")
    )
    inflight_limit_name: str | None = Field(
        default=None, description=from_settings("image_inflight_limit_name", "Global concurrency limit")
    )
    max_inflight: int | None = Field(
        default=None, ge=1, description=from_settings("image_max_inflight", "In flight, used when it is created")
    )


class GenerateParams(GenerateOptions, RunParams):
    """The generate stage's options and the run's shared limits (``limits``)."""

    SETTINGS: ClassVar[dict[str, str]] = {"model": "image_model"}
    limits: Limits = Field(default_factory=Limits)


class QCParams(QCOptions, RunParams):
    SETTINGS: ClassVar[dict[str, str]] = {"backend": "face_backend"}
    minsim: float | None = Field(  # type: ignore[assignment]
        default=None,
        ge=0,
        le=1,
        description=f"{help_of(QCOptions, 'minsim')} Empty: this persona's calibration (data/persona.json, "
        f"`influencer qc calibrate --apply`), else {default_of(QCOptions, 'minsim'):g}.",
    )
    minblur: float | None = Field(  # type: ignore[assignment]
        default=None,
        ge=0,
        description=f"{help_of(QCOptions, 'minblur')} Empty: this persona's calibration, "
        f"else {default_of(QCOptions, 'minblur'):g}.",
    )

    def for_workspace(self, ws: Workspace) -> QCParams:
        """A copy with the thresholds left empty filled as ``influencer qc`` fills them: this persona's
        calibration, else the built-in default (``review.effective_thresholds``)."""
        from ai_influencer.usecases.qc import effective_thresholds

        chosen = effective_thresholds(ws, {"minsim": self.minsim, "minblur": self.minblur})
        return self.model_copy(update=chosen.values())


class AugmentParams(AugmentOptions, RunParams):
    SETTINGS: ClassVar[dict[str, str]] = {"vlm_model": "vision_model"}


class TrainParams(TrainOptions, RunParams):
    """The manual's train_lora.sh defaults (``options.train``); every other trainer setting is in ``overrides``."""

    base_model: str | None = Field(default=None, description="Default: <models_root>/base/sdxl.safetensors.")
    use_kohya: bool = Field(default=False, description="Train with kohya sd-scripts (INFLUENCER_KOHYA_PATH).")
    overrides: dict = Field(default_factory=dict, description="Any other TrainConfig field, e.g. noise_offset.")

    def base_path(self, ws: Workspace) -> Path:
        return Path(self.base_model) if self.base_model else ws.base_model


class EvaluateParams(EvaluateOptions, RunParams):
    SETTINGS: ClassVar[dict[str, str]] = {"backend": "face_backend"}


class VideoParams(VideoOptions, RunParams):
    """The video stage's options (``options.video``) and where its jobs-at-once limit and face model come from."""

    SETTINGS: ClassVar[dict[str, str]] = {"limit_name": "video_jobs_limit_name", "backend": "face_backend"}
    limit_name: str | None = Field(
        default=None,
        description=from_settings("video_jobs_limit_name", "Global concurrency limit of jobs waited for at once"),
    )
    backend: str | None = Field(default=None, description=BACKEND_HELP)

    def options(self) -> VideoOptions:
        return VideoOptions(**self.model_dump(include=set(VideoOptions.model_fields)))


class HybridParams(RunParams):
    paths: Paths = Field(default_factory=Paths)
    run_prepare: bool = True
    run_plan: bool = True
    run_generate: bool = True
    run_qc: bool = True
    run_augment: bool = True
    streaming: bool = Field(
        default=True,
        description="QC checks each image as it is generated (the same verdicts as QC afterwards, sooner).",
    )
    review: bool = Field(
        default=False,
        description="After QC, pause until you have reviewed the images on the hub's review page (/review), "
        "then continue (QC again with your verdicts, then augment and train) or stop.",
    )
    review_timeout_s: int = Field(
        default=3600, ge=1, description="A review left open this long ends the run (Failed, ReviewTimedOut)."
    )
    target_accepted: int | None = Field(
        default=None, ge=1, description="Generate until this many images pass QC (streamed: stops paying at once)."
    )
    max_rounds: int = Field(default=5, ge=1, le=100, description="Round cap for target_accepted.")
    downweight_failing: bool = Field(
        default=False, description="Halve the weight of prompt values that keep failing QC before the next round."
    )
    run_train: bool = Field(default=True, description="Skipped with a warning when no base SDXL model exists.")
    run_evaluate: bool = True
    run_video: bool = Field(
        default=False,
        description="Make the storyboard's clips (OpenRouter Video API, paid) after QC; see the video section.",
    )
    prepare: PrepareParams = Field(default_factory=PrepareParams)
    plan: PlanParams = Field(default_factory=PlanParams)
    generate: GenerateParams = Field(default_factory=GenerateParams)
    qc: QCParams = Field(default_factory=QCParams)
    augment: AugmentParams = Field(default_factory=AugmentParams)
    train: TrainParams = Field(default_factory=TrainParams)
    evaluate: EvaluateParams = Field(default_factory=EvaluateParams)
    video: VideoParams = Field(default_factory=VideoParams)
