"""The hybrid flow's review pause (issue 28 §4) on a real ``prefect server start`` with a process worker.

The hybrid-local deployment from prefect.yaml, three runs with ``review: true`` on three copies of a real
workspace after QC (dlib), one process worker running them side by side. Each pauses after QC with an input
form that links to the hub's review page. Then: one is resumed through the API with ``continue`` after the
user overrode two verdicts (it finishes with the overridden set in qc_passed/ and augment/), one with
``stop`` (ends StoppedAtReview before augment), one is left open past its timeout (ends ReviewTimedOut). The
overrides and the ``continue`` go through the hub's review API, as the review page sends them.
About a minute on two busy cores (deploy, three flow processes; the server and the QC-ed workspace are the session's).
"""

from __future__ import annotations

import contextlib
import subprocess
import time
import uuid
import warnings
from pathlib import Path

import httpx
import pytest

from ai_influencer.settings import Settings
from interfaces.hub.app import create_app
from tests.conftest import REPO
from tests.support.hub_server import serve
from tests.support.prefect_server import BIN, ServerEnv, stop_group
from tests.support.review_workspace import Template, clone

BANK = str(REPO / "prompt_bank" / "default.yaml")
HUB_PORT = "8765"  # the review page the form links to (no hub needs to run for the flow)
TIMEOUT_S = 10  # the timed-out run ends last: its timeout bounds the test's length
TOKEN = "review-flow-hub-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def server(session_prefect_server: ServerEnv) -> ServerEnv:
    """The session's started server (tests/support/fixtures.py): this test uses a work pool of its own."""
    return session_prefect_server


def rest(env: dict[str, str], method: str, path: str, body: dict | None = None) -> httpx.Response:
    """One API call; a 503 (SQLite busy under three flow processes) is retried, as Prefect's own client does."""
    for _ in range(40):
        r = httpx.request(method, env["PREFECT_API_URL"] + path, json=body, timeout=30)
        if r.status_code != 503:
            return r
        time.sleep(0.5)
    return r


def sh(args: list[str], env: dict[str, str]) -> str:
    res = subprocess.run(args, capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert res.returncode == 0, f"{args[:3]}:\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}"
    return res.stdout


def stop_worker(worker: subprocess.Popen[bytes], log: Path) -> None:
    """SIGTERM, as a service manager stops it; SIGKILL if it is still there a minute later.

    Prefect's worker stops itself by sending itself SIGINT; started from a suite that ignored SIGINT (run in
    the background of a shell) it never stopped, until tests/conftest.py gave SIGINT back its default. Should
    it hang again, the worker is not left running and the warning carries its log."""
    if stop_group(worker, grace_s=60):
        warnings.warn(f"prefect worker ignored SIGTERM for 60 s (killed): {log.read_text()[-1500:]}", stacklevel=2)


def flow_run_processes(worker_pid: int) -> list[str]:
    """The worker's flow-run processes still alive (``python -m prefect.engine``, in their own sessions)."""
    import psutil

    try:
        children = psutil.Process(worker_pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    found = []
    for child in children:
        with contextlib.suppress(psutil.Error):
            if child.status() != psutil.STATUS_ZOMBIE and "prefect.engine" in " ".join(child.cmdline()):
                found.append(f"{child.pid}: {' '.join(child.cmdline())[-120:]}")
    return found


def test_a_paused_review_continues_with_the_overrides_stops_or_times_out(
    server: dict[str, str], review_template: Template, tmp_path: Path
) -> None:
    env = {**server, "INFLUENCER_PROJECT_DIR": str(REPO)}
    pool = f"local-process-{uuid.uuid4().hex[:6]}"
    sh([str(BIN / "prefect"), "work-pool", "create", pool, "--type", "process"], env)
    sh([str(BIN / "prefect"), "--no-prompt", "deploy", "--name", "hybrid-local", "--pool", pool], env)
    deployment = rest(server, "GET", "/deployments/name/hybrid/hybrid-local").json()["id"]

    runs: dict[str, tuple[str, Path]] = {}
    for case in ("continue", "stop", "timeout"):
        ws = clone(review_template, tmp_path / case)
        params = {
            "paths": {"data_root": str(ws.data_root), "models_root": str(ws.models_root), "prompt_bank": BANK},
            **{f"run_{s}": False for s in ("prepare", "plan", "generate", "train", "evaluate")},
            "run_qc": True,
            "run_augment": True,
            "review": True,
            "review_timeout_s": TIMEOUT_S if case == "timeout" else 600,
            "qc": {"backend": "dlib"},
            "augment": {"num_aug": 0},
        }
        r = rest(server, "POST", f"/deployments/{deployment}/create_flow_run", {"parameters": {"params": params}})
        runs[case] = (r.raise_for_status().json()["id"], ws.data_root)

    worker_env = {
        **server,
        "INFLUENCER_HUB_PORT": HUB_PORT,
        "INFLUENCER_PROMPT_BANK": BANK,
        "PREFECT_WORKER_QUERY_SECONDS": "1",
    }
    log = (tmp_path / "worker.log").open("w")
    worker = subprocess.Popen(
        [str(BIN / "prefect"), "worker", "start", "--pool", pool],
        env=worker_env, cwd=tmp_path, stdout=log, stderr=log, start_new_session=True,
    )  # fmt: skip

    def state(case: str) -> dict:
        return rest(server, "GET", f"/flow_runs/{runs[case][0]}").json()["state"]

    def wait_for(cases: tuple[str, ...], types: set[str], limit_s: float) -> None:
        deadline = time.monotonic() + limit_s
        while not all(state(c)["type"] in types for c in cases):
            assert worker.poll() is None and time.monotonic() < deadline, (
                {c: state(c)["type"] for c in cases},
                (tmp_path / "worker.log").read_text()[-4000:],
            )
            time.sleep(1)

    try:
        started = time.monotonic()
        wait_for(("continue", "stop"), {"PAUSED"}, 300)
        print(f"paused after QC {time.monotonic() - started:.0f} s after the worker started")
        run_id, data = runs["continue"]
        form = rest(server, "GET", f"/flow_runs/{run_id}/input/paused-review-description").json()
        assert f"http://127.0.0.1:{HUB_PORT}/review" in form and "continue" in form and "stop" in form
        report = data / "qc_passed" / "qc_report.csv"
        assert "rose_leslie_1.jpg" not in {p.name for p in (data / "qc_passed").iterdir()} and report.is_file()
        assert not (data / "augment").exists()  # augment waits for the review

        bad = rest(server, "POST", f"/flow_runs/{run_id}/resume", {"run_input": {"action": "maybe"}})
        assert bad.status_code >= 400 or bad.json()["state"]["type"] != "RUNNING", bad.text
        assert state("continue")["type"] == "PAUSED"  # a wrong answer resumes nothing
        # The user reviews on the hub (its data root: this run's workspace): one rejected image accepted, one
        # accepted image rejected; then continues the run from the review page (the hub resumes it with input).
        hub_settings = Settings(data_root=data, hub_token=TOKEN, openrouter_api_key=None)
        with serve(create_app(hub_settings, prefect_api_url=server["PREFECT_API_URL"])) as hub:
            paused = httpx.get(f"{hub}/api/review/runs", headers=AUTH, timeout=30).json()
            assert paused["prefect"] is None and run_id in {r["id"] for r in paused["paused"]}
            for file, verdict in (("rose_leslie_1.jpg", "accepted"), ("obama_4_small_mirror.png", "rejected")):
                r = httpx.post(f"{hub}/api/review/verdict", json={"file": file, "verdict": verdict}, headers=AUTH)
                assert r.status_code == 200 and r.json()["item"]["overridden"], r.text
            resumed = httpx.post(
                f"{hub}/api/review/resume", json={"run_id": run_id, "action": "continue"}, headers=AUTH, timeout=60
            )
            assert resumed.status_code == 200 and resumed.json()["state"] == "RUNNING", resumed.text
            again = httpx.post(
                f"{hub}/api/review/resume", json={"run_id": run_id, "action": "stop"}, headers=AUTH, timeout=60
            )
            assert again.status_code == 409, again.text  # answered already: the run is no longer paused
        stop = rest(server, "POST", f"/flow_runs/{runs['stop'][0]}/resume", {"run_input": {"action": "stop"}})
        assert stop.status_code == 201 and stop.json()["state"]["type"] == "RUNNING", stop.text

        wait_for(("continue", "stop", "timeout"), {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}, 300)
        print(f"all three ended {time.monotonic() - started:.0f} s after the worker started")
        # A run's state is final before its process has exited (its last logs, the engine's teardown); each
        # run's process must then end by itself. Stopping the worker before that made it wait on them (once
        # more than 60 s on a loaded CI machine).
        deadline = time.monotonic() + 120
        while (left := flow_run_processes(worker.pid)) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not left, f"flow-run processes still running after their runs ended: {left}"
    finally:
        stop_worker(worker, tmp_path / "worker.log")
        log.close()

    done = state("continue")
    assert (done["type"], done["name"]) == ("COMPLETED", "Completed"), done
    passed = {p.name for p in (data / "qc_passed").iterdir() if p.suffix in (".jpg", ".png")}
    assert "rose_leslie_1.jpg" in passed and "obama_4_small_mirror.png" not in passed
    augmented = {p.name for p in (data / "augment").iterdir() if p.is_file()}
    assert augmented == passed  # augment used the overridden set (num_aug 0: the images themselves)
    rows = {line.split(",")[0]: line for line in report.read_text().splitlines()[1:]}
    assert ",accepted,rejected" in rows["rose_leslie_1.jpg"]  # override accepted, QC's own verdict rejected

    stopped = state("stop")
    assert (stopped["type"], stopped["name"]) == ("COMPLETED", "StoppedAtReview"), stopped
    assert not (runs["stop"][1] / "augment").exists()
    timed_out = state("timeout")
    assert (timed_out["type"], timed_out["name"]) == ("FAILED", "ReviewTimedOut"), timed_out
    assert f"review not answered within {TIMEOUT_S} s" in timed_out["message"]
    assert not (runs["timeout"][1] / "augment").exists() and (runs["timeout"][1] / "qc_passed").is_dir()
    # The timed-out run's process ends on its own exception: a summary as a Failed state's data made Prefect
    # log "Unexpected result for failed state" (a TypeError traceback) on the worker for every timeout.
    worker_log = (tmp_path / "worker.log").read_text()
    assert "Unexpected result for failed state" not in worker_log, worker_log[-3000:]
