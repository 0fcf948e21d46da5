"""`influencer generate` and `influencer run` on OpenRouter's Image API, against a look-alike that serves
image generation only on /api/v1/images (its chat route refuses image output)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import TEST_KEY
from tests.support.assets import face
from tests.support.openrouter_stub import StubOpenRouter

INFLUENCER = str(Path(sys.executable).with_name("influencer"))
SEEDREAM = "bytedance-seed/seedream-4.5"
FLUX = "black-forest-labs/flux.2-pro"


def influencer(args: list[str], env: dict[str, str], cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([INFLUENCER, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def lookalike(cli_env: dict[str, str]) -> tuple[StubOpenRouter, dict[str, str]]:
    with StubOpenRouter(valid_keys=[TEST_KEY], chat_images=False) as stub:
        yield stub, {**cli_env, "OPENROUTER_BASE_URL": stub.base_url}


def posts(stub: StubOpenRouter) -> list:
    return [r for r in stub.requests if r.path.endswith("/images")]


def photos(folder: Path, *names: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copy(face(name), folder / name)
    return folder


def all_decode(folder: Path) -> int:
    files = sorted(folder.glob("*.png"))
    for f in files:
        with Image.open(f) as im:
            im.load()
    return len(files)


def test_generate_n4_on_the_image_api_one_request_per_4_images_and_a_rerun_pays_nothing(
    lookalike: tuple[StubOpenRouter, dict[str, str]], tmp_path: Path
) -> None:
    stub, env = lookalike
    refs = photos(tmp_path / "refs", "obama.jpg", "obama3.jpg")
    args = ["generate", "--per_scene", "4", "--n", "4", "--model", SEEDREAM, "--ref", str(refs)]
    res = influencer(args, env, tmp_path)
    assert res.returncode == 0, res.stderr
    out = tmp_path / "data" / "synth_openrouter"
    assert all_decode(out) == 24
    assert len(posts(stub)) == 6 and stub.paid_images == 24, "one request per 4 images"
    assert "plan: cost: 6 request(s) for 24 image(s); estimate $0.9840" in res.stdout  # 24 x $0.04 + 6 x 2 refs
    again = influencer(args, env, tmp_path)
    assert again.returncode == 0 and "nothing to generate" in again.stdout
    assert len(posts(stub)) == 6, "a rerun pays nothing"


def test_the_dry_run_estimate_is_within_2_percent_of_the_billed_total(
    lookalike: tuple[StubOpenRouter, dict[str, str]], tmp_path: Path
) -> None:
    """FLUX bills per megapixel of output and of each reference: the estimate comes from those lines."""
    stub, env = lookalike
    refs = photos(tmp_path / "refs", "obama.jpg", "obama2.jpg")
    args = ["generate", "--per_scene", "2", "--model", FLUX, "--size", "1024x768", "--ref", str(refs)]
    dry = influencer([*args, "--dry-run"], env, tmp_path)
    assert dry.returncode == 0, dry.stderr
    assert not posts(stub) and not stub.paid_requests, "a dry run sends nothing paid"
    estimate = float(re.search(r"estimate \$([0-9.]+)", dry.stdout)[1])  # type: ignore[index]
    assert "output_image $0.03/megapixel" in dry.stdout and "input_reference $0.015/megapixel" in dry.stdout
    res = influencer(args, env, tmp_path)
    assert res.returncode == 0, res.stderr
    billed = json.loads((tmp_path / "data" / "synth_openrouter" / "manifest.json").read_text())["total_cost_usd"]
    assert billed > 0 and abs(estimate - billed) / billed <= 0.02, (estimate, billed)
    assert billed == pytest.approx(stub.usage_total)


def test_an_unsupported_parameter_fails_before_the_first_paid_request_in_one_line(
    lookalike: tuple[StubOpenRouter, dict[str, str]], tmp_path: Path
) -> None:
    stub, env = lookalike
    res = influencer(["generate", "--per_scene", "1", "--n", "4"], env, tmp_path)
    assert res.returncode == 1
    assert res.stderr.strip().splitlines()[-1] == "error: --n 4: google/gemini-2.5-flash-image accepts n = 1"
    assert len(res.stderr.strip().splitlines()) == 2  # the plan line, then the error
    assert not posts(stub) and not stub.paid_requests
    size = influencer(["generate", "--size", "99x0"], env, tmp_path)
    assert (
        size.returncode == 1 and size.stderr.strip() == "error: --size 99x0: height 0 is out of range (64..8192 pixels)"
    )


def test_adding_a_reference_photo_does_not_pay_for_the_batch_again(
    cli_env: dict[str, str], stub: StubOpenRouter, tmp_path: Path
) -> None:
    """Issue 23: one more reference photo changed every request hash and the whole batch was paid again."""
    refs = photos(tmp_path / "refs", "obama.jpg", "obama2.jpg")
    args = ["generate", "--per_scene", "1", "--ref", str(refs)]
    assert influencer(args, cli_env, tmp_path).returncode == 0
    paid = len(stub.paid_requests)
    photos(refs, "obama3.jpg")
    res = influencer(args, cli_env, tmp_path)
    assert res.returncode == 0, res.stderr
    assert len(stub.paid_requests) == paid, "every paid image keeps its slot"
    assert "made with an earlier reference set, kept" in res.stderr
    redo = influencer([*args, "--regenerate"], cli_env, tmp_path)
    assert redo.returncode == 0 and len(stub.paid_requests) == paid + 6
    assert len(list((tmp_path / "data" / "synth_openrouter" / ".superseded").glob("*.png"))) == 6


def test_a_same_size_corrupted_image_is_not_skipped_as_done(
    cli_env: dict[str, str], stub: StubOpenRouter, tmp_path: Path
) -> None:
    """Issue 23: generation.py compared sizes only, so damage that kept the size was skipped as done."""
    args = ["generate", "--per_scene", "1"]
    assert influencer(args, cli_env, tmp_path).returncode == 0
    out = tmp_path / "data" / "synth_openrouter"
    victim = sorted(out.glob("*.png"))[0]
    data = bytearray(victim.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 64] = bytes(64)
    victim.write_bytes(bytes(data))
    paid = len(stub.paid_requests)
    res = influencer(args, cli_env, tmp_path)
    assert res.returncode == 0, res.stderr
    assert len(stub.paid_requests) == paid + 1, "the damaged image is generated again"
    assert all_decode(out) == 6


def test_run_on_the_image_api_n4_writes_every_image_and_a_rerun_pays_nothing(
    lookalike: tuple[StubOpenRouter, dict[str, str]], tmp_path: Path
) -> None:
    stub, env = lookalike
    photos(tmp_path / "data" / "input_raw", "obama.jpg", "obama3.jpg")
    env = {k: v for k, v in env.items() if not k.startswith("PREFECT_API_")}
    env.update(PREFECT_HOME=str(tmp_path / "prefect-home"), INFLUENCER_IMAGE_RATE_PER_S="20")
    args = [
        "run",
        "--per_scene",
        "4",
        "--n",
        "4",
        "--model",
        SEEDREAM,
        *(f"--skip={s}" for s in ("augment", "train", "evaluate")),
    ]
    res = influencer(args, env, tmp_path, timeout=420)
    assert res.returncode == 0, res.stderr[-3000:]
    out = tmp_path / "data" / "synth_openrouter"
    assert all_decode(out) == 24
    image_calls = posts(stub)
    assert len(image_calls) == 6 and stub.paid_images == 24, "about one request per 4 images"
    assert all(r.body["n"] == 4 and len(r.body["input_references"]) == 2 for r in image_calls)
    summary = json.loads(res.stdout[res.stdout.index("{") :])
    assert summary["generate"]["generated"] == 24 and summary["generate"]["requests_paid"] == 6
    assert summary["generate"]["route"] == "images"
    assert summary["generate"]["spent_usd"] == pytest.approx(summary["generate"]["estimate_usd"])
    assert json.loads((out / "manifest.json").read_text())["routes"] == {"images": 24}
    paid = len(stub.paid_requests)
    again = influencer([*args, "--skip", "prepare", "--skip", "plan"], env, tmp_path, timeout=420)
    assert again.returncode == 0, again.stderr[-3000:]
    assert len(stub.paid_requests) == paid and len(posts(stub)) == 6, "a rerun pays nothing"


def test_run_with_an_unsupported_option_pays_for_nothing_not_even_the_plan(
    lookalike: tuple[StubOpenRouter, dict[str, str]], tmp_path: Path
) -> None:
    stub, env = lookalike
    photos(tmp_path / "data" / "input_raw", "obama.jpg", "obama3.jpg")
    env = {k: v for k, v in env.items() if not k.startswith("PREFECT_API_")}
    env.update(PREFECT_HOME=str(tmp_path / "prefect-home"))
    res = influencer(["run", "--per_scene", "1", "--n", "4"], env, tmp_path, timeout=300)
    assert res.returncode == 1
    assert "error: image options: --n 4: google/gemini-2.5-flash-image accepts n = 1" in res.stderr
    assert not stub.paid_requests and not posts(stub), "nothing paid: the storyboard neither"
