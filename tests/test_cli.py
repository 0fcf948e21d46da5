"""The real ``influencer`` console script, run as a subprocess against the stub."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

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
        "acme/chat-painter",
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
    assert "nothing to generate" in res.stdout and "6 already done" in res.stderr
    assert len(stub.paid_requests) == 6


def test_generate_budget_stops_paid_requests_at_the_cap(
    cli_env: dict[str, str], tmp_path: Path, stub: StubOpenRouter
) -> None:
    out = tmp_path / "synth"
    budget = stub.image_cost * 3.5
    args = ["generate", "--per_scene", "1", "--out", str(out), "--concurrency", "1", "--budget", str(budget)]
    res = run(args, cli_env, tmp_path)
    assert res.returncode == 4, res.stderr  # the budget refused images: a distinct exit code, said on stderr
    assert "budget reached: 3 images not generated" in res.stderr and "exit code 4" in res.stderr, res.stderr
    assert "generated 3, failed 0, refused by budget 3" in res.stdout, res.stdout
    assert len(stub.paid_requests) == 3 and len(list(out.glob("*.png"))) == 3
    spent = float(res.stdout.split("spent $", 1)[1].split(";", 1)[0])
    assert spent <= budget


def test_main_job_killed_mid_generation_resumes_on_the_embedded_server(
    cli_env: dict[str, str], tmp_path: Path, stub: StubOpenRouter
) -> None:
    """`influencer run` on Prefect's temporary server (INFLUENCER_PREFECT_LOCAL_SERVER=false): killed with SIGKILL
    while generating, then run again. The re-run must not wait for the dead run's slots (Prefect's
    embedded server has no lease repossessor and the leases last 60 s: the re-run frees those of its
    dead predecessor at once), and nothing saved before the kill is paid again."""
    from tests.support.assets import face

    stub.latency, stub.latency_paths = 0.5, ("/images",)
    raw = tmp_path / "data" / "input_raw"
    raw.mkdir(parents=True)
    for name in ("obama.jpg", "obama3.jpg"):
        shutil.copy(face(name), raw / name)
    env = {k: v for k, v in cli_env.items() if not k.startswith("PREFECT_API_")}
    env.update(
        PREFECT_HOME=str(tmp_path / "prefect-home"),
        INFLUENCER_PREFECT_LOCAL_SERVER="false",  # the temporary per-run server (the kept one has a repossessor)
        INFLUENCER_IMAGE_RATE_PER_S="4",
        # Two in-flight slots: the killed run holds all of them, so the re-run can finish only by freeing
        # them itself once their leases expire (the embedded server has no repossessor).
        INFLUENCER_IMAGE_MAX_INFLIGHT="2",
        PREFECT_LOGGING_LEVEL="INFO",
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
    images = {f.stem for f in out.glob("*.png")}
    # An image whose sidecar the kill prevented is recovered by the re-run without paying: its prompt is
    # not on disk yet, so only the others can be matched against the re-run's requests below.
    saved = {k: json.loads((out / f"{k}.json").read_text())["prompt"] for k in images if (out / f"{k}.json").is_file()}
    assert 4 <= len(images) < 24, "the kill must land mid-run: " + (tmp_path / "killed.log").read_text()[-3000:]
    leases = tmp_path / "prefect-home" / "concurrency_leases"
    assert any(leases.glob("*-*.json")), "the killed run's in-flight lease is kept on disk"

    # Once this re-run waited for the dead run's slots forever, then for their 60 s leases.
    with (tmp_path / "rerun.log").open("w") as log:
        rerun = subprocess.Popen([INFLUENCER, *args], env=env, cwd=tmp_path, stdout=log, stderr=log)
        try:
            code = rerun.wait(240)
        except subprocess.TimeoutExpired:
            rerun.kill()
            raise AssertionError("the re-run hung:\n" + (tmp_path / "rerun.log").read_text()[-4000:]) from None
    logs = (tmp_path / "rerun.log").read_text()
    assert code == 0, logs[-3000:]
    # The dead run's seat and in-flight slots would stay taken until their leases expire (60 s); the re-run
    # knows they were held by a process of this host that is gone, frees them at once and goes on alone.
    freed = re.findall(r"freed the slots of a killed run \(pid (\d+) on this host, workspace (.+?)\): (.*)", logs)
    assert [(int(pid), ws) for pid, ws, _ in freed] == [(proc.pid, str((tmp_path / "data").resolve()))], logs[-3000:]
    assert "openrouter-image-inflight: 2" in freed[0][2] and "openrouter-image-rate-seat-0: 1" in freed[0][2]
    assert "runs share openrouter-image-rate" not in logs, logs[-3000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["count"] == 24 and len(list(out.glob("*.png"))) == 24
    after_kill = [json.dumps(r.body) for r in stub.paid_requests if r.t > killed_at]
    repaid = [k for k, prompt in saved.items() if any(json.dumps(prompt)[1:-1] in body for body in after_kill)]
    assert not repaid, "images saved before the kill were paid for again"
    assert len(after_kill) == 24 - len(images)


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
    flat = " ".join(res.stderr.replace("│", " ").split())  # rich wraps the message inside a box
    assert res.returncode == 2 and "--minblur" in flat and "minblur must be a number >= 0" in flat and "got -1" in flat
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
    assert f"compose -p ai-influencer -f {compose_file} up -d --build --force-recreate" in calls
    assert f"compose -p ai-influencer -f {compose_file} down --volumes" in calls
    empty = tmp_path / "empty"
    empty.mkdir()
    res = subprocess.run([cli, "stack", "up"], capture_output=True, text=True, env={**env, "PATH": str(empty)})
    assert res.returncode == 1 and "docker compose" in res.stderr
    services = yaml.safe_load((REPO / "docker" / "compose.yaml").read_text())["services"]
    assert {"postgres", "prefect-server", "worker", "hub"} <= set(services)
    assert "postgresql+asyncpg" in services["prefect-server"]["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"]
    assert services["worker"]["command"][-3:] == ["gpu-docker", "--type", "docker"]
    # Locked down by default: ports on 127.0.0.1 only, no fallback secrets.
    ports = [p for svc in services.values() for p in svc.get("ports", [])]
    assert ports and all(p.startswith("${BIND_ADDRESS:-127.0.0.1}:") for p in ports)
    text = (REPO / "docker" / "compose.yaml").read_text()
    assert "change-me" not in text and ":-prefect}" not in text
    for var in ("POSTGRES_PASSWORD", "PREFECT_AUTH", "INFLUENCER_HUB_TOKEN"):
        assert "${" + var + ":?" in text, f"{var} must be required"


def test_compose_refuses_to_start_without_its_secrets(tmp_path: Path) -> None:
    """docker-compose 1.29 (what Debian ships; .ci/run installs it) reads the file and names the missing secret."""
    compose = [
        shutil.which("docker-compose") or "docker-compose",
        "-p",
        "ai-influencer",
        "-f",
        str(REPO / "docker" / "compose.yaml"),
    ]
    env = {
        k: v for k, v in os.environ.items() if k not in ("POSTGRES_PASSWORD", "PREFECT_AUTH", "INFLUENCER_HUB_TOKEN")
    }
    bare = subprocess.run([*compose, "config"], capture_output=True, text=True, env=env, timeout=60)
    assert bare.returncode != 0 and "POSTGRES_PASSWORD" in bare.stderr
    full = {**env, "POSTGRES_PASSWORD": "pw", "PREFECT_AUTH": "admin:pw", "INFLUENCER_HUB_TOKEN": "tok"}
    ok = subprocess.run([*compose, "config"], capture_output=True, text=True, env=full, timeout=60)
    assert ok.returncode == 0, ok.stderr
    assert "127.0.0.1:4200:4200" in ok.stdout and "127.0.0.1:8000:8000" in ok.stdout


def test_run_checks_its_inputs_before_starting_prefect(cli_env: dict[str, str], tmp_path: Path) -> None:
    """A newcomer's first `influencer run` with nothing in data/input_raw: told what to put where, at once."""
    env = {**cli_env, "PREFECT_HOME": str(tmp_path / "prefect-home")}
    res = run(["run"], env, tmp_path)
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert "put at least 2 photos of the persona" in res.stderr and "input_raw" in res.stderr
    assert not (tmp_path / "prefect-home" / "prefect.db").exists(), "Prefect was not even started"
    no_key = {k: v for k, v in env.items() if k != "OPENROUTER_API_KEY"}
    res = run(["run", "--skip", "prepare"], no_key, tmp_path)
    assert res.returncode == 1 and "no OpenRouter key" in res.stderr and "influencer set-key" in res.stderr


def test_prefect_outside_the_tested_range_is_named_at_start_up() -> None:
    import warnings

    from shared_limits.prefect_compat import check_prefect_version

    assert check_prefect_version() is None, "the installed Prefect is the tested one"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        text = check_prefect_version("3.4.10")
    assert text and "3.4.10" in text and "tested" in text and caught


@pytest.mark.parametrize(("sig", "group", "code"), [(signal.SIGTERM, False, 143), (signal.SIGINT, True, 130)])
def test_stopping_the_main_job_keeps_every_paid_image(
    cli_env: dict[str, str], tmp_path: Path, stub: StubOpenRouter, sig: int, group: bool, code: int
) -> None:
    """`influencer run` (the flow in-process on the workspace's kept Prefect server) stopped mid-generation with
    SIGTERM (a service manager), or with Ctrl-C in a terminal, which signals the whole process group: the
    generate flow drains (nothing new sent, requests in flight finish and are saved), then the signal goes on
    to Prefect, which ends the run. The server is in its own session, so Ctrl-C does not kill the API the
    drain still needs, and it holds none of the run's pipes."""
    from tests.support.assets import face

    stub.latency, stub.latency_paths = 1.5, ("/images",)
    raw = tmp_path / "data" / "input_raw"
    raw.mkdir(parents=True)
    for name in ("obama.jpg", "obama3.jpg"):
        shutil.copy(face(name), raw / name)
    env = {k: v for k, v in cli_env.items() if not k.startswith("PREFECT_API_")}
    env.update(PREFECT_HOME=str(tmp_path / "prefect-home"), INFLUENCER_IMAGE_RATE_PER_S="4")
    args = ["run", "--per-scene", "4", *(f"--skip={s}" for s in ("qc", "augment", "train", "evaluate"))]
    out = tmp_path / "data" / "synth_openrouter"
    proc = subprocess.Popen(
        [INFLUENCER, *args],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    deadline = time.monotonic() + 150
    while time.monotonic() < deadline and len(list(out.glob("*.png"))) < 2 and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(0.3)
    # received by the provider and not answered yet (image requests only: the plan's call is long done)
    in_flight = len(stub.image_requests()) - len(list(out.glob("*.png")))
    if group:
        os.killpg(proc.pid, sig)
    else:
        proc.send_signal(sig)
    # communicate() also waits for every process holding the pipes: a Prefect server holding them would hang it.
    _stdout, stderr = proc.communicate(timeout=120)
    time.sleep(0.2)
    paid = sum(r.paid for r in stub.image_requests())
    assert proc.returncode == code, stderr.decode()[-3000:]
    assert b"every image already paid for is saved" in stderr
    assert in_flight > 0, "the stop must land while requests are in flight"
    assert 2 <= paid < 24, stderr.decode()[-3000:]
    assert len(list(out.glob("*.png"))) == paid, "every paid image is on disk"
    assert json.loads((out / "manifest.json").read_text())["count"] == paid


def test_init_scaffolds_a_workspace_that_doctor_then_checks(cli_env: dict[str, str], tmp_path: Path) -> None:
    """A newcomer: `influencer init`, photos in data/input_raw, `influencer doctor` says ok or what to do."""
    from tests.support.assets import face

    root = tmp_path / "ws"
    env = {k: v for k, v in cli_env.items() if not k.startswith("INFLUENCER_") or k.endswith("MAX_RETRIES")}
    env["PREFECT_HOME"] = str(tmp_path / "prefect-home")
    res = run(["init", str(root)], env, tmp_path)
    assert res.returncode == 0, res.stderr
    for made in ("data/input_raw/README.txt", "data/cleaned", "data/synth_openrouter", "models/lora",
                 "prompt_bank/default.yaml", ".env"):  # fmt: skip
        assert (root / made).exists(), made
    assert "at least 2" in (root / "data" / "input_raw" / "README.txt").read_text()
    assert "# OPENROUTER_API_KEY=" in (root / ".env").read_text()
    again = run(["init", str(root)], env, tmp_path)
    assert again.returncode == 0 and "created" not in again.stdout, "init never overwrites"

    doctor = run(["doctor"], env, root)
    lines = {line.split(":", 1)[0][5:]: line for line in doctor.stdout.splitlines() if line[:4].strip()}
    assert doctor.returncode == 1, doctor.stdout
    assert lines["reference photos"].startswith("fail") and "put at least 2 photos" in lines["reference photos"]
    assert lines["prompt bank"].startswith("ok") and lines["OpenRouter key"].startswith("ok")
    assert "from env: works" in lines["OpenRouter key"] and lines["Prefect"].startswith("ok")
    assert lines["face models (dlib)"].startswith("ok") and lines["SDXL base model"].startswith("warn")
    for name in ("obama.jpg", "obama3.jpg"):
        shutil.copy(face(name), root / "data" / "input_raw" / name)
    healthy = run(["doctor"], env, root)
    assert healthy.returncode == 0, healthy.stdout
    assert not any(line.startswith("fail") for line in healthy.stdout.splitlines())
