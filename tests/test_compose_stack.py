"""The compose stack end to end: PostgreSQL, Prefect server, docker worker and hub from docker/compose.yaml.

Opt-in (it builds two images and starts five containers: minutes), as root:
``INFLUENCER_COMPOSE_TEST=1 .venv/bin/python -m pytest tests/test_compose_stack.py -s``
(``apt-get install docker.io debootstrap docker-compose``). Opted in, a missing Docker engine,
debootstrap or compose fails the test; it never skips.

What runs is docker/compose.yaml itself, under the project name ``influencer stack`` uses
(``-p ai-influencer``), with the fewest changes this machine forces, made by :func:`host_network_stack`
on a copy of the file:
- the engine has no bridge (``dockerd --bridge=none``) and containers may reach 127.0.0.1 only, so
  every service runs on the host network: published ports go (Docker refuses them with host
  networking), service names become 127.0.0.1 and each listener gets a free port;
- there is no registry: the images are built here (tests/support/docker.py): ``ai-influencer:test``
  for server, worker and hub, and a Debian PostgreSQL standing in for ``postgres:16-alpine``.
Volumes, secrets, health checks, dependencies, commands and the worker's own host networking are the
file's. The deployment is prefect.yaml's ``hybrid`` with the image set to ``ai-influencer:test`` and
its GPU device requests off (no GPU here); the job container's network is prefect-docker's choice.

The flow: ``up`` -> ``influencer stack init`` + ``set-key`` + ``prefect deploy`` against the stack's
server -> ``influencer trigger hybrid/hybrid --wait`` -> the worker's job container runs the hybrid flow
against the stub OpenRouter server -> artifacts on the server, images on the shared data volume (read
back through the hub), task results on that volume; a second run, in a new job container, takes the
paid storyboard and the images from there and pays for nothing -> ``influencer stack down
--remove-volumes``. The timings (build, up, runs, down) are printed and written to
``test-output/compose-stack-timings.json``.
"""

from __future__ import annotations

import copy
import json
import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from tests.conftest import REPO
from tests.support.assets import face
from tests.support.docker import (
    IMAGE,
    PG_IMAGE,
    DockerUnavailable,
    build_image,
    build_postgres_image,
    docker_engine,
    ensure_base,
    ensure_wheels,
    sh,
    timed,
)
from tests.support.openrouter_stub import StubOpenRouter
from tests.support.prefect_server import BIN, free_port

pytestmark = pytest.mark.skipif(
    os.environ.get("INFLUENCER_COMPOSE_TEST") != "1",
    reason="builds images and starts the compose stack (minutes): run with INFLUENCER_COMPOSE_TEST=1 "
    "(see docs/deploy.md)",
)

PROJECT = "ai-influencer"  # what `influencer stack` passes as -p
VOLUMES = ("ai-influencer-data", "ai-influencer-models", f"{PROJECT}_pgdata")
DATA = "/opt/ai-influencer/data"


def swap(text: str, old: str, new: str) -> str:
    """``text`` with ``old`` replaced; an error if compose.yaml no longer has it (the test must follow the file)."""
    if old not in text:
        raise AssertionError(f"docker/compose.yaml changed: {old!r} not in {text!r}; update host_network_stack")
    return text.replace(old, new)


def host_network_stack(base: dict, *, api_port: int, hub_port: int, pg_port: int) -> dict:
    """compose.yaml on the host network with local images (see the module docstring); nothing else changes."""
    stack = copy.deepcopy(base)
    services = stack["services"]
    for svc in services.values():
        svc.pop("build", None)  # the images are built beforehand; `up --no-build` too
        svc.pop("ports", None)  # Docker refuses published ports on the host network
        svc["network_mode"] = "host"
    pg, server, worker, hub = services["postgres"], services["prefect-server"], services["worker"], services["hub"]
    assert base["services"]["worker"].get("network_mode") == "host", "the worker is on the host network in the file"
    pg["image"] = PG_IMAGE
    pg["environment"]["PGPORT"] = str(pg_port)  # postgres and its pg_isready health check both read PGPORT
    for svc in (server, worker, hub):
        svc["image"] = IMAGE
    server["command"] = [{"0.0.0.0": "127.0.0.1", "4200": str(api_port)}.get(arg, arg) for arg in server["command"]]
    env = server["environment"]
    env["PREFECT_API_DATABASE_CONNECTION_URL"] = swap(
        env["PREFECT_API_DATABASE_CONNECTION_URL"], "@postgres:5432/", f"@127.0.0.1:{pg_port}/"
    )
    check = server["healthcheck"]["test"]
    check[-1] = swap(check[-1], "127.0.0.1:4200", f"127.0.0.1:{api_port}")  # ["CMD", "python", "-c", "<script>"]
    worker["environment"]["PREFECT_API_URL"] = swap(
        worker["environment"]["PREFECT_API_URL"], "127.0.0.1:4200", f"127.0.0.1:{api_port}"
    )
    hub["command"] = [{"0.0.0.0": "127.0.0.1", "8000": str(hub_port)}.get(arg, arg) for arg in hub["command"]]
    hub["environment"]["PREFECT_API_URL"] = swap(
        hub["environment"]["PREFECT_API_URL"], "prefect-server:4200", f"127.0.0.1:{api_port}"
    )
    return stack


def leftovers() -> list[str]:
    """Containers or volumes of an ``ai-influencer`` stack on this engine (the test would destroy them)."""
    found = sh("docker", "ps", "-aq", "--filter", f"label=com.docker.compose.project={PROJECT}").split()
    names = set(sh("docker", "volume", "ls", "-q").split())
    return found + [v for v in VOLUMES if v in names]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, float]]:
    """Engine, compose and both images; the seconds the builds took."""
    try:
        with docker_engine():
            from interfaces.cli.base import CliError
            from interfaces.cli.ops import compose_command

            try:
                compose_command()
            except CliError as exc:
                raise DockerUnavailable(f"{exc}: apt-get install docker-compose") from None
            if leftovers():
                pytest.fail(
                    f"an {PROJECT} stack already exists on this engine ({' '.join(leftovers())}); this test would "
                    "delete its volumes: run it on a machine without one (or `influencer stack down` first)",
                    pytrace=False,
                )
            seconds: dict[str, float] = {}
            work = tmp_path_factory.mktemp("compose-build")
            with timed(seconds, "base image (debootstrap)"):
                ensure_base(work)
            with timed(seconds, "wheels"):
                ensure_wheels()
            with timed(seconds, "project image"):
                build_image(work)
            with timed(seconds, "postgres image"):
                build_postgres_image(work)
            yield seconds
    except DockerUnavailable as exc:
        pytest.fail(f"INFLUENCER_COMPOSE_TEST=1 but {exc}", pytrace=False)


def chat_calls(stub: StubOpenRouter) -> tuple[int, int]:
    """(storyboard calls, image calls) the stub has answered so far (images: the Image API or chat)."""
    chats = [r for r in stub.requests if r.path.endswith("/chat/completions")]
    images = len(stub.image_requests())
    return len(chats) - sum("image" in (r.body or {}).get("modalities", []) for r in chats), images


def test_compose_stack_runs_hybrid_end_to_end(built: dict[str, float], stub: StubOpenRouter, tmp_path: Path) -> None:
    from interfaces.cli.ops import compose_command

    seconds = dict(built)
    api_port, hub_port, pg_port = free_port(), free_port(), free_port()
    auth = "admin:" + secrets.token_urlsafe(12)
    hub_token = secrets.token_urlsafe(16)
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "INFLUENCER_", "OPENROUTER_"))}
    compose_env = {
        **clean,
        "POSTGRES_PASSWORD": secrets.token_urlsafe(16),
        "PREFECT_AUTH": auth,
        "INFLUENCER_HUB_TOKEN": hub_token,
    }
    stack_file = tmp_path / "compose.yaml"
    base = yaml.safe_load((REPO / "docker" / "compose.yaml").read_text())
    stack_file.write_text(
        yaml.safe_dump(host_network_stack(base, api_port=api_port, hub_port=hub_port, pg_port=pg_port))
    )
    compose = compose_command()  # the CLI's own choice of `docker compose` / `docker-compose`, -p ai-influencer
    compose[compose.index("-f") + 1] = str(stack_file)
    client_env = {**clean, "PREFECT_API_URL": f"http://127.0.0.1:{api_port}/api", "PREFECT_API_AUTH_STRING": auth}
    user, _, password = auth.partition(":")
    api = httpx.Client(base_url=client_env["PREFECT_API_URL"], auth=(user, password), timeout=30)
    hub = httpx.Client(
        base_url=f"http://127.0.0.1:{hub_port}", headers={"Authorization": f"Bearer {hub_token}"}, timeout=30
    )
    influencer = str(BIN / "influencer")
    secret = "sk-or-compose-" + secrets.token_hex(12)
    stub.valid_keys = {secret}

    def logs() -> str:
        res = subprocess.run([*compose, "logs", "--no-color", "--tail", "60"], capture_output=True, text=True,
                             env=compose_env, timeout=120)  # fmt: skip
        return res.stdout[-6000:]

    def container(service: str) -> str:
        return sh(*compose, "ps", "-q", service, env=compose_env).strip()

    def trigger(params: dict) -> tuple[str, float]:
        t0 = time.time()
        res = subprocess.run(
            [influencer, "trigger", "hybrid/hybrid", "--params", json.dumps(params), "--wait"],
            capture_output=True, text=True, env=client_env, cwd=REPO, timeout=1200,
        )  # fmt: skip
        assert "flow run " in res.stdout, res.stdout + res.stderr
        run_id = res.stdout.split("flow run ", 1)[1].split()[0]
        assert res.returncode == 0, f"{res.stdout}\n{res.stderr}\n{flow_logs(run_id)}\n{logs()}"
        return run_id, t0

    def flow_logs(run_id: str) -> str:
        entries = api.post("/logs/filter", json={"limit": 200, "sort": "TIMESTAMP_DESC"}).json()
        return "\n".join(e["message"] for e in reversed(entries))[-5000:]

    def job_exit_codes(run_id: str, since: float) -> list[str]:
        """Exit codes of the job containers of a flow run (auto-removed, so from the engine's event log)."""
        out = sh("docker", "events", "--since", f"{since:.0f}", "--until", f"{time.time() + 1:.0f}",
                 "--filter", "type=container", "--filter", "event=die",
                 "--filter", f"label=io.prefect.flow-run-id={run_id}",
                 "--format", "{{.Actor.Attributes.exitCode}}")  # fmt: skip
        return out.split()

    try:
        with timed(seconds, "up"):
            try:
                sh(*compose, "up", "-d", "--no-build", env=compose_env, timeout=900)
            except AssertionError as exc:
                raise AssertionError(f"{exc}\n{logs()}") from None
            deadline = time.monotonic() + 180
            while True:
                try:
                    if hub.get("/api/runs").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, "the hub did not answer:\n" + logs()
                time.sleep(1)
        # Locked down: the API wants the stack's basic auth, the hub its token.
        assert httpx.get(client_env["PREFECT_API_URL"] + "/flows/filter", timeout=10).status_code == 401
        assert httpx.get(f"http://127.0.0.1:{hub_port}/api/runs", timeout=10).status_code == 401
        # The server's database is the stack's PostgreSQL (its migrations ran there).
        tables = sh(*compose, "exec", "-T", "postgres", "psql", "-U", "prefect", "-d", "prefect", "-Atc",
                    "select count(*) from pg_tables where tablename in ('flow_run', 'concurrency_limit_v2')",
                    env=compose_env)  # fmt: skip
        assert tables.strip() == "2", tables

        out = sh(influencer, "stack", "init", "--rate-per-s", "20", "--max-inflight", "6", env=client_env)
        # the worker may have created its pool already (`prefect worker start --pool` does): either is fine
        assert "work pool gpu-docker (docker)" in out and "limit openrouter-image-rate: created" in out, out
        assert api.get("/work_pools/gpu-docker").json()["type"] == "docker"
        out = sh(influencer, "set-key", "--base-url", stub.base_url, env=client_env, stdin=secret + "\n")
        assert secret not in out
        project = yaml.safe_load((REPO / "prefect.yaml").read_text())
        hybrid = next(d for d in project["deployments"] if d["name"] == "hybrid")
        job = hybrid["work_pool"]["job_variables"]
        assert job["auto_remove"] is True and f"ai-influencer-data:{DATA}" in job["volumes"]
        job.update(image=IMAGE, image_pull_policy="Never", container_create_kwargs={})  # no GPU here
        project["deployments"] = [hybrid]
        (tmp_path / "prefect.yaml").write_text(yaml.safe_dump(project))
        sh(str(BIN / "prefect"), "--no-prompt", "deploy", "--prefect-file", str(tmp_path / "prefect.yaml"),
           "--name", "hybrid", env=client_env)  # fmt: skip

        # The persona's photos go onto the shared data volume (through the hub's container, which mounts it).
        refs = tmp_path / "refs"
        refs.mkdir()
        for n in ("obama.jpg", "obama3.jpg"):
            shutil.copy(face(n), refs / n)
        sh("docker", "cp", f"{refs}/.", f"{container('hub')}:{DATA}/input_raw")

        params = {"params": {"generate": {"per_scene": 1}, "run_augment": False, "run_train": False,
                             "run_evaluate": False}}  # fmt: skip
        with timed(seconds, "first run"):
            run_id, t0 = trigger(params)
        assert job_exit_codes(run_id, t0) == ["0"], "the job container must run once and exit 0"
        storyboard_calls, image_calls = chat_calls(stub)
        assert storyboard_calls >= 1 and image_calls == 6, (storyboard_calls, image_calls)

        # What the run left on the server: the flow run, its artifacts.
        final = api.get(f"/flow_runs/{run_id}").json()
        assert final["state_type"] == "COMPLETED" and final["work_queue_name"] and final["parameters"] == params
        keys = {a["key"] for a in api.post("/artifacts/filter", json={"limit": 100}).json()}
        assert {"generate-cost", "qc-report"} <= keys, keys
        # The images are on the shared volume: the hub, another container, lists them.
        dataset = hub.get("/api/dataset", params={"folder": "synth_openrouter"}).json()
        assert len(dataset["images"]) == 6, dataset
        # Task results (the paid storyboard among them) are on the volume, not in the job container's home.
        results = sh("docker", "exec", container("hub"), "find", f"{DATA}/.prefect/results", "-type", "f").split()
        assert results, "no task result on the shared volume"

        # A second run in a new job container (as on another worker) reuses the storyboard and the images.
        with timed(seconds, "second run (resumed)"):
            second_id, t1 = trigger(params)
        assert second_id != run_id and job_exit_codes(second_id, t1) == ["0"]
        assert chat_calls(stub) == (storyboard_calls, image_calls), "the second run paid again"
        flows = api.post("/flow_runs/filter", json={"flow_runs": {"id": {"any_": [run_id, second_id]}}}).json()
        assert {f["state_type"] for f in flows} == {"COMPLETED"}

        # Secrets stay out of what the server keeps.
        kept = json.dumps([final, flows, api.get("/deployments/name/hybrid/hybrid").json()]) + flow_logs(second_id)
        assert secret not in kept and password not in kept and hub_token not in kept

        # Down with the CLI, on the real compose file (containers are found by the project label).
        with timed(seconds, "down --remove-volumes"):
            sh(influencer, "stack", "down", "--remove-volumes", env=compose_env, timeout=600)
        assert leftovers() == [], leftovers()
    finally:
        if leftovers():
            subprocess.run([*compose, "down", "--volumes", "--remove-orphans"], env=compose_env, capture_output=True,
                           timeout=600)  # fmt: skip
        api.close()
        hub.close()
        summary = {k: round(v, 1) for k, v in seconds.items()}
        print(f"\ncompose stack timings (s): {summary}")
        out_dir = REPO / "test-output"
        out_dir.mkdir(exist_ok=True)
        (out_dir / "compose-stack-timings.json").write_text(json.dumps(summary, indent=2) + "\n")
