"""Cost per accepted image, drift per prompt value, identity history and VLM captions (real stub, real faces)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from ai_influencer.analytics.history import IdentityHistory
from ai_influencer.analytics.report import cost_report, downweight_failing, drift_report, join
from ai_influencer.dataset.augment import augment_and_caption
from ai_influencer.dataset.vlm_captions import VlmCaptioner
from ai_influencer.generation.engine import build_requests, generate_batch
from ai_influencer.openrouter import OpenRouterClient
from ai_influencer.prompt_bank import compose_prompts, load_prompt_bank
from ai_influencer.qc.stage import run_qc
from ai_influencer.vision.faces import create_face_engine
from tests.conftest import REPO, TEST_KEY
from tests.support.assets import face
from tests.support.openrouter_stub import StubOpenRouter

BANK = REPO / "prompt_bank" / "default.yaml"
MODEL = "google/gemini-2.5-flash-image"


def generate_and_check(stub: StubOpenRouter, data: Path, per_scene: int = 2) -> tuple[str, list]:
    """18 images where every one wearing the first outfit shows someone else; then real QC."""
    bank = load_prompt_bank(BANK)
    bad = bank.outfits[0]
    stub.image_mix = {"persona": 1.0}
    stub.kind_for = lambda body: "other" if bad.prompt in json.dumps(body) else None
    refs = data / "cleaned"
    refs.mkdir(parents=True)
    for n in ("obama.jpg", "obama2.jpg"):
        shutil.copy(face(n), refs / n)
    with OpenRouterClient(TEST_KEY, base_url=stub.base_url, max_retries=0) as client:
        reqs = build_requests(compose_prompts(bank, per_scene, 0), MODEL, "1024x1024")
        outcomes = generate_batch(client, reqs, data / "synth_openrouter", concurrency=4)
    assert all(o.status == "generated" for o in outcomes)
    run_qc(refs, data / "synth_openrouter", data / "qc_passed", engine=create_face_engine("dlib"), workers=1)
    return bad.name, reqs


def test_cost_per_accepted_and_drift_per_prompt_value(stub: StubOpenRouter, tmp_path: Path) -> None:
    data = tmp_path / "data"
    bad, reqs = generate_and_check(stub, data, per_scene=3)
    items, problems = join(data / "synth_openrouter", data / "qc_passed" / "qc_report.csv")
    assert not problems and len(items) == len(reqs) == 18
    costs = cost_report(items)
    total = costs["total"][0]
    accepted = sum(j.accepted for j in items)
    assert total.images == 18 and total.checked == 18 and total.accepted == accepted > 0
    assert total.spend_usd == pytest.approx(18 * stub.image_cost)
    assert total.cost_per_accepted_usd == pytest.approx(18 * stub.image_cost / accepted, abs=1e-6)  # rounded to 6
    assert [r.group for r in costs["by_model"]] == [MODEL]

    drift = drift_report(items)
    rows = {(r.category, r.value): r for r in drift}
    wearing_bad = sum(1 for j in items if j.record.outfit == bad)
    assert wearing_bad > 0
    bad_row = rows[("outfit", bad)]
    assert bad_row.n == wearing_bad and bad_row.accepted == 0 and bad_row.acceptance_rate == 0.0
    assert bad_row.score_median is not None and bad_row.score_median < 0.34  # a real face, the wrong person
    assert drift[0].acceptance_rate == 0.0  # worst first
    good = [r for r in drift if r.category == "outfit" and r.value != bad]
    assert good and all(r.acceptance_rate > 0.5 for r in good)
    for cat in ("scene", "lighting", "pose", "outfit"):  # every checked image counted once per category
        assert sum(r.n for r in drift if r.category == cat) == 18

    bank = load_prompt_bank(BANK)
    adjusted, changes = downweight_failing(bank, drift, min_n=1)
    weights = {o.name: o.weight for o in adjusted.outfits}
    assert weights[bad] == pytest.approx(0.5 * next(o.weight for o in bank.outfits if o.name == bad))
    assert any(bad in c for c in changes)
    assert [s.weight for s in adjusted.scenes] == [s.weight for s in bank.scenes]  # scenes are never touched
    assert downweight_failing(bank, drift, min_n=99)[1] == []  # too few samples: nothing changes


def test_report_and_history_commands(stub: StubOpenRouter, tmp_path: Path) -> None:
    data = tmp_path / "data"
    bad, _ = generate_and_check(stub, data)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("INFLUENCER_")},
        "INFLUENCER_DATA_ROOT": str(data),
        "INFLUENCER_MODELS_ROOT": str(tmp_path / "models"),
        "INFLUENCER_PROMPT_BANK": str(BANK),
        "COLUMNS": "200",
    }
    cli = str(Path(sys.executable).with_name("influencer"))
    res = subprocess.run([cli, "report", "costs", "--json"], capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stderr
    total = json.loads(res.stdout)["total"][0]
    assert total["images"] == 12 and total["spend_usd"] == pytest.approx(12 * stub.image_cost)
    out_bank = tmp_path / "adjusted.yaml"
    res = subprocess.run(
        [cli, "report", "drift", "--write-bank", str(out_bank), "--min-n", "1"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    assert bad in res.stdout and out_bank.is_file() and f"outfit {bad}: weight" in res.stdout
    assert load_prompt_bank(out_bank).persona == load_prompt_bank(BANK).persona  # a valid bank again

    res = subprocess.run([cli, "history"], capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 1 and "no LoRA has been evaluated yet" in res.stderr
    lora_dir = tmp_path / "models" / "lora"
    lora_dir.mkdir(parents=True)
    hist = IdentityHistory(lora_dir / "identity_history.sqlite")
    for i, (median, p10) in enumerate([(0.41, 0.30), (0.52, 0.39), (0.47, 0.35)]):
        f = lora_dir / f"v{i}.safetensors"
        f.write_bytes(f"lora {i}".encode())
        row = hist.record(persona="Giulia", lora=f, checkpoint=f"v{i}", dataset_version=f"ds{i}abcdef",
                          params={"rank": 32}, n=8, median=median, p10=p10, face_rate=1.0)  # fmt: skip
        if i == 1:
            hist.mark_promoted(row)
    assert hist.best_promoted("Giulia").checkpoint == "v1"
    assert [r.median for r in hist.rows("Giulia")] == [0.41, 0.52, 0.47]
    plot = tmp_path / "history.png"
    res = subprocess.run([cli, "history", "--plot", str(plot)], capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "0.520" in res.stdout and "v2" in res.stdout
    with Image.open(plot) as im:
        assert im.size[0] > 500 and im.size[1] > 300


def test_vlm_captions_keep_the_trigger_are_cached_and_fall_back(stub: StubOpenRouter, tmp_path: Path) -> None:
    data = tmp_path / "data"
    generate_and_check(stub, data, per_scene=1)
    seen_images = []

    def reply(body: dict) -> str:
        parts = body["messages"][-1]["content"]
        images = [p for p in parts if isinstance(p, dict) and p.get("type") == "image_url"]
        seen_images.append(len(images))
        return json.dumps({"caption": "OHWX wearing a red coat, standing on a bridge, overcast", "tags": ["coat"]})

    stub.chat_reply = reply
    bank = load_prompt_bank(BANK)
    vision = "google/gemini-2.5-flash"

    def augment(client: OpenRouterClient, out: str) -> tuple[VlmCaptioner, list[str]]:
        cap = VlmCaptioner(client, vision, trigger="ohwx", class_word="woman", cache_dir=data / "captions" / ".vlm")
        res = augment_and_caption(
            data / "qc_passed", data / out, data / f"captions-{out}",
            manifest=data / "synth_openrouter" / "manifest.json", num_aug=1, bank=bank, caption_for=cap,
        )  # fmt: skip
        return cap, [p.read_text().strip() for p in res.captions]

    accepted = len(list((data / "qc_passed").glob("*.png")))
    assert accepted >= 2
    with OpenRouterClient(TEST_KEY, base_url=stub.base_url, max_retries=0) as client:
        cap, captions = augment(client, "aug1")
        assert cap.stats.paid == accepted and cap.stats.cost_usd == pytest.approx(accepted * stub.text_cost)
        assert all(c == "ohwx woman, wearing a red coat, standing on a bridge, overcast" for c in captions)
        assert seen_images == [1] * accepted  # each request carried its image
        paid = len(stub.paid_requests)
        cap, _ = augment(client, "aug2")
        assert cap.stats.cached == accepted and len(stub.paid_requests) == paid  # re-run pays nothing

        for f in (data / "captions" / ".vlm").glob("*.json"):
            f.unlink()
        stub.inject(*["500"] * accepted, path="/chat/completions")
        cap, captions = augment(client, "aug3")
        assert cap.stats.fallback == accepted and len(cap.stats.errors) == accepted
        assert all(c.startswith("ohwx woman, ") and "red coat" not in c for c in captions)  # manifest captions


def test_cli_augment_with_vlm_captions(stub: StubOpenRouter, cli_env: dict[str, str], tmp_path: Path) -> None:
    stub.chat_reply = lambda body: json.dumps({"caption": "wearing a green scarf, city street", "tags": []})
    qc = tmp_path / "data" / "qc_passed"
    qc.mkdir(parents=True)
    for n in ("obama.jpg", "obama2.jpg"):
        shutil.copy(face(n), qc / n)
    cli = str(Path(sys.executable).with_name("influencer"))
    res = subprocess.run(
        [cli, "augment", "--vlm-captions", "--num-aug", "0"], capture_output=True, text=True, env=cli_env, timeout=120
    )
    assert res.returncode == 0, res.stderr
    assert "VLM captions: 2 paid" in res.stdout
    captions = sorted((tmp_path / "data" / "captions").glob("*.txt"))
    assert [c.read_text().strip() for c in captions] == ["ohwx woman, wearing a green scarf, city street"] * 2
