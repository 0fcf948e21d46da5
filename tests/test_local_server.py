"""The default install's kept Prefect server (interfaces/local_server.py), driven the way users do it.

No PREFECT_API_URL: the first `influencer run` starts the workspace's server (detached, SQLite under
data/.prefect/), later runs reuse it, the hub shows their runs and starts new ones on it (its runner serves
hybrid/hybrid-local), a dead server is started again, `influencer server stop` stops it. A configured
PREFECT_API_URL wins. Every server started here is stopped by the end of its test (tests/conftest.py
stops any left under the test's folder).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from interfaces import local_server
from tests.conftest import REPO
from tests.support.prefect_server import free_port

INFLUENCER = str(Path(sys.executable).with_name("influencer"))
SKIP_ALL = [f"--skip={s}" for s in ("prepare", "plan", "generate", "qc", "augment", "train", "evaluate")]
TOKEN = "local-server-test-token"


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API_", "OPENROUTER_", "INFLUENCER_"))}
    env.update(
        PREFECT_HOME=str(tmp_path / "prefect-home"),  # the client's own home: no profile, no stored key
        INFLUENCER_DATA_ROOT=str(tmp_path / "data"),
        INFLUENCER_MODELS_ROOT=str(tmp_path / "models"),
        INFLUENCER_PROMPT_BANK=str(REPO / "prompt_bank" / "default.yaml"),
        PYTHONUNBUFFERED="1",
        **extra,
    )
    return env


def influencer(args: list[str], env: dict[str, str], cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([INFLUENCER, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def test_runs_share_one_kept_server_that_the_hub_shows_and_starts_runs_on(tmp_path: Path) -> None:
    env, data = _env(tmp_path), tmp_path / "data"
    status = influencer(["server", "status"], env, tmp_path)
    assert status.returncode == 1 and "not running" in status.stdout

    t0 = time.monotonic()
    first = influencer(["run", *SKIP_ALL], env, tmp_path)
    first_s = time.monotonic() - t0
    assert first.returncode == 0, first.stderr[-3000:]
    assert re.search(r"Prefect server: http://127\.0\.0\.1:\d+ \(started in [\d.]+ s;", first.stderr), first.stderr
    state = json.loads((data / ".prefect" / "server.json").read_text())
    assert set(state) >= {"url", "pid", "port"} and state["url"] == f"http://127.0.0.1:{state['port']}/api"
    assert (data / ".prefect" / "prefect.db").is_file() and any((data / "logs").glob("run-*.log"))
    t0 = time.monotonic()
    second = influencer(["run", *SKIP_ALL], env, tmp_path)
    second_s = time.monotonic() - t0
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"Prefect server: http://127.0.0.1:{state['port']} (running;" in second.stderr
    assert json.loads((data / ".prefect" / "server.json").read_text())["pid"] == state["pid"]
    print(f"influencer run (every stage skipped): first {first_s:.1f} s (server started), second {second_s:.1f} s")

    # The hub of the default install shows both runs, and its Start run runs on the same server.
    port = free_port()
    hub_env = {**env, "INFLUENCER_HUB_TOKEN": TOKEN, "INFLUENCER_HUB_PORT": str(port)}
    log = (tmp_path / "hub.log").open("w")
    hub = subprocess.Popen([INFLUENCER, "hub"], env=hub_env, cwd=tmp_path, stdout=log, stderr=log)
    url, auth = f"http://127.0.0.1:{port}", {"Authorization": f"Bearer {TOKEN}"}
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(url + "/openapi.json", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert hub.poll() is None and time.monotonic() < deadline, (tmp_path / "hub.log").read_text()[-3000:]
            time.sleep(0.3)
        runs = httpx.get(url + "/api/runs", headers=auth, timeout=30)
        assert runs.status_code == 200, runs.text
        assert [r["flow"] for r in runs.json()["runs"]] == ["hybrid", "hybrid"]
        assert all(r["state"] == "COMPLETED" for r in runs.json()["runs"])
        params = {"params": {f"run_{s}": False for s in ("prepare", "plan", "generate", "qc", "augment", "train")}}
        params["params"]["run_evaluate"] = False
        deadline = time.monotonic() + 60  # the runner registers hybrid/hybrid-local a few seconds after start
        while True:
            started = httpx.post(url + "/api/pipeline/run", json={"parameters": params}, headers=auth, timeout=30)
            if started.status_code != 404 or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert started.status_code == 200, started.text
        run_id = started.json()["id"]
        deadline = time.monotonic() + 180
        while True:
            listed = {r["id"]: r for r in httpx.get(url + "/api/runs", headers=auth, timeout=30).json()["runs"]}
            if listed[run_id]["state"] in ("COMPLETED", "FAILED", "CRASHED") or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert listed[run_id]["state"] == "COMPLETED", (data / ".prefect" / "runner.log").read_text()[-3000:]
    finally:
        hub.send_signal(signal.SIGINT)
        hub.wait(60)
        log.close()
    assert local_server.running(data) is not None  # the hub's end leaves the kept server running

    # A dead server is started again; `server stop` stops it; a configured PREFECT_API_URL wins.
    os.killpg(state["pid"], signal.SIGKILL)
    time.sleep(0.5)
    assert "not running" in influencer(["server", "status"], env, tmp_path).stdout
    again = influencer(["server", "start"], env, tmp_path)
    assert again.returncode == 0 and "started in" in again.stdout, again.stderr
    new_pid = json.loads((data / ".prefect" / "server.json").read_text())["pid"]
    assert new_pid != state["pid"]
    configured = influencer(["run", *SKIP_ALL], {**env, "PREFECT_API_URL": "http://127.0.0.1:9/api"}, tmp_path)
    assert configured.returncode == 1 and "API at http://127.0.0.1:9/api" in configured.stderr
    assert "Prefect server: http://127.0.0.1" not in configured.stderr  # the local one was not used
    stopped = influencer(["server", "stop"], env, tmp_path)
    assert f"stopped (pid {new_pid})" in stopped.stdout
    assert local_server.read_state(data) is None
    assert not Path(f"/proc/{new_pid}").exists()


def test_a_server_that_cannot_start_says_where_its_log_is(tmp_path: Path) -> None:
    """A port that is taken, a database it cannot open: one line naming the log, no server left behind."""
    data = tmp_path / "data"
    (data / ".prefect").mkdir(parents=True)
    (data / ".prefect" / "prefect.db").mkdir()  # a folder where the SQLite file must be
    try:
        local_server.start(data, timeout_s=120)
    except local_server.LocalServerError as exc:
        assert "did not start" in str(exc) and str(data / ".prefect" / "server.log") in str(exc)
    else:
        raise AssertionError("a server on an unusable database reported it started")
    assert local_server.read_state(data) is None and local_server.running(data) is None
