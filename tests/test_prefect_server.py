"""A real, self-hosted ``prefect server start`` protected by basic auth, driven the way users do it.

This is the n8n-webhook replacement end to end: ``influencer stack init`` (pools, limits,
blocks), ``influencer set-key`` (stdin), ``prefect deploy`` from prefect.yaml, the REST
trigger (``influencer trigger``), and a process worker that runs the hybrid flow to
completion against the stub OpenRouter server. Unlike prefect_test_harness, a started
server runs its background services, so this module also shows that a SIGKILLed
generation run's in-flight slots come back (Prefect's lease repossessor).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import REPO, TEST_KEY
from tests.support.assets import face
from tests.support.openrouter_stub import StubOpenRouter
from tests.support.prefect_server import BIN, prefect_server

AUTH = "admin:" + uuid.uuid4().hex[:12]
BANK = str(REPO / "prompt_bank" / "default.yaml")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A started server with basic auth; the repossessor checks for expired leases every 2 s."""
    with prefect_server(
        tmp_path_factory.mktemp("prefect-home"), AUTH, PREFECT_SERVER_SERVICES_REPOSSESSOR_LOOP_SECONDS="2"
    ) as env:
        yield env


def run(args: list[str], env: dict[str, str], stdin: str | None = None, timeout: float = 300) -> str:
    res = subprocess.run(args, input=stdin, capture_output=True, text=True, env=env, cwd=REPO, timeout=timeout)
    assert res.returncode == 0, f"{args[:3]} failed ({res.returncode}):\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res.stdout


def rest(env: dict[str, str], method: str, path: str, body: dict | None = None) -> dict | list:
    user, _, password = env["PREFECT_API_AUTH_STRING"].partition(":")
    r = httpx.request(method, env["PREFECT_API_URL"] + path, json=body, auth=(user, password), timeout=30)
    r.raise_for_status()
    return r.json() if r.content else {}


def test_api_trigger_runs_the_hybrid_deployment_on_a_process_worker(
    server: dict[str, str], stub: StubOpenRouter, tmp_path: Path
) -> None:
    env = server
    # The server really enforces basic auth.
    assert httpx.get(env["PREFECT_API_URL"] + "/deployments/filter", timeout=10).status_code == 401

    tag = uuid.uuid4().hex[:6]
    stack_env = {
        **env,
        "INFLUENCER_IMAGE_RATE_LIMIT_NAME": f"rate-{tag}",
        "INFLUENCER_IMAGE_INFLIGHT_LIMIT_NAME": f"in-{tag}",
    }
    out = run([str(BIN / "influencer"), "stack", "init", "--rate-per-s", "20", "--max-inflight", "6"], stack_env)
    assert "gpu-docker (docker): created" in out and "local-process (process): created" in out
    pools = {p["name"]: p["type"] for p in rest(env, "POST", "/work_pools/filter", {})}
    assert pools["gpu-docker"] == "docker" and pools["local-process"] == "process"
    # An operator tunes the GPU pool (paused, a concurrency cap, its own job template); init again keeps it.
    tuned = rest(env, "GET", "/work_pools/gpu-docker")
    template = tuned["base_job_template"]
    template["variables"]["properties"]["image"]["default"] = "registry.example/ai-influencer:tuned"
    rest(
        env,
        "PATCH",
        "/work_pools/gpu-docker",
        {"is_paused": True, "concurrency_limit": 2, "base_job_template": template},
    )
    out = run([str(BIN / "influencer"), "stack", "init"], stack_env)
    assert "gpu-docker (docker, paused): exists, kept as is" in out
    kept = rest(env, "GET", "/work_pools/gpu-docker")
    assert kept["is_paused"] and kept["concurrency_limit"] == 2
    assert (
        kept["base_job_template"]["variables"]["properties"]["image"]["default"]
        == "registry.example/ai-influencer:tuned"
    )
    rest(env, "PATCH", "/work_pools/gpu-docker", {"is_paused": False})
    rate = rest(env, "GET", f"/v2/concurrency_limits/rate-{tag}")
    assert rate["slot_decay_per_second"] == pytest.approx(20) and rate["limit"] >= 1
    assert rest(env, "GET", f"/v2/concurrency_limits/in-{tag}")["limit"] == 6

    # The key goes into the block from stdin; the worker below has no OPENROUTER_API_KEY at all.
    secret = "sk-or-server-" + uuid.uuid4().hex
    stub.valid_keys = {secret, TEST_KEY}
    out = run([str(BIN / "influencer"), "set-key", "--base-url", stub.base_url], env, stdin=secret + "\n")
    assert secret not in out
    # The stored key is the key of the CLI's stage commands too, not only of flows.
    no_env_key = {k: v for k, v in env.items() if not k.startswith("OPENROUTER_")}
    board = tmp_path / "board.json"
    run([str(BIN / "influencer"), "plan", "--prompt-bank", BANK, "--out", str(board)], no_env_key)
    assert board.is_file() and any(r.authorization_ok for r in stub.requests if r.path.endswith("/chat/completions"))
    # A server that is not there: one line that says what to do, not a traceback.
    down = {**env, "PREFECT_API_URL": "http://127.0.0.1:9/api"}
    for args, stdin in ((["set-key"], "sk-or-x\n"), (["trigger", "hybrid/hybrid-local"], None)):
        res = subprocess.run(
            [str(BIN / "influencer"), *args], input=stdin, capture_output=True, text=True, env=down, timeout=120
        )
        assert res.returncode == 1, res.stderr
        lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
        assert len(lines) <= 2 and "Prefect API at http://127.0.0.1:9" in res.stderr, res.stderr
        assert "prefect server start" in res.stderr and "Traceback" not in res.stderr

    deploy_env = {**env, "INFLUENCER_PROJECT_DIR": str(REPO)}
    run([str(BIN / "prefect"), "--no-prompt", "deploy", "--name", "hybrid-local"], deploy_env)
    run([str(BIN / "prefect"), "--no-prompt", "deploy", "--name", "generate-daily"], deploy_env)
    daily = rest(env, "GET", "/deployments/name/generate/generate-daily")
    schedule = daily["schedules"][0]["schedule"]
    assert schedule["cron"] == "0 7 * * *" and schedule["timezone"] == "Europe/Rome"
    assert daily["work_pool_name"] == "gpu-docker"

    data = tmp_path / "data"
    (data / "input_raw").mkdir(parents=True)
    for name in ("obama.jpg", "obama3.jpg"):
        (data / "input_raw" / name).write_bytes(face(name).read_bytes())
    params = {
        "params": {
            "paths": {"data_root": str(data), "prompt_bank": BANK},
            "generate": {
                "per_scene": 1,
                "limits": {"rate_limit_name": f"rate-{tag}", "inflight_limit_name": f"in-{tag}"},
            },
            "run_augment": False,
        }
    }
    out = run([str(BIN / "influencer"), "trigger", "hybrid/hybrid-local", "--params", json.dumps(params)], env)
    run_id = out.split("flow run ", 1)[1].split()[0]
    flow_run = rest(env, "GET", f"/flow_runs/{run_id}")
    assert flow_run["parameters"]["params"]["generate"]["per_scene"] == 1
    assert secret not in json.dumps(flow_run)

    worker_env = {**env, "INFLUENCER_OPENROUTER_MAX_RETRIES": "0"}
    worker = subprocess.run(
        [str(BIN / "prefect"), "worker", "start", "--pool", "local-process", "--run-once"],
        env=worker_env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=480,
    )
    final = rest(env, "GET", f"/flow_runs/{run_id}")
    assert final["state_type"] == "COMPLETED", f"{final['state']}\n{worker.stdout[-4000:]}\n{worker.stderr[-4000:]}"
    manifest = json.loads((data / "synth_openrouter" / "manifest.json").read_text())
    assert manifest["count"] == 6
    assert (data / "qc_passed" / "qc_report.csv").is_file()
    assert (data / "text" / "storyboard.json").is_file()
    chats = [r for r in stub.requests if r.path.endswith("/chat/completions")]
    assert chats and all(r.authorization_ok for r in chats)


def test_a_prefect_cancellation_drains_the_requests_already_sent(
    server: dict[str, str], stub: StubOpenRouter, tmp_path: Path
) -> None:
    """Cancel from the UI/API: the worker's runner SIGTERMs the flow process (SIGKILL 30 s later, a grace
    Prefect 3.9 fixes); the requests already sent finish and are saved, and the run ends Cancelled."""
    stub.latency = 2.0
    tag = uuid.uuid4().hex[:6]
    env = {**server, "INFLUENCER_PROJECT_DIR": str(REPO)}
    try:  # the trigger test above already made the pools and deployed hybrid-local: ~10 s of CLI not redone
        on_pool = rest(server, "GET", "/deployments/name/hybrid/hybrid-local")["work_pool_name"] == "local-process"
    except httpx.HTTPStatusError:  # this test alone (-k): nothing deployed yet
        on_pool = False
    if not on_pool:
        run([str(BIN / "influencer"), "stack", "init"], env)
        run([str(BIN / "prefect"), "--no-prompt", "deploy", "--name", "hybrid-local"], env)
    data = tmp_path / "data"
    (data / "input_raw").mkdir(parents=True)
    for name in ("obama.jpg", "obama3.jpg"):
        (data / "input_raw" / name).write_bytes(face(name).read_bytes())
    limits = {"rate_limit_name": f"rate-c-{tag}", "inflight_limit_name": f"in-c-{tag}", "max_inflight": 6}
    params = {
        "params": {
            "paths": {"data_root": str(data), "prompt_bank": BANK},
            "generate": {"per_scene": 6, "limits": limits},
            "run_augment": False,
        }
    }
    out = run([str(BIN / "influencer"), "trigger", "hybrid/hybrid-local", "--params", json.dumps(params)], env)
    run_id = out.split("flow run ", 1)[1].split()[0]
    worker_env = {
        **server,
        "OPENROUTER_API_KEY": TEST_KEY,
        "OPENROUTER_BASE_URL": stub.base_url,
        "INFLUENCER_CREDENTIALS_BLOCK": "none-" + tag,
        "INFLUENCER_OPENROUTER_MAX_RETRIES": "0",
        # Prefect ships a run's logs every 2 s from a background worker; the run's state changes at once.
        # A long interval makes the old race certain: the drain line must be on the server before the
        # run is Cancelled (the flow flushes it), not whenever the next batch or the process exit sends it.
        "PREFECT_LOGGING_TO_API_BATCH_INTERVAL": "30",
    }
    log = (tmp_path / "worker.log").open("w")
    worker = subprocess.Popen(
        [str(BIN / "prefect"), "worker", "start", "--pool", "local-process"],
        env=worker_env, cwd=tmp_path, stdout=log, stderr=log, start_new_session=True,
    )  # fmt: skip
    images = data / "synth_openrouter"

    def paid_images() -> int:
        return sum(r.paid for r in stub.image_requests())

    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and len(list(images.glob("*.png"))) < 3:
            assert worker.poll() is None, (tmp_path / "worker.log").read_text()[-3000:]
            time.sleep(0.1)
        assert len(list(images.glob("*.png"))) >= 3, (tmp_path / "worker.log").read_text()[-3000:]
        rest(server, "POST", f"/flow_runs/{run_id}/set_state", {"state": {"type": "CANCELLING"}, "force": True})
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and rest(server, "GET", f"/flow_runs/{run_id}")["state_type"] != "CANCELLED":
            time.sleep(0.5)
        final = rest(server, "GET", f"/flow_runs/{run_id}")
        assert final["state_type"] == "CANCELLED", f"{final['state']}\n{(tmp_path / 'worker.log').read_text()[-3000:]}"
    finally:
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(30)
    paid = paid_images()
    assert 3 <= paid < 36, "the run was cancelled mid-generation"
    # Warnings and errors only: the last 200 lines of every level could leave the drain line out.
    query = {"logs": {"level": {"ge_": 30}}, "limit": 200, "sort": "TIMESTAMP_DESC"}
    logs = [e["message"] for e in rest(server, "POST", "/logs/filter", query)]
    assert any(m.startswith("stopped (SIGTERM received") for m in logs), "the flow drained on the runner's SIGTERM"
    assert not any("BrokenProcessPool" in m or "terminated abruptly" in m for m in logs), "QC died of the signal"
    assert len(list(images.glob("*.png"))) == paid, "every image paid for before the cancellation is on disk"
    assert json.loads((images / "manifest.json").read_text())["count"] == paid


KILL_SCRIPT = """
import sys
from flows.generate import generate_flow
from flows.params import GenerateParams, Limits, Paths
limits = Limits(rate_limit_name=sys.argv[2], rate_per_s=4, inflight_limit_name=sys.argv[3], max_inflight=3)
generate_flow(GenerateParams(per_scene=4, use_references=False, limits=limits),
              Paths(data_root=sys.argv[1], prompt_bank=sys.argv[4]))
"""


def test_a_killed_runs_inflight_slots_come_back_on_a_real_server(
    server: dict[str, str], stub: StubOpenRouter, tmp_path: Path
) -> None:
    """Same in-flight limit before and after a SIGKILL: the server's repossessor frees the dead run's slots."""
    stub.latency = 0.3
    tag = uuid.uuid4().hex[:6]
    rate_name, inflight_name = f"rate-k-{tag}", f"in-k-{tag}"
    data = tmp_path / "data"
    (data / "input_raw").mkdir(parents=True)
    env = {
        **server,
        "OPENROUTER_API_KEY": TEST_KEY,
        "OPENROUTER_BASE_URL": stub.base_url,
        "INFLUENCER_CREDENTIALS_BLOCK": "none-" + tag,
        "INFLUENCER_OPENROUTER_MAX_RETRIES": "0",
        "PYTHONPATH": str(REPO),
    }
    args = [sys.executable, "-c", KILL_SCRIPT, str(data), rate_name, inflight_name, BANK]
    log = (tmp_path / "child.log").open("w")
    proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=log, stderr=log, start_new_session=True)
    out = data / "synth_openrouter"

    def active() -> int:
        try:
            return int(rest(server, "GET", f"/v2/concurrency_limits/{inflight_name}")["active_slots"])
        except httpx.HTTPStatusError:  # the run has not created its limits yet
            return 0

    # Kill once images are arriving *and* the server shows the run holding its whole pool: the pool
    # takes its slots in the background, so the count of images alone says nothing about the slots.
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and (len(list(out.glob("*.png"))) < 4 or active() < 3):
        assert proc.poll() is None, (tmp_path / "child.log").read_text()[-3000:]
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(30)
    before = len(list(out.glob("*.png")))
    assert 4 <= before < 24, (tmp_path / "child.log").read_text()[-3000:]
    assert active() == 3, "the dead run's leases should still hold the whole in-flight limit"

    # Resume on the very same limits: it can only finish once the server has repossessed the slots.
    started = time.monotonic()
    res = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    assert res.returncode == 0, res.stderr[-3000:]
    assert len(list(out.glob("*.png"))) == 24
    assert rest(server, "GET", f"/v2/concurrency_limits/{inflight_name}")["active_slots"] == 0
    print(f"resumed run finished {time.monotonic() - started:.0f} s after the kill")
