"""Flow parameters as pydantic models, so the Prefect UI renders them as forms.

Defaults are the manual's (``per_scene 12``, ``minsim 0.34``, ``minblur 80``,
``num_aug 1``) and the workspace layout's folders. A field that comes from the
configuration (model names, folders, limits, face backend) defaults to empty
and is filled from the *worker's* settings when the run starts (``resolve``):
reading Settings at import baked the deploying machine's environment into every
deployment's defaults. Every flow takes a filled model as its default, so the
UI's run form opens with its fields. No secret is ever a parameter: the
OpenRouter key comes from the credentials block or the environment inside the
tasks.
"""

from __future__ import annotations

from copy import deepcopy
from pathlib import Path
from typing import Any, ClassVar, Literal, Self

from pydantic import BaseModel, Field, field_validator

from ai_influencer.dataset.workspace import Workspace
from ai_influencer.image_options import (
    IMAGE_OPTION_DEFAULTS,
    N_MAX,
    ImageOptions,
    ProviderRouting,
    option_help,
    parse_size,
)
from ai_influencer.settings import Settings
from ai_influencer.video.options import VideoOptions


def _default(name: str) -> Any:
    """A setting's built-in default (code, not environment), for help texts."""
    return Settings.model_fields[name].default


def _from_settings(name: str, what: str) -> str:
    return f"{what}; empty: the worker's setting {name} (default {_default(name)})."


BACKEND_HELP = _from_settings(
    "face_backend",
    "dlib | insightface (buffalo_l models: NON-COMMERCIAL licence; only when chosen); auto = dlib",
)


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
    data_root: str | None = Field(default=None, description=_from_settings("data_root", "Workspace data folder"))
    prompt_bank: str | None = Field(default=None, description=_from_settings("prompt_bank", "Prompt bank YAML"))
    models_root: str | None = Field(
        default=None, description=_from_settings("models_root", "Models folder (base/, lora/)")
    )

    def workspace(self) -> Workspace:
        """The workspace these (resolved) paths point at: every folder name comes from there."""
        assert self.data_root is not None and self.models_root is not None, "resolve() the paths first"
        return Workspace(Path(self.data_root), Path(self.models_root))

    @property
    def bank(self) -> Path:
        assert self.prompt_bank is not None, "resolve() the paths first"
        return Path(self.prompt_bank)


class PrepareParams(RunParams):
    SETTINGS: ClassVar[dict[str, str]] = {"backend": "face_backend"}
    do_rembg: bool = Field(default=False, description="Remove backgrounds with rembg (model must be in models/rembg).")
    do_facecrop: bool = True
    size: int = Field(default=1024, ge=64, le=4096)
    backend: str | None = Field(default=None, description=BACKEND_HELP)
    allow_multi_face: bool = Field(
        default=False, description="Use photos with several faces (the largest kept); by default they are refused."
    )


class PlanParams(RunParams):
    SETTINGS: ClassVar[dict[str, str]] = {"model": "text_model"}
    model: str | None = Field(default=None, description=_from_settings("text_model", "OpenRouter text model"))


class Limits(RunParams):
    SETTINGS: ClassVar[dict[str, str]] = {
        "rate_limit_name": "image_rate_limit_name",
        "rate_per_s": "image_rate_per_s",
        "inflight_limit_name": "image_inflight_limit_name",
        "max_inflight": "image_max_inflight",
    }
    rate_limit_name: str | None = Field(
        default=None, description=_from_settings("image_rate_limit_name", "Global concurrency limit with slot decay")
    )
    rate_per_s: float | None = Field(
        default=None, gt=0, description=_from_settings("image_rate_per_s", "Requests/s, used when the limit is created")
    )
    inflight_limit_name: str | None = Field(
        default=None, description=_from_settings("image_inflight_limit_name", "Global concurrency limit")
    )
    max_inflight: int | None = Field(
        default=None, ge=1, description=_from_settings("image_max_inflight", "In flight, used when it is created")
    )


class GenerateParams(RunParams):
    """The generate stage; the image options (size, n, seed, quality, format, provider) take their
    defaults and help from ``ImageOptions``, the one place for them."""

    SETTINGS: ClassVar[dict[str, str]] = {"model": "image_model"}
    model: str | None = Field(default=None, description=_from_settings("image_model", "OpenRouter image model"))
    per_scene: int = Field(default=12, ge=1, le=1000)
    size: str = Field(default=IMAGE_OPTION_DEFAULTS.size, description=option_help("size"))
    n: int = Field(default=IMAGE_OPTION_DEFAULTS.n, ge=1, le=N_MAX, description=option_help("n"))
    seed: int | None = Field(default=IMAGE_OPTION_DEFAULTS.seed, description=option_help("seed"))
    quality: str | None = Field(default=None, description=option_help("quality"))
    output_format: str | None = Field(default=None, description=option_help("output_format"))
    provider: ProviderRouting | None = Field(default=None, description="Image API provider routing.")
    regenerate: bool = Field(
        default=False, description="Remake the images made with an earlier set of reference photos."
    )
    use_references: bool = Field(default=True, description="Send data/cleaned photos with each request.")
    budget_usd: float | None = Field(default=None, ge=0, description="Stop new paid requests beyond this spend.")
    estimate_usd: float | None = Field(
        default=None, ge=0, description="Expected cost per image where the endpoint lists no price."
    )
    limits: Limits = Field(default_factory=Limits)

    @field_validator("size")
    @classmethod
    def _size(cls, v: str) -> str:
        w, h = parse_size(v)  # the one size rule: names the value out of range
        return f"{w}x{h}"

    def image_options(self) -> ImageOptions:
        """The options every request of the run asks (validated: an unknown quality fails here)."""
        return ImageOptions(
            size=self.size, n=self.n, seed=self.seed, quality=self.quality, output_format=self.output_format,
            provider=self.provider,
        )  # fmt: skip


class QCParams(RunParams):
    SETTINGS: ClassVar[dict[str, str]] = {"backend": "face_backend"}
    minsim: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="Identity score 0..1; empty: this persona's calibration (data/persona.json, `influencer qc "
        "calibrate --apply`), else 0.34 = same person (docs/identity-calibration.md).",
    )
    minblur: float | None = Field(
        default=None, ge=0, description="Face sharpness; empty: this persona's calibration, else 80 (sharp/blurred)."
    )
    max_faces: int = Field(default=1, ge=1)
    backend: str | None = Field(default=None, description=BACKEND_HELP)

    def for_workspace(self, ws: Workspace) -> QCParams:
        """A copy with the thresholds left empty filled as ``influencer qc`` fills them: this persona's
        calibration, else the built-in default (``review.effective_thresholds``)."""
        from ai_influencer.review import effective_thresholds

        chosen = effective_thresholds(ws, {"minsim": self.minsim, "minblur": self.minblur})
        return self.model_copy(update=chosen.values())


class AugmentParams(RunParams):
    SETTINGS: ClassVar[dict[str, str]] = {"vlm_model": "vision_model"}
    num_aug: int = Field(default=1, ge=0, le=20)
    seed: int = 137
    size: int = Field(default=1024, ge=64, le=4096)
    kohya_repeats: int | None = Field(default=10, ge=1)
    vlm_captions: bool = Field(default=False, description="Caption with an OpenRouter vision model (paid, cached).")
    vlm_model: str | None = Field(
        default=None, description=_from_settings("vision_model", "Vision model for VLM captions")
    )


class TrainParams(RunParams):
    """The manual's train_lora.sh defaults; every other trainer setting is in ``overrides``."""

    base_model: str | None = Field(default=None, description="Default: <models_root>/base/sdxl.safetensors.")
    rank: int = Field(default=32, ge=1, description="network_dim")
    alpha: float = Field(default=16.0, gt=0, description="network_alpha")
    resolution: int = Field(default=1024, ge=16)
    max_train_steps: int | None = Field(default=None, ge=1)
    epochs: int = Field(default=10, ge=1)
    unet_lr: float = Field(default=1e-4, gt=0)
    batch_size: int = Field(default=1, ge=1)
    mixed_precision: str = Field(default="bf16", pattern="^(no|fp16|bf16)$")
    train_text_encoder: bool = False
    checkpoint_every: int = Field(default=250, ge=1)
    keep_checkpoints: int = Field(default=5, ge=1, description="Keep the newest N checkpoints of a run.")
    use_kohya: bool = Field(default=False, description="Train with kohya sd-scripts (INFLUENCER_KOHYA_PATH).")
    overrides: dict = Field(default_factory=dict, description="Any other TrainConfig field, e.g. noise_offset.")

    def base_path(self, ws: Workspace) -> Path:
        return Path(self.base_model) if self.base_model else ws.base_model


class EvaluateParams(RunParams):
    SETTINGS: ClassVar[dict[str, str]] = {"backend": "face_backend"}
    samples: int = Field(default=8, ge=1, le=200, description="K images per LoRA, prompts from the prompt bank.")
    steps: int = Field(default=30, ge=1)
    guidance: float = Field(default=6.0, ge=0)
    size: int = Field(default=1024, ge=16)
    strength: float = Field(default=1.0, ge=0, le=2)
    checkpoints: bool = Field(default=True, description="Also evaluate every saved checkpoint and pick the best.")
    backend: str | None = Field(default=None, description=BACKEND_HELP)


def _video(name: str) -> Any:
    """A ``VideoOptions`` field as it is there (default, bounds, help): the one place for them."""
    return deepcopy(VideoOptions.model_fields[name])


class VideoParams(RunParams):
    """The video stage; every clip option takes its default, bounds and help from ``VideoOptions``."""

    SETTINGS: ClassVar[dict[str, str]] = {"limit_name": "video_jobs_limit_name", "backend": "face_backend"}
    model: str = _video("model")
    mode: Literal["first-frame", "references"] = _video("mode")
    resolution: str | None = _video("resolution")
    aspect_ratio: str | None = _video("aspect_ratio")
    duration: int | None = _video("duration")
    generate_audio: bool | None = _video("generate_audio")
    seed: int | None = _video("seed")
    max_clips: int | None = _video("max_clips")
    budget_usd: float | None = _video("budget_usd")
    estimate_usd: float | None = _video("estimate_usd")
    max_in_flight: int = _video("max_in_flight")
    max_references: int = _video("max_references")
    retry_failed: bool = _video("retry_failed")
    check_identity: bool = _video("check_identity")
    callback_url: str | None = _video("callback_url")
    deadline_s: float = _video("deadline_s")
    poll_initial_s: float = _video("poll_initial_s")
    poll_max_s: float = _video("poll_max_s")
    limit_name: str | None = Field(
        default=None,
        description=_from_settings("video_jobs_limit_name", "Global concurrency limit of jobs waited for at once"),
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
