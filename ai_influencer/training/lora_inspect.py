"""What a LoRA file holds and whether every key lands on a real SDXL module: "will this load in ComfyUI?".

Loaders do not fail on a LoRA key that matches no module: ComfyUI logs "lora key not
loaded" and goes on, diffusers warns about unexpected keys, kohya skips them. A
LoRA with a wrong block numbering therefore loads "fine" and is silently weaker or
wrong. This check resolves every key against the module names of the full-size
SDXL (the UNet and both CLIP text encoders built on the meta device from their
configs, no weights), in every naming the consumers accept:

* kohya: ``lora_unet_<SGM name>`` or ``lora_unet_<diffusers name>`` (dots as ``_``),
  ``lora_te1_`` / ``lora_te2_`` (``lora_te_`` = te1), ``.lora_down/.lora_up/.alpha``;
* diffusers / PEFT: ``unet.`` / ``text_encoder.`` / ``text_encoder_2.`` with
  ``lora_A/lora_B`` (also ``.lora.down``, the old ``processor.to_q_lora`` form), no alpha;
* ``diffusion_model.<SGM name>`` and bare PEFT UNet names.

Beyond keys that match nothing, it checks each module's weight shapes against the real
module, and the SGM numbering as a whole: a file that has weights for a transformer
block SDXL does not have *and* leaves out one it does have, in the same part of the
UNet, is shifted, and the blocks between hold weights trained for a neighbour (the
pre-fix ai-influencer export wrote ``up_blocks.1.attentions.j`` to ``output_blocks.{4+j}.1``).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from ai_influencer.training.sdxl_layout import (
    SDXL_TE1_CONFIG,
    SDXL_TE2_CONFIG,
    SDXL_UNET_CONFIG,
    SgmLayout,
    sgm_section,
)


class LoraFileError(ValueError):
    """The file is not a readable safetensors LoRA (the message names the file)."""


@dataclass(frozen=True)
class RefModule:
    """One Linear/Conv2d of the full-size SDXL that a LoRA can target."""

    block: str  # input / middle / output / other (UNet), te1 / te2
    name: str  # SGM name for the UNet, ``text_model.…`` for the text encoders
    diffusers: str
    container: str  # SGM transformer block (``output_blocks.3.1``) for modules inside one, else ""
    in_features: int
    out_features: int


@dataclass
class Reference:
    modules: dict[str, RefModule]  # canonical name -> module
    unet: dict[str, RefModule]  # every accepted spelling (SGM/diffusers, dotted/underscored) -> module
    te1: dict[str, RefModule]
    te2: dict[str, RefModule]

    @property
    def containers(self) -> set[str]:
        return {m.container for m in self.modules.values() if m.container}


def _dims(module: Any) -> tuple[int, int] | None:
    import torch

    if isinstance(module, torch.nn.Linear):
        return module.in_features, module.out_features
    if isinstance(module, torch.nn.Conv2d):
        return module.in_channels, module.out_channels
    return None


def sdxl_reference() -> Reference:
    """Every LoRA-targetable module of SDXL base, from its configs on the meta device (no weights, ~1 s)."""
    return _reference(json.dumps([SDXL_UNET_CONFIG, SDXL_TE1_CONFIG, SDXL_TE2_CONFIG], sort_keys=True))


def base_reference(folder: Path) -> Reference:
    """The same for another SDXL-architecture model, from the configs of its diffusers folder."""
    configs = []
    for sub in ("unet", "text_encoder", "text_encoder_2"):
        cfg = Path(folder) / sub / "config.json"
        if not cfg.is_file():
            raise LoraFileError(f"{folder} is not a diffusers SDXL folder: {cfg} is missing")
        configs.append({k: v for k, v in json.loads(cfg.read_text()).items() if not k.startswith("_")})
    return _reference(json.dumps(configs, sort_keys=True))


@lru_cache(maxsize=4)
def _reference(configs_json: str) -> Reference:
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    unet_cfg, te1_cfg, te2_cfg = json.loads(configs_json)
    with init_empty_weights():
        unet = UNet2DConditionModel(**unet_cfg)
        te1 = CLIPTextModel(CLIPTextConfig(**te1_cfg))
        te2 = CLIPTextModelWithProjection(CLIPTextConfig(**te2_cfg))
    layout = SgmLayout.from_config(unet.config)
    ref = Reference({}, {}, {}, {})
    container = re.compile(r"^((?:input_blocks|output_blocks)\.\d+\.1|middle_block\.1)\.")
    for name, module in unet.named_modules():
        if (dims := _dims(module)) is None:
            continue
        sgm = layout.to_sgm(name)
        m = container.match(sgm)
        mod = RefModule(sgm_section(sgm), sgm, name, m.group(1) if m else "", *dims)
        ref.modules[sgm] = mod
        for spelling in (sgm, name):
            ref.unet[spelling] = ref.unet[spelling.replace(".", "_")] = mod
    for block, model, table in (("te1", te1, ref.te1), ("te2", te2, ref.te2)):
        for name, module in model.named_modules():
            if (dims := _dims(module)) is None:
                continue
            full = name if name.startswith("text_model.") else f"text_model.{name}"
            mod = RefModule(block, full, full, "", *dims)
            ref.modules[f"{block}:{full}"] = mod
            short = full.removeprefix("text_model.")
            for spelling in (full, short):
                table[spelling] = table[spelling.replace(".", "_")] = mod
    return ref


# (suffix, role) in match order; the module name is what precedes the suffix
SUFFIXES = (
    (".lora_down.weight", "down"), (".lora_up.weight", "up"), (".lora_mid.weight", "mid"), (".alpha", "alpha"),
    (".dora_scale", "other"), (".lora_A.weight", "down"), (".lora_B.weight", "up"), (".lora.down.weight", "down"),
    (".lora.up.weight", "up"), ("_lora.down.weight", "down"), ("_lora.up.weight", "up"),
    (".lora_linear_layer.down.weight", "down"), (".lora_linear_layer.up.weight", "up"),
    (".lora_magnitude_vector", "other"),
)  # fmt: skip
NAMESPACES = (
    ("lora_unet_", "unet", False), ("lora_te1_", "te1", False), ("lora_te2_", "te2", False),
    ("lora_te_", "te1", False), ("unet.", "unet", True), ("text_encoder_2.", "te2", True),
    ("text_encoder.", "te1", True), ("diffusion_model.", "unet", True), ("base_model.model.", "unet", True),
)  # fmt: skip
BARE_UNET = ("down_blocks.", "mid_block.", "up_blocks.", "input_blocks.", "middle_block.", "output_blocks.")


def split_key(key: str) -> tuple[str, str, str, str] | None:
    """A file key -> (namespace, its prefix, module name, role); None if it is no LoRA key we know."""
    key = re.sub(r"\.default(\.weight)$", r"\1", key)  # PEFT adapter name
    found = next(((p, ns, d) for p, ns, d in NAMESPACES if key.startswith(p)), None)
    if found is not None:
        prefix, namespace, dotted = found
    elif key.startswith(BARE_UNET):
        prefix, namespace, dotted = "", "unet", True
    else:
        return None
    rest = key[len(prefix) :]
    for suffix, role in SUFFIXES:
        if rest.endswith(suffix):
            return namespace, prefix, rest[: -len(suffix)], role
    if not dotted and "." in rest:  # kohya-style name with a suffix we do not interpret (LyCORIS, ...)
        return namespace, prefix, rest.split(".", 1)[0], "other"
    return None


def _normalise(name: str) -> str:
    """Old diffusers attention-processor spellings -> module names."""
    name = name.replace(".processor.", ".")
    return f"{name}.0" if name.endswith(".to_out") else name


@dataclass
class ModuleReport:
    namespace: str
    name: str  # module name as written in the file, without the namespace prefix
    prefix: str  # lora_unet_, unet., text_encoder_2., ...
    target: str | None  # the SDXL module it lands on (canonical name), None: dropped
    block: str  # input / middle / output / other / te1 / te2 / unknown
    keys: int = 0
    rank: int | None = None
    alpha: float | None = None
    problem: str | None = None

    @property
    def written(self) -> str:
        return self.prefix + self.name


@dataclass
class LoraReport:
    path: str
    keys: int
    format: str
    modules: list[ModuleReport] = field(default_factory=list)
    unrecognised: list[str] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)
    metadata_keys: int = 0
    shifted: list[str] = field(default_factory=list)  # one line per UNet part whose numbering is off
    uncovered: list[str] = field(default_factory=list)  # SDXL transformer blocks without weights

    @property
    def dropped(self) -> list[ModuleReport]:
        return [m for m in self.modules if m.target is None]

    @property
    def mismatched(self) -> list[ModuleReport]:
        return [m for m in self.modules if m.target is not None and m.problem]

    @property
    def ok(self) -> bool:
        return not (self.dropped or self.mismatched or self.unrecognised or self.shifted)

    def per_block(self) -> dict[str, int]:
        order = ["input", "middle", "output", "other", "te1", "te2", "unknown"]
        counts = Counter(m.block for m in self.modules)
        return {b: counts[b] for b in order if counts[b]}

    def rank_alpha(self) -> list[tuple[int | None, float | None, int]]:
        """(rank, alpha, modules) groups, most common first; alpha None = missing (loaders use scale 1.0)."""
        return [(r, a, n) for (r, a), n in Counter((m.rank, m.alpha) for m in self.modules).most_common()]

    def as_dict(self) -> dict[str, Any]:
        return {
            "path": self.path, "keys": self.keys, "format": self.format, "ok": self.ok,
            "per_block": self.per_block(),
            "rank_alpha": [{"rank": r, "alpha": a, "modules": n} for r, a, n in self.rank_alpha()],
            "dropped": [m.written for m in self.dropped], "mismatched": [asdict(m) for m in self.mismatched],
            "unrecognised": self.unrecognised, "shifted": self.shifted, "uncovered": self.uncovered,
            "metadata": self.metadata, "metadata_keys": self.metadata_keys,
            "modules": [asdict(m) for m in self.modules],
        }  # fmt: skip


METADATA_SHOWN = (
    "ss_network_module", "ss_network_dim", "ss_network_alpha", "ss_network_args", "ss_network_train_unet_only",
    "ss_base_model_version", "ss_sd_model_name", "ss_resolution", "ss_steps", "ss_epoch", "ss_num_train_images",
    "ss_learning_rate", "ss_optimizer", "ss_mixed_precision", "ss_training_comment", "ss_training_finished_at",
    "modelspec.architecture", "modelspec.title", "modelspec.resolution", "lora_adapter_metadata",
)  # fmt: skip


def _read(path: Path) -> tuple[dict[str, tuple[int, ...]], dict[str, float], dict[str, str]]:
    """Shapes of every tensor, values of the scalar ``alpha`` ones, and the metadata."""
    from safetensors import SafetensorError, safe_open

    if not path.is_file():
        raise LoraFileError(f"{path}: no such file")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            shapes, alphas = {}, {}
            for k in f.keys():  # noqa: SIM118 - safe_open has keys(), not __iter__
                shapes[k] = tuple(f.get_slice(k).get_shape())
                if k.endswith(".alpha"):
                    alphas[k] = float(f.get_tensor(k).float().reshape(-1)[0])
    except SafetensorError as exc:
        raise LoraFileError(f"{path}: not a safetensors file ({exc})") from None
    return shapes, alphas, meta


def _peft_alpha(meta: dict[str, str], namespace: str) -> float | None:
    """lora_alpha from diffusers' ``lora_adapter_metadata`` header (PEFT files carry no alpha tensors)."""
    try:
        packed = json.loads(meta.get("lora_adapter_metadata", "{}"))
    except json.JSONDecodeError:
        return None
    component = {"unet": "unet", "te1": "text_encoder", "te2": "text_encoder_2"}[namespace]
    value = packed.get(f"{component}.lora_alpha", packed.get("lora_alpha"))
    return float(value) if isinstance(value, int | float) else None


def _resolve(ref: Reference, namespace: str, name: str) -> RefModule | None:
    table = {"unet": ref.unet, "te1": ref.te1, "te2": ref.te2}[namespace]
    return table.get(name) or table.get(_normalise(name))


def _check_shapes(mod: ModuleReport, target: RefModule, down: tuple[int, ...] | None, up: tuple[int, ...] | None):
    if down is not None and len(down) >= 2 and down[1] != target.in_features:
        mod.problem = f"lora_down takes {down[1]} inputs, {target.name} has {target.in_features}"
    elif up is not None and up and up[0] != target.out_features:
        mod.problem = f"lora_up gives {up[0]} outputs, {target.name} has {target.out_features}"


def inspect_lora(path: Path, reference: Reference | None = None) -> LoraReport:
    """Resolve every key of a LoRA file against SDXL (or ``reference``); see the module doc for what is checked."""
    path = Path(path)
    shapes, alphas, meta = _read(path)
    ref = reference or sdxl_reference()
    report = LoraReport(str(path), len(shapes), "unknown")
    grouped: dict[tuple[str, str], dict[str, Any]] = {}
    for key, shape in shapes.items():
        parsed = split_key(key)
        if parsed is None:
            report.unrecognised.append(key)
            continue
        namespace, prefix, name, role = parsed
        entry = grouped.setdefault((namespace, name), {"keys": 0, "prefix": prefix})
        entry["keys"] += 1
        entry[role] = alphas.get(key) if role == "alpha" else shape
    for (namespace, name), entry in grouped.items():
        target = _resolve(ref, namespace, name)
        down, up = entry.get("down"), entry.get("up")
        rank = down[0] if down else (up[1] if up and len(up) > 1 else None)
        alpha = entry.get("alpha", _peft_alpha(meta, namespace))
        mod = ModuleReport(
            namespace, name, entry["prefix"], target.name if target else None,
            target.block if target else "unknown", entry["keys"], rank, alpha,
        )  # fmt: skip
        if target is not None:
            _check_shapes(mod, target, down, up)
        report.modules.append(mod)
    report.format = _format(grouped, shapes)
    report.metadata = {k: meta[k] for k in METADATA_SHOWN if k in meta}
    report.metadata_keys = len(meta)
    _check_numbering(report, ref)
    return report


def _format(grouped: dict[tuple[str, str], dict[str, Any]], shapes: dict[str, tuple[int, ...]]) -> str:
    kohya = any(k.startswith("lora_") for k in shapes)
    dotted = any(not k.startswith("lora_") for k in shapes)
    if kohya and dotted:
        return "mixed kohya and diffusers keys"
    if dotted:
        return "diffusers/PEFT (module.lora_A/lora_B, no alpha tensors)"
    if not kohya:
        return "unknown"
    unet_names = [n for ns, n in grouped if ns == "unet"]
    sgm = any(n.startswith(("input_blocks", "middle_block", "output_blocks")) for n in unet_names)
    diff = any(n.startswith(("down_blocks", "mid_block", "up_blocks")) for n in unet_names)
    naming = "SGM" if sgm and not diff else "diffusers" if diff and not sgm else "mixed" if sgm else "no UNet"
    return f"kohya ({naming} UNet names)"


SGM_CONTAINER = re.compile(r"^(input_blocks|output_blocks)[._](\d+)[._]1[._]")


def _check_numbering(report: LoraReport, ref: Reference) -> None:
    """Find a shifted SGM numbering: weights for a transformer block SDXL lacks plus a real one left empty."""
    have = {ref.modules[m.target].container for m in report.modules if m.target and m.block not in ("te1", "te2")}
    have.discard("")
    if not have:
        return
    report.uncovered = sorted(ref.containers - have, key=_container_order)
    extra: dict[str, set[int]] = {}
    for m in report.dropped:
        hit = SGM_CONTAINER.match(m.name)
        if m.namespace == "unet" and hit:
            extra.setdefault(hit.group(1), set()).add(int(hit.group(2)))
    for part, missing_idx in extra.items():
        empty = sorted(int(c.split(".")[1]) for c in report.uncovered if c.startswith(part))
        if not empty:
            continue
        lo, hi = min(empty), max(missing_idx)
        between = sorted(int(c.split(".")[1]) for c in have if c.startswith(part) and lo < int(c.split(".")[1]) < hi)
        nonexistent = ", ".join(f"{part}.{i}.1" for i in sorted(missing_idx))
        gaps = ", ".join(f"{part}.{i}.1" for i in empty)
        suspects = ", ".join(f"{part}.{i}.1" for i in between) or "none"
        report.shifted.append(
            f"{part} numbering is shifted: weights for {nonexistent} (not in SDXL) while {gaps} gets none; "
            f"{suspects} likely hold weights trained for a neighbouring block"
        )


def _container_order(name: str) -> tuple[int, int]:
    part, _, rest = name.partition(".")
    index = int(rest.split(".")[0]) if part != "middle_block" else 0
    return ({"input_blocks": 0, "middle_block": 1, "output_blocks": 2}[part], index)
