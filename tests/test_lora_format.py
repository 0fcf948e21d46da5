"""Kohya export and `influencer lora inspect` on the FULL-SIZE SDXL module names (meta device, no weights).

The oracle for where a module lives in SDXL's original UNet is written out below from
the SGM architecture (Stability's generative-models UNet as kohya's
library/sdxl_original_unet.py and ComfyUI's checkpoints lay it out), independently of
the config-derived numbering in ``ai_influencer.training.sdxl_layout`` that it checks.
The way back is diffusers' own kohya conversion (``lora_state_dict`` runs
``_maybe_map_sgm_blocks_to_diffusers`` + ``_convert_non_diffusers_lora_to_diffusers``,
then the key conversions ``load_lora_weights`` applies).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ai_influencer.training.config import TEXT_TARGETS, UNET_TARGETS
from ai_influencer.training.lora_format import export_kohya_lora, read_kohya, save_kohya, to_kohya
from ai_influencer.training.lora_inspect import inspect_lora
from ai_influencer.training.sdxl_layout import (
    SDXL_TE1_CONFIG,
    SDXL_TE2_CONFIG,
    SDXL_UNET_CONFIG,
    NoSgmNameError,
    SgmLayout,
)

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

RANK, ALPHA = 2, 1.0

# SDXL's SGM UNet: transformer block position -> (transformer depth, channels). Levels 320/640/1280 with
# 0/2/10 transformer layers; input_blocks 1-2 (320) have none, 3 and 6 are downsamplers; output_blocks
# 0-2 are the 1280 level, 3-5 the 640 level, 6-8 the 320 level (no attention, so no output_blocks.6.1).
SGM_TRANSFORMERS = {
    **{f"input_blocks.{n}.1": (2, 640) for n in (4, 5)},
    **{f"input_blocks.{n}.1": (10, 1280) for n in (7, 8)},
    "middle_block.1": (10, 1280),
    **{f"output_blocks.{n}.1": (10, 1280) for n in (0, 1, 2)},
    **{f"output_blocks.{n}.1": (2, 640) for n in (3, 4, 5)},
}


def sgm_oracle() -> dict[str, tuple[int, int]]:
    """SGM name -> (in, out) of every Linear kohya's LoRA puts in SDXL's transformer blocks."""
    out = {}
    for block, (depth, c) in SGM_TRANSFORMERS.items():
        out[f"{block}.proj_in"] = out[f"{block}.proj_out"] = (c, c)
        for k in range(depth):
            t = f"{block}.transformer_blocks.{k}"
            for attn in ("attn1", "attn2"):
                ctx = 2048 if attn == "attn2" else c  # cross attention reads the 2048-d text embeddings
                out |= {f"{t}.{attn}.to_q": (c, c), f"{t}.{attn}.to_k": (ctx, c), f"{t}.{attn}.to_v": (ctx, c)}
                out[f"{t}.{attn}.to_out.0"] = (c, c)
            out[f"{t}.ff.net.0.proj"] = (c, 8 * c)  # GEGLU: two halves of 4c
            out[f"{t}.ff.net.2"] = (4 * c, c)
    return out


def random_like(shapes: dict[str, Any], seed: int = 0) -> dict[str, Any]:
    gen = torch.Generator().manual_seed(seed)
    return {k: torch.randn(tuple(v.shape), generator=gen) for k, v in shapes.items()}


@pytest.fixture(scope="module")
def sdxl() -> dict[str, Any]:
    """Full-size SDXL UNet + both CLIP encoders on the meta device with the trainer's default LoRA targets."""
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel
    from peft import LoraConfig, inject_adapter_in_model
    from peft.utils import get_peft_model_state_dict
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    with init_empty_weights():
        unet = UNet2DConditionModel(**SDXL_UNET_CONFIG)
        te1 = CLIPTextModel(CLIPTextConfig(**SDXL_TE1_CONFIG))
        te2 = CLIPTextModelWithProjection(CLIPTextConfig(**SDXL_TE2_CONFIG))
    unet.add_adapter(LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=list(UNET_TARGETS)))  # as the trainer
    for te in (te1, te2):
        inject_adapter_in_model(LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=list(TEXT_TARGETS)), te)
    return {
        "config": unet.config,
        "unet": random_like(get_peft_model_state_dict(unet), 0),
        "te1": random_like(get_peft_model_state_dict(te1), 1),
        "te2": random_like(get_peft_model_state_dict(te2), 2),
        "te_models": (te1, te2),
    }


@pytest.fixture(scope="module")
def full_file(sdxl: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("full") / "sdxl_lora.safetensors"
    return export_kohya_lora(
        out, sdxl["unet"], sdxl["config"], alpha=ALPHA, text_encoders=(sdxl["te1"], sdxl["te2"]), metadata={}
    )


def modules(keys: Any, prefix: str) -> set[str]:
    return {k[len(prefix) : -len(".lora_down.weight")] for k in keys if k.startswith(prefix) and "lora_down" in k}


def test_every_default_unet_target_lands_on_its_sgm_module_and_diffusers_maps_it_back(
    sdxl: dict[str, Any], full_file: Path
) -> None:
    from diffusers import StableDiffusionXLPipeline
    from diffusers.utils import convert_unet_state_dict_to_peft

    tensors, _ = read_kohya(full_file)
    oracle = sgm_oracle()
    written = modules(tensors, "lora_unet_")
    assert len(written) == len(oracle) == 722  # kohya's "U-Net: 722 modules"
    assert written == {name.replace(".", "_") for name in oracle}
    for name, (n_in, n_out) in oracle.items():  # the weights in each SGM slot fit that SGM module
        key = f"lora_unet_{name.replace('.', '_')}"
        assert tuple(tensors[f"{key}.lora_down.weight"].shape) == (RANK, n_in), name
        assert tuple(tensors[f"{key}.lora_up.weight"].shape) == (n_out, RANK), name
        assert float(tensors[f"{key}.alpha"]) == ALPHA

    # diffusers' own kohya loading (with SDXL's config for the SGM numbering) gives back the trained modules
    state, alphas = StableDiffusionXLPipeline.lora_state_dict(str(full_file), unet_config=sdxl["config"])
    unet_state = {k.removeprefix("unet."): v for k, v in state.items() if k.startswith("unet.")}
    peft = convert_unet_state_dict_to_peft(unet_state)  # what load_lora_into_unet does next
    assert set(peft) == set(sdxl["unet"])  # every module, nothing unexpected, nothing dropped
    for key, trained in sdxl["unet"].items():
        assert torch.equal(peft[key].float(), trained.half().float()), key
    unet_alphas = {k: v for k, v in alphas.items() if k.startswith("unet.")}
    assert len(unet_alphas) == 722 and set(unet_alphas.values()) == {ALPHA}


def test_both_text_encoders_map_completely(sdxl: dict[str, Any], full_file: Path) -> None:
    from diffusers import StableDiffusionXLPipeline
    from diffusers.utils import convert_state_dict_to_diffusers, convert_state_dict_to_peft

    tensors, _ = read_kohya(full_file)
    for prefix, layers, n in (("lora_te1_", 12, 72), ("lora_te2_", 32, 192)):
        expected = {
            f"text_model_encoder_layers_{i}_{m}"
            for i in range(layers)
            for m in ("self_attn_q_proj", "self_attn_k_proj", "self_attn_v_proj", "self_attn_out_proj", "mlp_fc1",
                      "mlp_fc2")
        }  # fmt: skip
        assert modules(tensors, prefix) == expected and len(expected) == n

    state, alphas = StableDiffusionXLPipeline.lora_state_dict(str(full_file), unet_config=sdxl["config"])
    for name, te, prefix in (
        ("te1", sdxl["te_models"][0], "text_encoder"),
        ("te2", sdxl["te_models"][1], "text_encoder_2"),
    ):
        # the conversions _load_lora_into_text_encoder applies before PEFT loads the weights
        part = {k.removeprefix(f"{prefix}."): v for k, v in state.items() if k.startswith(f"{prefix}.")}
        peft = convert_state_dict_to_peft(convert_state_dict_to_diffusers(part))
        if not hasattr(te, "text_model"):
            peft = {k.removeprefix("text_model."): v for k, v in peft.items()}
        assert set(peft) == set(sdxl[name]), name
        assert all(torch.equal(peft[k].float(), v.half().float()) for k, v in sdxl[name].items())
        assert sum(k.startswith(f"{prefix}.") for k in alphas) == len(sdxl[name]) // 2


def test_layout_follows_the_config_and_refuses_modules_without_an_sgm_name() -> None:
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel

    # another topology: 1/2/3 layers per level. SGM rules: each down level adds its layers then a downsampler
    # block; each up level adds layers + 1 blocks, the upsampler in its last one.
    cfg = {**SDXL_UNET_CONFIG, "layers_per_block": (1, 2, 3), "transformer_layers_per_block": 1}
    layout = SgmLayout.from_config(cfg)
    assert layout.to_sgm("down_blocks.1.attentions.1.proj_in") == "input_blocks.4.1.proj_in"
    assert layout.to_sgm("down_blocks.1.downsamplers.0.conv") == "input_blocks.5.0.op"
    assert layout.to_sgm("up_blocks.0.attentions.3.proj_out") == "output_blocks.3.1.proj_out"
    assert layout.to_sgm("up_blocks.0.upsamplers.0.conv") == "output_blocks.3.2.conv"
    assert layout.to_sgm("up_blocks.1.attentions.0.proj_in") == "output_blocks.4.1.proj_in"
    assert layout.to_sgm("up_blocks.2.resnets.1.conv1") == "output_blocks.8.0.in_layers.2"
    with init_empty_weights():
        unet = UNet2DConditionModel(**cfg)
    names = [n for n, m in unet.named_modules() if isinstance(m, torch.nn.Linear | torch.nn.Conv2d)]
    sgm = [layout.to_sgm(n) for n in names]  # every weight module of that UNet has exactly one SGM slot
    assert len(set(sgm)) == len(names)

    sdxl_layout = SgmLayout.from_config(SDXL_UNET_CONFIG)
    assert sdxl_layout.to_sgm("up_blocks.1.attentions.2.proj_in") == "output_blocks.5.1.proj_in"
    with pytest.raises(NoSgmNameError, match=r"up_blocks\.2\.attentions\.0\.proj_in"):
        sdxl_layout.to_sgm("up_blocks.2.attentions.0.proj_in")  # SDXL's 320 level has no attention
    with pytest.raises(ValueError, match="pass its config"):
        to_kohya({"down_blocks.1.attentions.0.proj_in.lora_A.weight": torch.zeros(1, 1)}, "lora_unet", 1.0)


def pre_fix_name(module: str) -> str:
    """The SGM name the exporter wrote before the fix: decoder blocks numbered i * (layers_per_block + 2) + j."""
    parts = module.split(".")
    if parts[0] == "up_blocks":
        parts = ["output_blocks", str(int(parts[1]) * 4 + int(parts[3])), "1", *parts[4:]]
    else:
        parts = SgmLayout.from_config(SDXL_UNET_CONFIG).to_sgm(module).split(".")
    return "lora_unet_" + "_".join(parts)


def run_inspect(*args: str) -> subprocess.CompletedProcess[str]:
    cli = str(Path(sys.executable).with_name("influencer"))
    return subprocess.run([cli, "lora", "inspect", *args], capture_output=True, text=True, timeout=300)


def test_inspect_reports_the_dropped_and_misplaced_blocks_of_a_file_exported_before_the_fix(
    sdxl: dict[str, Any], tmp_path: Path
) -> None:
    old: dict[str, Any] = {}
    for key, tensor in sdxl["unet"].items():
        module, ab = re.match(r"(.+)\.lora_([AB])\.weight$", key).groups()  # type: ignore[union-attr]
        name = pre_fix_name(module)
        old[f"{name}.lora_{'down' if ab == 'A' else 'up'}.weight"] = tensor
        old[f"{name}.alpha"] = torch.tensor(ALPHA)
    path = save_kohya(tmp_path / "old.safetensors", old, {"ss_network_dim": str(RANK)})

    report = inspect_lora(path)
    assert not report.ok and report.keys == 2166
    dropped = {m.written for m in report.dropped}
    assert len(dropped) == 22 and all(d.startswith("lora_unet_output_blocks_6_1_") for d in dropped)
    assert sum(m.keys for m in report.dropped) == 66  # ComfyUI's 66 "lora key not loaded"
    assert "output_blocks.3.1" in report.uncovered
    assert len(report.shifted) == 1 and "output_blocks.4.1, output_blocks.5.1" in report.shifted[0]

    res = run_inspect(str(path))
    assert res.returncode == 2, res.stderr[-2000:]
    assert "dropped: 22 modules (66 keys)" in res.stdout and "lora_unet_output_blocks_6_1_proj_in" in res.stdout
    assert "output_blocks numbering is shifted" in res.stdout and "output_blocks.3.1 gets none" in res.stdout


def test_inspect_our_export_and_files_from_other_tools(sdxl: dict[str, Any], full_file: Path, tmp_path: Path) -> None:
    from diffusers import StableDiffusionXLPipeline
    from diffusers.utils import convert_state_dict_to_kohya

    ours = inspect_lora(full_file)
    assert ours.ok and ours.format == "kohya (SGM UNet names)" and not ours.uncovered
    assert ours.per_block() == {"input": 248, "middle": 102, "output": 372, "te1": 72, "te2": 192}
    assert ours.rank_alpha() == [(RANK, ALPHA, 722 + 264)]

    # kohya keys with diffusers block names, as diffusers' convert_state_dict_to_kohya writes them (alpha = rank)
    peft = {f"unet.{k}": v for k, v in sdxl["unet"].items()} | {
        f"text_encoder_2.{k}": v for k, v in sdxl["te2"].items()
    }
    path = save_kohya(tmp_path / "kohya_diffusers_names.safetensors", convert_state_dict_to_kohya(peft), {})
    report = inspect_lora(path)
    assert report.ok and report.format == "kohya (diffusers UNet names)"
    assert report.per_block() == {"input": 248, "middle": 102, "output": 372, "te2": 192}
    assert report.rank_alpha() == [(RANK, float(RANK), 722 + 192)]

    # a diffusers/PEFT file as diffusers saves it: unet. / text_encoder. keys, lora_A/lora_B, alpha in the header
    StableDiffusionXLPipeline.save_lora_weights(
        tmp_path / "peft", unet_lora_layers=sdxl["unet"], text_encoder_lora_layers=sdxl["te1"],
        unet_lora_adapter_metadata={"r": RANK, "lora_alpha": ALPHA},
    )  # fmt: skip
    report = inspect_lora(tmp_path / "peft" / "pytorch_lora_weights.safetensors")
    assert report.ok and report.format.startswith("diffusers/PEFT")
    assert report.per_block() == {"input": 248, "middle": 102, "output": 372, "te1": 72}
    assert (RANK, ALPHA, 722) in report.rank_alpha()  # the UNet's alpha from diffusers' adapter metadata

    # no alpha tensors, mixed ranks, and weights that do not fit the module they name
    tensors, _ = read_kohya(full_file)
    small = {
        k: v for k, v in tensors.items() if "input_blocks_4_1_transformer_blocks_0_attn1" in k and "alpha" not in k
    }
    small["lora_unet_middle_block_1_proj_in.lora_down.weight"] = torch.zeros(4, 1280)
    small["lora_unet_middle_block_1_proj_in.lora_up.weight"] = torch.zeros(1280, 4)
    small["lora_unet_input_blocks_5_1_proj_in.lora_down.weight"] = torch.zeros(RANK, 1280)  # a 640 module
    small["lora_unet_input_blocks_5_1_proj_in.lora_up.weight"] = torch.zeros(640, RANK)
    path = save_kohya(tmp_path / "odd.safetensors", small, {"ss_network_dim": "2"})
    report = inspect_lora(path)
    assert not report.ok and [m.written for m in report.mismatched] == ["lora_unet_input_blocks_5_1_proj_in"]
    assert "1280 inputs" in (report.mismatched[0].problem or "")
    assert report.rank_alpha() == [(RANK, None, 5), (4, None, 1)]
    res = run_inspect(str(path), "--json")
    assert res.returncode == 2 and json.loads(res.stdout)["mismatched"][0]["name"] == "input_blocks_5_1_proj_in"
    res = run_inspect(str(tmp_path / "nope.safetensors"))
    assert res.returncode == 1 and "nope.safetensors: no such file" in res.stderr
