"""Flow parameters as pydantic models, so the Prefect UI renders them as forms.

Defaults are the manual's (``per_scene 12``, ``minsim 0.34``, ``minblur 80``,
``num_aug 1``) and the workspace layout's folders. No secret is ever a
parameter: the OpenRouter key comes from the credentials block or the
environment inside the tasks.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from ai_influencer.settings import Settings

_s = Settings()
BACKEND_HELP = "dlib (default) | insightface (buffalo_l models: NON-COMMERCIAL licence; only when chosen). auto = dlib."


def current_params(name: str = "params") -> dict:
    """The running flow's parameter as a dict (a model object in-process, a dict from a deployment)."""
    from prefect.runtime import flow_run

    value = flow_run.parameters.get(name) or {}
    return value.model_dump() if isinstance(value, BaseModel) else dict(value)


class Paths(BaseModel):
    data_root: str = Field(default=str(_s.data_root), description="Workspace data folder.")
    prompt_bank: str = Field(default=str(_s.prompt_bank), description="Prompt bank YAML.")
    models_root: str = Field(default=str(_s.models_root), description="Models folder (base/, lora/).")

    def sub(self, name: str) -> str:
        return f"{self.data_root.rstrip('/')}/{name}"


class PrepareParams(BaseModel):
    do_rembg: bool = Field(default=False, description="Remove backgrounds with rembg (model must be in models/rembg).")
    do_facecrop: bool = True
    size: int = Field(default=1024, ge=64, le=4096)
    backend: str = Field(default=_s.face_backend, description=BACKEND_HELP)


class PlanParams(BaseModel):
    model: str = Field(default=_s.text_model, description="OpenRouter text model.")


class Limits(BaseModel):
    rate_limit_name: str = Field(default=_s.image_rate_limit_name, description="Global concurrency limit (slot decay).")
    rate_per_s: float = Field(default=_s.image_rate_per_s, gt=0, description="Used when the limit must be created.")
    inflight_limit_name: str = Field(default=_s.image_inflight_limit_name)
    max_inflight: int = Field(default=_s.image_max_inflight, ge=1, description="Used when the limit is created.")


class GenerateParams(BaseModel):
    model: str = Field(default=_s.image_model, description="OpenRouter image model.")
    per_scene: int = Field(default=12, ge=1, le=1000)
    size: str = Field(default="1024x1024", pattern=r"^\d{2,5}x\d{2,5}$")
    seed: int = 0
    use_references: bool = Field(default=True, description="Send data/cleaned photos with each request.")
    budget_usd: float | None = Field(default=None, ge=0, description="Stop new paid requests beyond this spend.")
    estimate_usd: float | None = Field(default=None, ge=0, description="Expected cost per image before any is seen.")
    limits: Limits = Field(default_factory=Limits)


class QCParams(BaseModel):
    minsim: float = Field(
        default=0.34, ge=0, le=1, description="Identity score 0..1; 0.34 = same person (docs/identity-calibration.md)."
    )
    minblur: float = Field(default=80.0, ge=0, description="Face sharpness; 80 = the sharp/blurred line.")
    max_faces: int = Field(default=1, ge=1)
    backend: str = Field(default=_s.face_backend, description=BACKEND_HELP)


class AugmentParams(BaseModel):
    num_aug: int = Field(default=1, ge=0, le=20)
    seed: int = 137
    size: int = Field(default=1024, ge=64, le=4096)
    kohya_repeats: int | None = Field(default=10, ge=1)
    vlm_captions: bool = Field(default=False, description="Caption with an OpenRouter vision model (paid, cached).")
    vlm_model: str = Field(default=_s.vision_model, description="Vision model for VLM captions.")


class TrainParams(BaseModel):
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


class EvaluateParams(BaseModel):
    samples: int = Field(default=8, ge=1, le=200, description="K images per LoRA, prompts from the prompt bank.")
    steps: int = Field(default=30, ge=1)
    guidance: float = Field(default=6.0, ge=0)
    size: int = Field(default=1024, ge=16)
    strength: float = Field(default=1.0, ge=0, le=2)
    checkpoints: bool = Field(default=True, description="Also evaluate every saved checkpoint and pick the best.")
    backend: str = Field(default=_s.face_backend, description=BACKEND_HELP)


class HybridParams(BaseModel):
    paths: Paths = Field(default_factory=Paths)
    run_prepare: bool = True
    run_plan: bool = True
    run_generate: bool = True
    run_qc: bool = True
    run_augment: bool = True
    target_accepted: int | None = Field(
        default=None, ge=1, description="Keep generating in rounds until this many images pass QC."
    )
    max_rounds: int = Field(default=5, ge=1, le=100, description="Round cap for target_accepted.")
    downweight_failing: bool = Field(
        default=False, description="Halve the weight of prompt values that keep failing QC before the next round."
    )
    run_train: bool = Field(default=True, description="Skipped with a warning when no base SDXL model exists.")
    run_evaluate: bool = True
    prepare: PrepareParams = Field(default_factory=PrepareParams)
    plan: PlanParams = Field(default_factory=PlanParams)
    generate: GenerateParams = Field(default_factory=GenerateParams)
    qc: QCParams = Field(default_factory=QCParams)
    augment: AugmentParams = Field(default_factory=AugmentParams)
    train: TrainParams = Field(default_factory=TrainParams)
    evaluate: EvaluateParams = Field(default_factory=EvaluateParams)
