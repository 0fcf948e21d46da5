"""Checks of an installation and a workspace, for ``influencer doctor`` and for ``influencer run``
before it starts Prefect: each one ok, or what is wrong and what to do, in one line.

Only what needs no Prefect lives here (folders, photos, prompt bank, OpenRouter key and models, GPU,
disk, images that do not decode); the CLI resolves the key (a Prefect block, else the environment)
and adds the Prefect check. ``doctor`` and ``run`` share these, so doctor says what run will do.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ai_influencer.dataset.workspace import Workspace
from ai_influencer.options.prepare import PREPARE_DEFAULTS
from ai_influencer.settings import Settings

if TYPE_CHECKING:
    from ai_influencer.options.images import ImageOptions
    from ai_influencer.prompt_bank import Persona

MIN_FREE_GB = 5.0
# GET /key and GET /models are free and answer in well under a second; a base URL that does not
# answer within this is reported at once instead of being retried for a minute.
NETWORK_CHECK_TIMEOUT_S = 6.0
REFERENCE_FIX = "put at least 2 photos of the persona (JPEG/PNG/WEBP, one face each) in {folder}/"


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # "ok" | "warn" | "fail"
    detail: str
    fix: str = ""


def check_workspace(ws: Workspace) -> list[Check]:
    missing = [str(f) for f in ws.folders() if not f.is_dir()]
    return [
        Check("workspace", "warn", f"missing folders: {', '.join(missing)}", "run `influencer init`")
        if missing
        else Check("workspace", "ok", f"{ws.data_root}/ and {ws.models_root}/ are in place")
    ]


def check_reference_photos(
    settings: Settings,
    folder: Path,
    *,
    allow_multi_face: bool = PREPARE_DEFAULTS.allow_multi_face,
    backend: str | None = None,
) -> Check:
    """Each photo decoded and its faces counted with the run's face engine: what ``prepare`` will use.

    Why not count files: a text file named .jpg, a photo without a face or with two faces counted
    as "ok" here and failed (or was silently misused) minutes into the run.
    """
    from ai_influencer.usecases.prepare import MIN_REFERENCES, check_references
    from ai_influencer.vision.faces import FaceModelMissingError

    fix = REFERENCE_FIX.format(folder=folder)
    try:
        outcome = check_references(settings, folder, allow_multi_face=allow_multi_face, backend=backend)
    except (FaceModelMissingError, ImportError, OSError) as exc:
        return Check("reference photos", "fail", f"cannot check them: {exc}", "see `influencer doctor`")
    usable = [i.source.name for i in outcome.items if i.status == "ok"]
    skipped = "; ".join(outcome.errors)
    total = len(outcome.items)
    if not total:
        return Check("reference photos", "fail", f"none in {folder}", fix)
    if len(usable) < MIN_REFERENCES:
        why = f" ({skipped})" if skipped else ""
        return Check("reference photos", "fail", f"{len(usable)} of {total} usable in {folder}{why}", fix)
    if skipped:
        return Check(
            "reference photos",
            "warn",
            f"{len(usable)} of {total} usable in {folder}: `influencer run` uses {', '.join(usable)} "
            f"and skips {skipped}",
            "replace or remove the skipped photos (one face each; --allow-multi-face keeps the largest face)",
        )
    return Check(
        "reference photos", "ok", f"{total} in {folder}, each decodes and shows one face: run uses all {total}"
    )


def check_prompt_bank(path: Path) -> Check:
    return check_prompt_bank_and_persona(path)[0]


def check_prompt_bank_and_persona(path: Path) -> list[Check]:
    """The bank loads, and its persona is not still the template's (captions would say ``ohwx woman``
    for anyone)."""
    from ai_influencer.prompt_bank import PromptBankError, load_prompt_bank

    try:
        bank = load_prompt_bank(path)
    except (PromptBankError, FileNotFoundError, OSError) as exc:
        return [Check("prompt bank", "fail", str(exc).splitlines()[0], "run `influencer init` or fix the file")]
    out = [Check("prompt bank", "ok", f"{path}: persona {bank.persona.name!r}, {len(bank.scenes)} scenes")]
    persona, template = bank.persona, template_persona()
    if (persona.name, persona.class_word) == (template.name, template.class_word):
        out.append(
            Check(
                "persona",
                "warn",
                f"still the template's ({persona.name!r}, class word {persona.class_word!r}): captions will read "
                f"'{persona.trigger_token} {persona.class_word}'",
                f"set persona name, class_word and description in {path} "
                "(or `influencer init --name ... --class-word ... --description ...` in a new folder)",
            )
        )
    elif persona.description == template.description:
        out.append(
            Check(
                "persona",
                "warn",
                f"{persona.name!r} ({persona.class_word}) still has the template's description "
                f"({persona.description!r}): every prompt carries it",
                f"describe the persona in {path} (persona.description)",
            )
        )
    else:
        out.append(
            Check("persona", "ok", f"{persona.name!r}: captions read '{persona.trigger_token} {persona.class_word}'")
        )
    return out


def template_persona() -> Persona:
    """The persona of ``influencer init``'s template: a bank that still has it was not edited."""
    from ai_influencer.prompt_bank import parse_prompt_bank, prompt_bank_template

    return parse_prompt_bank(prompt_bank_template(), Path("prompt_bank.yaml")).persona


def check_openrouter_key(settings: Settings, source: str, *, timeout_s: float = NETWORK_CHECK_TIMEOUT_S) -> Check:
    """The key (from ``source``: a block or the environment) against the base URL: one free ``GET /key``,
    no retries. Transient answers (429, 5xx) only warn: the run's own retries handle those."""
    from ai_influencer.openrouter import OpenRouterClient, OpenRouterError

    name = "OpenRouter key"
    if settings.openrouter_api_key is None:
        return Check(
            name,
            "fail",
            "no OpenRouter key found",
            "set OPENROUTER_API_KEY (environment or .env) or store it with `influencer set-key`",
        )
    url = settings.openrouter_base_url
    where = (
        "the base URL stored with the key (`influencer set-key --base-url`)"
        if source.startswith("block")
        else ("OPENROUTER_BASE_URL")
    )
    try:
        with OpenRouterClient.from_settings(settings, max_retries=0, timeout=timeout_s) as c:
            info = c.key_info()
    except OpenRouterError as exc:
        if exc.status == 401:
            return Check(
                name,
                "fail",
                f"the key from {source} was refused by {url} ({exc.status}: {exc.message})",
                "set a valid key with `influencer set-key` or OPENROUTER_API_KEY",
            )
        if exc.status == 402:
            return Check(name, "fail", f"from {source}: {exc.message}", "add credits on openrouter.ai")
        if exc.status in (0, 408):
            return Check(
                name, "fail", f"cannot reach OpenRouter at {url}: {exc.message}", f"check {where} and the network"
            )
        if exc.status == 429 or exc.status >= 500:
            return Check(name, "warn", f"from {source}: {url} answered {exc}", "the run retries these; or try later")
        return Check(name, "fail", f"{url} answered {exc}", f"check {where}")
    left = "no limit" if info.limit_remaining is None else f"${info.limit_remaining:.2f} left"
    if info.limit_remaining is not None and info.limit_remaining <= 0:
        return Check(name, "fail", f"from {source}: works, but $0 left on its limit", "add credits or raise the limit")
    return Check(name, "ok", f"from {source}: works ({left})")


def check_openrouter_models(
    settings: Settings, wanted: dict[str, str], *, timeout_s: float = NETWORK_CHECK_TIMEOUT_S
) -> Check:
    """Each model the run will call (``{"text": id, "image": id}``) is in OpenRouter's model list and
    produces that output. ``GET /models`` is free and needs no key."""
    from ai_influencer.openrouter import OpenRouterClient, OpenRouterError

    name = "OpenRouter models"
    kwargs = {**OpenRouterClient._settings_kwargs(settings), "max_retries": 0, "timeout": timeout_s}
    try:
        with OpenRouterClient(**kwargs) as c:
            listed = {m.id: m for m in c.list_models()}
    except OpenRouterError as exc:
        return Check(name, "warn", f"cannot read the model list: {exc}", "the models are checked on their first call")
    image_api: set[str] = set()
    if "image" in wanted:
        try:  # the Image API's own listing: a model served only there is not a chat model
            with OpenRouterClient(**kwargs) as c:
                image_api = {m.id for m in c.list_image_models()}
        except OpenRouterError:
            image_api = set()
    problems = []
    for output, model in wanted.items():
        found = listed.get(model)
        if output == "image" and model in image_api:
            continue
        if found is None:
            problems.append(f"{output} model {model!r} is not in OpenRouter's model list")
        elif output not in found.output_modalities:
            problems.append(f"{model!r} makes {'+'.join(found.output_modalities) or 'nothing'}, not {output}")
    if problems:
        flags = " / ".join(f"`influencer models -m {o}`" for o in wanted)
        return Check(name, "fail", "; ".join(problems), f"pick one that {flags} lists (--model or the settings)")
    return Check(name, "ok", ", ".join(f"{o}: {m}" for o, m in wanted.items()))


def check_image_options(
    settings: Settings, model: str, options: ImageOptions, *, timeout_s: float = NETWORK_CHECK_TIMEOUT_S
) -> Check:
    """Every image option a run would send, checked against the endpoint that will serve it (free listings
    only): an unsupported ``--n`` fails here, before Prefect starts and before the plan's paid LLM call."""
    from ai_influencer.openrouter import OpenRouterClient, OpenRouterError
    from ai_influencer.openrouter.capabilities import UnsupportedParameterError, resolve_route

    name = "image options"
    kwargs = {**OpenRouterClient._settings_kwargs(settings), "max_retries": 0, "timeout": timeout_s}
    try:
        with OpenRouterClient(**kwargs) as c:
            route = resolve_route(c, model, options)
    except UnsupportedParameterError as exc:
        return Check(name, "fail", str(exc), "change the option, or pick a model whose endpoint accepts it")
    except OpenRouterError as exc:
        return Check(name, "warn", f"cannot check them now: {exc}", "they are checked again before the first request")
    return Check(name, "ok", route.describe())


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
            Check("SDXL base model", "warn", f"{base} not found: train/evaluate are skipped", "see docs/training.md")
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
