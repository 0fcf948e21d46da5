"""The real ``influencer`` console script, run as a subprocess against the stub."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import REPO
from tests.support.openrouter_stub import StubOpenRouter

INFLUENCER = str(Path(sys.executable).with_name("influencer"))


def run(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([INFLUENCER, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=180)


def test_help_lists_the_stages(cli_env: dict[str, str], tmp_path: Path) -> None:
    res = run(["--help"], cli_env, tmp_path)
    assert res.returncode == 0
    for cmd in ("models", "plan", "generate"):
        assert cmd in res.stdout


def test_models_lists_image_generators(cli_env: dict[str, str], tmp_path: Path) -> None:
    res = run(["models", "--output-modality", "image", "--json"], cli_env, tmp_path)
    assert res.returncode == 0, res.stderr
    assert {m["id"] for m in json.loads(res.stdout)} == {
        "google/gemini-2.5-flash-image",
        "black-forest-labs/flux.2-pro",
    }


def test_plan_writes_storyboard_with_script_and_caption_seeds(
    cli_env: dict[str, str], tmp_path: Path, stub: StubOpenRouter
) -> None:
    res = run(["plan"], cli_env, tmp_path)
    assert res.returncode == 0, res.stderr
    board = json.loads((tmp_path / "data" / "text" / "storyboard.json").read_text())
    assert len(board["caption_seeds"]) >= 5 and board["spoken_script"] and board["shots"]
    assert board["_meta"]["usage"]["cost"] == stub.text_cost
    body = stub.requests[-1].body
    assert body["model"] == "meta-llama/llama-3.1-70b-instruct"
    assert body["response_format"]["json_schema"]["name"] == "Storyboard"


def test_generate_with_manual_flags_then_resume(cli_env: dict[str, str], tmp_path: Path, stub: StubOpenRouter) -> None:
    out = tmp_path / "synth"
    args = ["generate", "--per_scene", "1", "--size", "1024x1024", "--out", str(out), "--concurrency", "3"]
    res = run(args, cli_env, tmp_path)
    assert res.returncode == 0, res.stderr
    assert "generated 6, failed 0" in res.stdout
    assert json.loads((out / "manifest.json").read_text())["count"] == 6
    res = run(args, cli_env, tmp_path)
    assert "generated 0, failed 0" in res.stdout
    assert len(stub.paid_requests) == 6


def test_main_job_killed_mid_generation_resumes_on_the_embedded_server(
    cli_env: dict[str, str], tmp_path: Path, stub: StubOpenRouter
) -> None:
    """README's first command, `influencer run`, with no Prefect server configured: killed with SIGKILL
    while generating, then run again. The killed run's in-flight slots must come back (Prefect's
    embedded server has no lease repossessor), and nothing saved before the kill is paid again."""
    from tests.support.assets import face

    stub.latency, stub.latency_paths = 0.5, ("/chat/completions",)
    raw = tmp_path / "data" / "input_raw"
    raw.mkdir(parents=True)
    for name in ("obama.jpg", "obama3.jpg"):
        shutil.copy(face(name), raw / name)
    env = {k: v for k, v in cli_env.items() if not k.startswith("PREFECT_API_")}
    env.update(
        PREFECT_HOME=str(tmp_path / "prefect-home"), INFLUENCER_IMAGE_RATE_PER_S="4", PREFECT_LOGGING_LEVEL="INFO"
    )
    args = ["run", "--per-scene", "4", *(f"--skip={s}" for s in ("qc", "augment", "train", "evaluate"))]
    out = tmp_path / "data" / "synth_openrouter"
    with (tmp_path / "killed.log").open("w") as log:
        proc = subprocess.Popen(
            [INFLUENCER, *args], env=env, cwd=tmp_path, stdout=log, stderr=log, start_new_session=True
        )
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline and len(list(out.glob("*.png"))) < 4 and proc.poll() is None:
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
    killed_at = time.monotonic()
    saved = {f.stem: json.loads(f.with_suffix(".json").read_text())["prompt"] for f in out.glob("*.png")}
    assert 4 <= len(saved) < 24, "the kill must land mid-run: " + (tmp_path / "killed.log").read_text()[-3000:]
    leases = tmp_path / "prefect-home" / "concurrency_leases"
    assert any(leases.glob("*-*.json")), "the killed run's in-flight lease is kept on disk"

    # Before the fix this re-run waited for the dead run's slots forever; the timeout turns that into a failure.
    res = subprocess.run([INFLUENCER, *args], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=240)
    logs = res.stdout + res.stderr
    assert res.returncode == 0, logs[-3000:]
    assert "freed 8 in-flight slot(s) whose lease expired" in logs
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["count"] == 24 and len(list(out.glob("*.png"))) == 24
    after_kill = [json.dumps(r.body) for r in stub.paid_requests if r.t > killed_at]
    repaid = [k for k, prompt in saved.items() if any(json.dumps(prompt)[1:-1] in body for body in after_kill)]
    assert not repaid, "images saved before the kill were paid for again"
    assert len(after_kill) == 24 - len(saved)


def test_clear_errors_for_bad_bank_and_missing_key(cli_env: dict[str, str], tmp_path: Path) -> None:
    bad = tmp_path / "bank.yaml"
    bad.write_text("persona: {name: A}\nscenes: []\n")
    res = run(["generate", "--prompt_bank", str(bad)], cli_env, tmp_path)
    assert res.returncode == 1
    assert str(bad) in res.stderr and "persona.description" in res.stderr and "Traceback" not in res.stderr
    env = {k: v for k, v in cli_env.items() if k != "OPENROUTER_API_KEY"}
    res = run(["plan"], env, tmp_path)
    assert res.returncode == 1 and "OPENROUTER_API_KEY" in res.stderr and "Traceback" not in res.stderr


def test_qc_refuses_a_percent_for_minsim_and_a_negative_minblur(cli_env: dict[str, str], tmp_path: Path) -> None:
    res = run(["qc", "--minsim", "34"], cli_env, tmp_path)
    assert res.returncode == 2 and "--minsim" in res.stderr and "did you mean 0.34?" in res.stderr
    res = run(["qc", "--minblur", "-1"], cli_env, tmp_path)
    assert res.returncode == 2 and "--minblur" in res.stderr and "below 0" in res.stderr
    assert not (tmp_path / "data").exists()  # refused before any work
    res = run(["qc", "--help"], cli_env, tmp_path)
    assert "NON-COMMERCIAL" in " ".join(res.stdout.split())


def test_stage_commands_chain_prepare_generate_qc_augment(
    cli_env: dict[str, str], tmp_path: Path, stub: StubOpenRouter
) -> None:
    import shutil

    from tests.support.assets import face

    raw = tmp_path / "data" / "input_raw"
    raw.mkdir(parents=True)
    for n in ("obama.jpg", "obama3.jpg"):
        shutil.copy(face(n), raw / n)
    (raw / "notes.jpg").write_text("not an image")
    res = run(["prepare", "--do_facecrop", "--size", "512"], cli_env, tmp_path)
    assert res.returncode == 0, res.stderr
    assert "prepared 2/3" in res.stdout and "notes.jpg" in res.stderr
    res = run(["generate", "--per_scene", "2", "--concurrency", "4"], cli_env, tmp_path)
    assert res.returncode == 0, res.stderr
    res = run(["qc", "--minsim", "0.34", "--minblur", "80"], cli_env, tmp_path)
    assert res.returncode == 0, res.stderr
    report = (tmp_path / "data" / "qc_passed" / "qc_report.csv").read_text().splitlines()
    assert report[0].startswith("file,faces,score,sharpness,duplicate_of,verdict,reason,") and len(report) == 13
    assert "qc" in res.stderr and "14/14" in res.stderr  # the progress bar: 2 references + 12 candidates
    accepted = [line for line in report[1:] if ",accepted," in line]
    assert accepted and len(accepted) < 12  # the stub serves some other people and blurred images
    res = run(["augment", "--num_aug", "1", "--kohya-repeats", "5"], cli_env, tmp_path)
    assert res.returncode == 0, res.stderr
    caps = sorted((tmp_path / "data" / "captions").glob("*.txt"))
    assert len(caps) == 2 * len(accepted)
    assert all(c.read_text().startswith("ohwx woman") for c in caps)
    assert (tmp_path / "data" / "augment" / "kohya" / "5_ohwx woman").is_dir()


def test_stack_up_and_down_drive_docker_compose(tmp_path: Path) -> None:
    """The command lines `stack up/down` hand to docker compose (a recording `docker` stands in for it)."""
    import yaml

    log = tmp_path / "docker.log"
    fake = tmp_path / "bin" / "docker"
    fake.parent.mkdir()
    fake.write_text(f'#!/bin/sh\necho "$@" >> {log}\nexit 0\n')
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{fake.parent}:{os.environ['PATH']}"}
    cli = str(Path(sys.executable).with_name("influencer"))
    res = subprocess.run([cli, "stack", "up", "--recreate"], capture_output=True, text=True, env=env, timeout=60)
    assert res.returncode == 0, res.stderr
    res = subprocess.run([cli, "stack", "down", "--remove-volumes"], capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stderr
    calls = log.read_text().splitlines()
    compose_file = str(REPO / "docker" / "compose.yaml")
    assert f"compose -f {compose_file} up -d --build --force-recreate" in calls
    assert f"compose -f {compose_file} down --volumes" in calls
    empty = tmp_path / "empty"
    empty.mkdir()
    res = subprocess.run([cli, "stack", "up"], capture_output=True, text=True, env={**env, "PATH": str(empty)})
    assert res.returncode == 1 and "docker compose" in res.stderr
    services = yaml.safe_load((REPO / "docker" / "compose.yaml").read_text())["services"]
    assert {"postgres", "prefect-server", "worker", "hub"} <= set(services)
    assert "postgresql+asyncpg" in services["prefect-server"]["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"]
    assert services["worker"]["command"][-3:] == ["gpu-docker", "--type", "docker"]
