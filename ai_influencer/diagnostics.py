"""Checks of an installation and a workspace, for ``influencer doctor``: each one ok or what to do.

Only what needs no Prefect lives here (folders, photos, prompt bank, models, GPU, disk, images that
do not decode); the CLI adds the key and Prefect checks, which need the orchestration layer.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from ai_influencer.dataset.workspace import Workspace
from ai_influencer.settings import Settings

MIN_FREE_GB = 5.0


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # "ok" | "warn" | "fail"
    detail: str
    fix: str = ""


def check_workspace(ws: Workspace) -> list[Check]:
    from ai_influencer.vision.image_io import list_images

    missing = [str(f) for f in ws.folders() if not f.is_dir()]
    out = [
        Check("workspace", "warn", f"missing folders: {', '.join(missing)}", "run `influencer init`")
        if missing
        else Check("workspace", "ok", f"{ws.data_root}/ and {ws.models_root}/ are in place")
    ]
    photos = list_images(ws.input_raw) if ws.input_raw.is_dir() else []
    if len(photos) >= 2:
        out.append(Check("reference photos", "ok", f"{len(photos)} in {ws.input_raw}"))
    else:
        out.append(
            Check(
                "reference photos",
                "fail",
                f"{len(photos)} in {ws.input_raw}",
                f"put at least 2 photos of the persona (one face each) in {ws.input_raw}/",
            )
        )
    return out


def check_prompt_bank(path: Path) -> Check:
    from ai_influencer.prompt_bank import PromptBankError, load_prompt_bank

    try:
        bank = load_prompt_bank(path)
    except (PromptBankError, FileNotFoundError, OSError) as exc:
        return Check("prompt bank", "fail", str(exc).splitlines()[0], "run `influencer init` or fix the file")
    return Check("prompt bank", "ok", f"{path}: persona {bank.persona.name!r}, {len(bank.scenes)} scenes")


def check_models(settings: Settings, ws: Workspace) -> list[Check]:
    from ai_influencer.vision.faces import FaceModelMissingError, check_insightface_pack, dlib_models_dir

    out = []
    try:
        out.append(Check("face models (dlib)", "ok", f"{dlib_models_dir()} (public-domain models)"))
    except FaceModelMissingError as exc:
        out.append(Check("face models (dlib)", "fail", str(exc), "pip install face-recognition-models"))
    if settings.face_backend == "insightface":
        pack = Path(settings.insightface_root) / "models" / "buffalo_l"
        try:
            check_insightface_pack(pack)
            out.append(Check("face models (insightface)", "warn", f"{pack}: NON-COMMERCIAL research licence"))
        except FaceModelMissingError as exc:
            out.append(Check("face models (insightface)", "fail", str(exc), "or set INFLUENCER_FACE_BACKEND=dlib"))
    base = ws.base_model
    if base.exists():
        out.append(Check("SDXL base model", "ok", str(base)))
    else:
        out.append(
            Check("SDXL base model", "warn", f"{base} not found: train/evaluate are skipped", "see README 'Training'")
        )
    return out


def check_compute(settings: Settings) -> list[Check]:
    out = []
    try:
        import torch

        if torch.cuda.is_available():
            out.append(Check("GPU", "ok", f"CUDA: {torch.cuda.get_device_name(0)}"))
        else:
            out.append(Check("GPU", "warn", "no CUDA GPU: training runs on the CPU (slow)", "train on a GPU host"))
    except ImportError:
        out.append(Check("GPU", "warn", "PyTorch not installed: no training", "install the `train` extra"))
    try:
        import onnxruntime

        have = set(onnxruntime.get_available_providers())
        missing = [p for p in settings.onnx_providers if p not in have]
        status, detail = (
            ("fail", f"not available: {missing}") if missing else ("ok", ", ".join(settings.onnx_providers))
        )
        out.append(Check("onnxruntime providers", status, detail, "fix INFLUENCER_ONNX_PROVIDERS" if missing else ""))
    except ImportError:
        out.append(Check("onnxruntime providers", "warn", "onnxruntime not installed"))
    return out


def check_disk(ws: Workspace) -> Check:
    root = ws.data_root if ws.data_root.exists() else Path(".")
    free = shutil.disk_usage(root).free / 1e9
    if free < MIN_FREE_GB:
        return Check("disk", "warn", f"{free:.1f} GB free under {root}", f"keep >= {MIN_FREE_GB:g} GB free")
    return Check("disk", "ok", f"{free:.0f} GB free under {root.resolve()}")


def check_images(ws: Workspace, fix: bool) -> Check:
    from ai_influencer.dataset.integrity import find_damaged, quarantine_damaged

    folders = [ws.cleaned, ws.synth, ws.qc_passed, ws.augment]
    damaged = quarantine_damaged(folders) if fix else find_damaged(folders)
    if not damaged:
        return Check("images", "ok", "all decode")
    names = ", ".join(str(d.path) for d in damaged[:3]) + (", ..." if len(damaged) > 3 else "")
    if fix:
        return Check("images", "warn", f"{len(damaged)} damaged, moved to .quarantine/: {names}", "re-run the stage")
    return Check("images", "fail", f"{len(damaged)} damaged: {names}", "run `influencer doctor` to move them aside")
