"""SDXL LoRA training, kohya export, local generation and identity evaluation on a tiny random SDXL (CPU)."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ai_influencer.prompt_bank import load_prompt_bank
from ai_influencer.training.checkpoints import checkpoint_files
from ai_influencer.training.config import TrainConfig
from ai_influencer.training.data import DatasetError, discover, make_buckets, nearest_bucket
from ai_influencer.training.evaluate import evaluate_loras, pick_best, score_images
from ai_influencer.training.inference import LocalGenerator, LocalGenParams
from ai_influencer.training.kohya_backend import KohyaError, dataset_toml, train_with_kohya
from ai_influencer.training.lora_format import read_kohya
from ai_influencer.training.trainer import train_lora
from ai_influencer.vision.faces import create_face_engine
from tests.conftest import REPO
from tests.support.assets import face

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")


@pytest.fixture(scope="module")
def base(tiny_sdxl: Path) -> Path:
    """The session's tiny SDXL (tests/support/fixtures.py)."""
    return tiny_sdxl


def make_dataset(root: Path, names: tuple[str, ...] = ("obama.jpg", "obama2.jpg"), repeats: int = 3) -> Path:
    folder = root / "kohya" / f"{repeats}_ohwx woman"
    folder.mkdir(parents=True)
    for i, n in enumerate(names):
        Image.open(face(n)).convert("RGB").resize((96 + 16 * i, 80)).save(folder / f"{Path(n).stem}.png")
        (folder / f"{Path(n).stem}.txt").write_text("ohwx woman, lower, wider")
    return root / "kohya"


def config(base: Path, dataset: Path, out: Path, **kw: object) -> TrainConfig:
    defaults: dict[str, object] = dict(
        base_model=base,
        dataset=dataset,
        output_dir=out,
        resolution=64,
        min_bucket_reso=32,
        max_bucket_reso=128,
        bucket_step=16,
        rank=4,
        alpha=2.0,
        mixed_precision="no",
        gradient_checkpointing=False,
        unet_lr=1e-3,
        device="cpu",
        checkpoint_every=2,
        max_train_steps=4,
    )
    defaults.update(kw)
    return TrainConfig(**defaults)


def denoise_loss(pipe: object, image: Path, caption: str) -> float:
    """The UNet's epsilon loss on one image at fixed timesteps and noise (a deterministic probe)."""
    from diffusers import DDPMScheduler

    from ai_influencer.training.data import prepare_image
    from ai_influencer.training.trainer import _encode_text

    with Image.open(image) as im:
        bucket = nearest_bucket(im.size, make_buckets(64, 32, 128, 16))  # the bucket training used
    prep = prepare_image(image, bucket)
    px = torch.from_numpy(prep.pixels.copy()).permute(2, 0, 1)[None].float() / 127.5 - 1
    with torch.no_grad():
        lat = pipe.vae.encode(px).latent_dist.mode() * pipe.vae.config.scaling_factor
        emb, pooled = _encode_text(pipe, [caption], "cpu")
        gen = torch.Generator().manual_seed(0)
        losses = []
        for t in (100, 300, 500, 700, 900):
            noise = torch.randn(lat.shape, generator=gen)
            ts = torch.tensor([t])
            noisy = DDPMScheduler.from_config(pipe.scheduler.config).add_noise(lat, noise, ts)
            time_ids = torch.tensor([[*prep.original_size, *prep.crop_top_left, *prep.target_size]]).float()
            pred = pipe.unet(
                noisy, ts, encoder_hidden_states=emb, added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids}
            ).sample
            losses.append(torch.nn.functional.mse_loss(pred, noise).item())
    return float(np.mean(losses))


def test_buckets_and_dataset_discovery(tmp_path: Path) -> None:
    buckets = make_buckets(1024, 256, 2048, 64)
    assert (1024, 1024) in buckets and all(w % 64 == 0 and h % 64 == 0 for w, h in buckets)
    assert all(w * h <= 1024 * 1024 for w, h in buckets)
    assert nearest_bucket((1216, 832), buckets) == (1216, 832)
    ds = make_dataset(tmp_path)
    (ds / "3_ohwx woman" / "broken.png").write_bytes(b"not a png")
    Image.new("RGB", (64, 64)).save(ds / "3_ohwx woman" / "nocaption.png")
    items, problems = discover(ds)
    assert {i.path.name for i in items} == {"obama.png", "obama2.png", "nocaption.png"}
    assert all(i.repeats == 3 for i in items)
    assert next(i for i in items if i.path.name == "nocaption.png").caption == "ohwx woman"  # folder class tokens
    assert any("broken.png" in p for p in problems)
    with pytest.raises(DatasetError, match="does not exist"):
        discover(tmp_path / "nope")


def test_training_resume_continues_the_same_run_exactly(base: Path, tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ds = make_dataset(tmp_path)
    straight = train_lora(config(base, ds, tmp_path / "a", max_train_steps=6, keep_checkpoints=2), progress=False)
    assert straight.steps == 6 and all(np.isfinite(straight.losses))
    # the newest 2 checkpoints are kept, each a LoRA file plus accelerate's state (optimizer, scheduler, RNG)
    assert [c.name for c in straight.checkpoints] == ["step-000004", "step-000006"]
    assert sorted(p.name for p in straight.run_dir.glob("step-*")) == ["step-000004", "step-000006"]
    assert [f.parent.name for f in checkpoint_files(straight.run_dir)] == ["step-000004", "step-000006"]
    state = straight.checkpoints[-1] / "state"
    assert {"lora.safetensors", "optimizer.bin", "scheduler.bin", "random_states_0.pkl"} <= {
        p.name for p in state.iterdir()
    }
    run_config = json.loads((straight.run_dir / "config.json").read_text())
    assert run_config["config"]["rank"] == 4 and run_config["total_steps"] == 6 and len(run_config["data"]) == 2
    events = EventAccumulator(str(straight.run_dir / "tensorboard")).Reload()
    assert {"loss", "lr", "it_per_s"} <= set(events.Tags()["scalars"])
    assert [e.value for e in events.Scalars("loss")] == pytest.approx(straight.losses)

    first = train_lora(config(base, ds, tmp_path / "b", max_train_steps=4), progress=False)
    assert first.steps == 4 and [c.name for c in first.checkpoints] == ["step-000002", "step-000004"]
    # a run killed while saving step 6: LoRA file written, state not yet renamed into place
    half = first.run_dir / "step-000006"
    (half / ".state.tmp").mkdir(parents=True)
    (half / "influencer_lora.safetensors").write_bytes(b"half")
    assert [f.parent.name for f in checkpoint_files(first.run_dir)] == ["step-000002", "step-000004"]
    resumed = train_lora(config(base, ds, tmp_path / "b", max_train_steps=6), progress=False)
    assert resumed.resumed_from == 4 and resumed.steps == 6 and len(resumed.losses) == 2
    # Same data order, RNG and optimizer state after the resume as without the interruption.
    assert resumed.losses == pytest.approx(straight.losses[4:], rel=1e-4)
    assert (half / "state").is_dir() and not (half / ".state.tmp").exists()

    # A different dataset is a different run: it does not resume the old checkpoints.
    (ds / "3_ohwx woman" / "obama2.txt").write_text("ohwx woman, newer")
    other = train_lora(config(base, ds, tmp_path / "b", max_train_steps=2), progress=False)
    assert other.resumed_from == 0 and other.run_dir != resumed.run_dir


def test_loss_falls_when_overfitting_one_image_and_the_file_loads_in_diffusers(base: Path, tmp_path: Path) -> None:
    from diffusers import StableDiffusionXLPipeline

    ds = make_dataset(tmp_path, names=("obama.jpg",), repeats=1)
    cfg = config(
        base,
        ds,
        tmp_path / "out",
        max_train_steps=120,
        checkpoint_every=60,
        unet_lr=1e-2,
        noise_offset=0.0,
        min_snr_gamma=None,
        rank=16,
        alpha=8.0,
    )
    result = train_lora(cfg, progress=False)
    image = next((ds / "1_ohwx woman").glob("*.png"))

    pipe = StableDiffusionXLPipeline.from_pretrained(base, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    before = denoise_loss(pipe, image, "ohwx woman, lower, wider")
    plain = pipe("ohwx woman", num_inference_steps=2, height=64, width=64, output_type="np",
                 generator=torch.Generator().manual_seed(1)).images  # fmt: skip
    pipe.load_lora_weights(str(result.output), adapter_name="persona")
    after = denoise_loss(pipe, image, "ohwx woman, lower, wider")
    with_lora = pipe("ohwx woman", num_inference_steps=2, height=64, width=64, output_type="np",
                     generator=torch.Generator().manual_seed(1)).images  # fmt: skip
    first, last = np.mean(result.losses[:20]), np.mean(result.losses[-20:])
    print(f"probe loss before {before:.4f} after {after:.4f}; training loss {first:.4f} -> {last:.4f}")
    # Measured here: probe 1.129 -> 0.997, training loss 1.09 -> 0.99. A tiny random UNet with LoRA on its
    # attention layers cannot memorise an image; it can learn to stop adding noise of its own.
    assert after < 0.93 * before and last < 0.95 * first, (before, after, first, last)
    assert float(np.abs(with_lora - plain).mean()) > 1e-3  # the LoRA measurably changes the output

    # kohya keys, explicit alpha = trained alpha (not the rank), ss_* metadata
    tensors, meta = read_kohya(result.output)
    modules = {k.rsplit(".", 2)[0] for k in tensors if k.endswith(".lora_down.weight")}
    assert modules and all(m.startswith("lora_unet_") for m in modules)
    # SGM names, as kohya writes them, on SDXL's topology: 11 transformer blocks, 12 modules each here
    blocks = {re.match(r"lora_unet_(\w+?_\d+_1|middle_block_1)_", m).group(1) for m in modules}  # type: ignore[union-attr]
    assert blocks == {"input_blocks_4_1", "input_blocks_5_1", "input_blocks_7_1", "input_blocks_8_1",
                      "middle_block_1", *(f"output_blocks_{n}_1" for n in range(6))}  # fmt: skip
    assert len(modules) == 11 * 12
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(result.output.stat().st_mode) == 0o666 & ~umask  # readable by ComfyUI as another user
    assert all(float(tensors[f"{m}.alpha"]) == 8.0 for m in modules)
    assert all(tensors[f"{m}.lora_down.weight"].shape[0] == 16 for m in modules)
    assert meta["ss_network_dim"] == "16" and meta["ss_network_alpha"] == "8.0"
    assert meta["ss_base_model_version"] == "sdxl_base_v1-0" and int(meta["ss_steps"]) == 120
    # diffusers reads the alpha: every LoRA layer scales by alpha / rank = 0.5
    scalings = {m.scaling["persona"] for m in pipe.unet.modules() if hasattr(m, "scaling") and "persona" in m.scaling}
    assert scalings == {0.5}
    n_loaded = sum(1 for m in pipe.unet.modules() if hasattr(m, "scaling") and "persona" in m.scaling)
    assert n_loaded == len(modules)


def test_round_trip_every_trained_module_lands_where_it_was_trained(base: Path, tmp_path: Path) -> None:
    """Train UNet + both text encoders, export, load with diffusers' own kohya conversion, compare module by module."""
    from diffusers import StableDiffusionXLPipeline
    from safetensors.torch import load_file

    from ai_influencer.training.lora_inspect import base_reference, inspect_lora

    ds = make_dataset(tmp_path)
    samples: list[tuple[int, list[Path]]] = []
    cfg = config(base, ds, tmp_path / "out", train_text_encoder=True, max_train_steps=2, sample_every=2,
                 sample_prompts=["ohwx woman"], sample_steps=2, sample_resolution=64)  # fmt: skip
    result = train_lora(cfg, progress=False, on_sample=lambda step, images: samples.append((step, images)))
    assert [s for s, _ in samples] == [2] and Image.open(samples[0][1][0]).size == (64, 64)
    tensors, meta = read_kohya(result.output)
    assert float(tensors["lora_te1_text_model_encoder_layers_0_self_attn_q_proj.alpha"]) == 2.0
    assert meta["ss_network_train_unet_only"] == "False"

    # what was trained: the PEFT weights (fp32, diffusers module names) of the final checkpoint's state
    trained = load_file(str(result.checkpoints[-1] / "state" / "lora.safetensors"))
    pipe = StableDiffusionXLPipeline.from_pretrained(base, local_files_only=True)
    pipe.load_lora_weights(str(result.output), adapter_name="persona")
    for prefix, model in (("unet", pipe.unet), ("te1", pipe.text_encoder), ("te2", pipe.text_encoder_2)):
        want = {k.removeprefix(f"{prefix}.").removesuffix(".lora_A.weight") for k in trained
                if k.startswith(f"{prefix}.") and k.endswith(".lora_A.weight")}  # fmt: skip
        loaded = {n: m for n, m in model.named_modules() if hasattr(m, "lora_A") and "persona" in m.lora_A}
        assert set(loaded) == want and want, prefix  # every module, on the module it was trained on
        for name, m in loaded.items():
            for ab in ("A", "B"):
                got = getattr(m, f"lora_{ab}")["persona"].weight.detach().float()
                assert torch.equal(got, trained[f"{prefix}.{name}.lora_{ab}.weight"].half().float()), (name, ab)
            assert m.scaling["persona"] == 0.5  # alpha 2 / rank 4
    n_modules = sum(1 for k in tensors if k.endswith(".lora_down.weight"))
    assert n_modules == sum(1 for k in trained if k.endswith(".lora_A.weight")) == 132 + 30 + 30
    assert len(tensors) == 3 * n_modules  # down, up, alpha: nothing else that a loader could drop

    # `influencer lora inspect` against this base model's own configs agrees
    report = inspect_lora(result.output, base_reference(base))
    assert report.ok and report.per_block() == {"input": 48, "middle": 12, "output": 72, "te1": 30, "te2": 30}
    assert report.rank_alpha() == [(4, 2.0, n_modules)]


def test_local_generation_and_identity_evaluation(base: Path, tmp_path: Path) -> None:
    ds = make_dataset(tmp_path)
    result = train_lora(config(base, ds, tmp_path / "models" / "lora", max_train_steps=2), progress=False)
    gen = LocalGenerator(base, device="cpu")
    gen.use_lora(result.output, strength=0.8)
    images = gen.generate(["ohwx woman", "ohwx woman, newer"], LocalGenParams(steps=2, width=64, height=64))
    assert [im.size for im in images] == [(64, 64), (64, 64)]

    refs = tmp_path / "cleaned"
    refs.mkdir()
    for n in ("obama.jpg", "obama2.jpg"):
        (refs / n).write_bytes(face(n).read_bytes())
    engine = create_face_engine("dlib")
    bank = load_prompt_bank(REPO / "prompt_bank" / "default.yaml")
    choice = evaluate_loras(
        [*result.checkpoints[0].glob("*.safetensors"), result.output],
        base=base,
        config_dir=None,
        bank=bank,
        refs_dir=refs,
        out_dir=tmp_path / "eval",
        engine=engine,
        k=3,
        params=LocalGenParams(steps=2, width=64, height=64),
        device="cpu",
    )
    # Random tiny-SDXL pixels contain no face: the report says so instead of inventing a score.
    for _, ev in choice.evaluations:
        assert len(ev.images) == 3 and ev.face_rate == 0.0 and ev.median == 0.0
    summary = json.loads((tmp_path / "eval" / "influencer_lora" / "identity_summary.json").read_text())
    assert summary["n"] == 3 and all(i["score"] is None for i in summary["images"])
    assert (tmp_path / "eval" / "influencer_lora" / "contact_sheet.png").is_file()
    assert json.loads((tmp_path / "eval" / "checkpoints.json").read_text())["best"]

    # On real photos the same scoring separates the person from someone else.
    ev = score_images(engine, sorted(refs.iterdir()), [face("obama3.jpg"), face("biden.jpg")], ["a", "b"], "photos")
    same, other = (i.score for i in ev.images)
    assert same is not None and other is not None and same > 0.34 > other
    best = pick_best([Path("good"), Path("bad")], lambda p: ev if p.name == "good" else score_images(
        engine, sorted(refs.iterdir()), [face("biden.jpg")], ["b"], "bad"), tmp_path / "pick")  # fmt: skip
    assert best.best == Path("good")


FAKE_SD_SCRIPTS = '''
"""Stand-in for kohya sd-scripts' sdxl_train_network.py: checks the flags and the dataset TOML, writes a file."""
import argparse, sys, tomllib, pathlib
p = argparse.ArgumentParser()
for flag in ["pretrained_model_name_or_path", "dataset_config", "output_dir", "output_name", "save_model_as",
             "network_module", "network_dim", "network_alpha", "unet_lr", "learning_rate", "optimizer_type",
             "lr_scheduler", "lr_warmup_steps", "mixed_precision", "save_precision", "seed", "noise_offset",
             "save_every_n_steps", "gradient_accumulation_steps", "max_grad_norm", "max_train_steps",
             "max_train_epochs", "min_snr_gamma", "text_encoder_lr", "resume"]:
    p.add_argument("--" + flag)
for flag in ["sdpa", "cache_latents", "cache_latents_to_disk", "network_train_unet_only", "save_state",
             "cache_text_encoder_outputs", "cache_text_encoder_outputs_to_disk", "gradient_checkpointing",
             "no_half_vae"]:
    p.add_argument("--" + flag, action="store_true")
a = p.parse_args()
ds = tomllib.loads(pathlib.Path(a.dataset_config).read_text())
sub = ds["datasets"][0]["subsets"][0]
assert pathlib.Path(sub["image_dir"]).is_dir() and ds["general"]["caption_extension"] == ".txt"
print(f"steps 1/2 loss 0.1 dim={a.network_dim} alpha={a.network_alpha} repeats={sub['num_repeats']}", flush=True)
if a.network_dim == "13":
    print("CUDA out of memory", flush=True); sys.exit(3)
(pathlib.Path(a.output_dir) / (a.output_name + ".safetensors")).write_bytes(b"kohya")
'''


def test_kohya_backend_command_dataset_and_log_streaming(base: Path, tmp_path: Path) -> None:
    ds = make_dataset(tmp_path, repeats=10)
    scripts = tmp_path / "sd-scripts"
    scripts.mkdir()
    (scripts / "sdxl_train_network.py").write_text(textwrap.dedent(FAKE_SD_SCRIPTS))
    cfg = TrainConfig(base_model=base, dataset=ds, output_dir=tmp_path / "lora", max_train_steps=2)
    toml = dataset_toml(cfg)
    assert "num_repeats = 10" in toml and 'class_tokens = "ohwx woman"' in toml
    lines: list[str] = []
    out = train_with_kohya(cfg, scripts, on_line=lines.append)
    assert out.read_bytes() == b"kohya"
    assert any("dim=32 alpha=16 repeats=10" in line for line in lines)
    with pytest.raises(KohyaError, match="CUDA out of memory"):
        train_with_kohya(cfg.model_copy(update={"rank": 13}), scripts, on_line=lines.append)
    with pytest.raises(KohyaError, match="not a kohya sd-scripts checkout"):
        train_with_kohya(cfg, tmp_path)


def test_cli_train_and_sample(base: Path, tmp_path: Path) -> None:
    ds = make_dataset(tmp_path)
    env = {**os.environ, "INFLUENCER_DATA_ROOT": str(tmp_path / "data"), "INFLUENCER_MODELS_ROOT": str(tmp_path / "m")}
    cli = str(Path(sys.executable).with_name("influencer"))
    args = ["--dataset", str(ds), "--base", str(base), "--dim", "4", "--alpha", "2", "--resolution", "64",
            "--steps", "2", "--precision", "no"]  # fmt: skip
    res = subprocess.run([cli, "train", *args], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode != 0 and "min_bucket_reso 256 is larger than resolution 64" in res.stderr
    res = subprocess.run(
        [cli, "train", *args[:-4], "--resolution", "256", "--steps", "1", "--precision", "no"],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    lora = tmp_path / "m" / "lora" / "influencer_lora.safetensors"
    assert lora.is_file() and "1 steps" in res.stdout
    res = subprocess.run(
        [cli, "sample", "--prompt", "ohwx woman", "--base", str(base), "--steps", "2", "--size", "64"],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    assert Image.open(res.stdout.strip().splitlines()[-1]).size == (64, 64)
    res = subprocess.run([cli, "train", "--base", str(tmp_path / "none.safetensors"), "--dataset", str(ds)],
                         capture_output=True, text=True, env=env, timeout=300)  # fmt: skip
    assert res.returncode == 1 and "none.safetensors not found" in res.stderr
