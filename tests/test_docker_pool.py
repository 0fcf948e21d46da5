"""A real Docker work pool run: our image, a docker worker, the hybrid deployment, triggered over the API.

Opt-in (it builds an image: minutes): ``INFLUENCER_DOCKER_TEST=1 .venv/bin/python -m pytest
tests/test_docker_pool.py`` as root on a machine where ``dockerd`` and ``debootstrap`` are installed
(``apt-get install docker.io debootstrap``); opted in, a missing one fails the test instead of
skipping it. The images come from tests/support/docker.py (shared with test_compose_stack.py): a
dockerd started here if none runs (``--bridge=none --iptables=false``; every container uses the host
network), a Debian bookworm base from debootstrap + ``docker import`` (no registry needed), and
docker/Dockerfile built on it from wheels built here. Then: a started Prefect server, ``prefect
work-pool create --type docker``, ``prefect deploy`` of prefect.yaml's ``hybrid`` deployment onto
that pool with GPU requests disabled, ``influencer trigger``, ``prefect worker start --run-once`` ->
a job container runs the flow against the stub OpenRouter server and writes the images into a
bind-mounted data folder.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from tests.conftest import REPO
from tests.support.assets import face
from tests.support.docker import DockerUnavailable, build_image, docker_engine, sh
from tests.support.openrouter_stub import StubOpenRouter
from tests.support.prefect_server import BIN, prefect_server

pytestmark = pytest.mark.skipif(
    os.environ.get("INFLUENCER_DOCKER_TEST") != "1",
    reason="builds a Docker image (minutes): run with INFLUENCER_DOCKER_TEST=1 (see docs/deploy.md)",
)


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Opted in, a missing engine or debootstrap fails the test: the opt-in asked for a real Docker run."""
    try:
        with docker_engine():
            yield build_image(tmp_path_factory.mktemp("docker-build"))
    except DockerUnavailable as exc:
        pytest.fail(f"INFLUENCER_DOCKER_TEST=1 but {exc}", pytrace=False)


def test_hybrid_runs_in_a_docker_job_container(image: str, stub: StubOpenRouter, tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "input_raw").mkdir(parents=True)
    for n in ("obama.jpg", "obama3.jpg"):
        shutil.copy(face(n), data / "input_raw" / n)
    for d in (tmp_path, data, data / "input_raw"):
        os.chmod(d, 0o777)  # the job container runs as the image's non-root user
    home = tmp_path / "prefect-home"
    home.mkdir(mode=0o777)
    with prefect_server(home) as env:
        pool = "docker-" + uuid.uuid4().hex[:6]
        sh(str(BIN / "prefect"), "work-pool", "create", pool, "--type", "docker", env=env)
        secret = "sk-or-docker-" + uuid.uuid4().hex
        stub.valid_keys = {secret}
        sh(str(BIN / "influencer"), "set-key", "--base-url", stub.base_url, env=env, stdin=secret + "\n")
        job = {
            "image": image,
            "image_pull_policy": "Never",
            "network_mode": "host",  # this machine allows host networking only
            "volumes": [f"{data}:/opt/ai-influencer/data"],
            "container_create_kwargs": {},  # GPU device requests off: no GPU here
            "auto_remove": False,
        }
        # prefect.yaml's own `hybrid` deployment, pointed at this pool with the test's job variables
        project = yaml.safe_load((REPO / "prefect.yaml").read_text())
        hybrid = next(d for d in project["deployments"] if d["name"] == "hybrid")
        hybrid["work_pool"] = {"name": pool, "job_variables": {**hybrid["work_pool"]["job_variables"], **job}}
        project["deployments"] = [hybrid]
        (tmp_path / "prefect.yaml").write_text(yaml.safe_dump(project))
        sh(str(BIN / "prefect"), "--no-prompt", "deploy", "--prefect-file", str(tmp_path / "prefect.yaml"),
           "--name", "hybrid", env=env)  # fmt: skip
        dep = httpx.get(env["PREFECT_API_URL"] + "/deployments/name/hybrid/hybrid").json()
        assert dep["work_pool_name"] == pool and dep["job_variables"]["network_mode"] == "host"

        params = {"params": {"generate": {"per_scene": 1}, "run_augment": False, "run_train": False,
                             "run_evaluate": False}}  # fmt: skip
        out = sh(str(BIN / "influencer"), "trigger", "hybrid/hybrid", "--params", json.dumps(params), env=env)
        run_id = out.split("flow run ", 1)[1].split()[0]
        worker = subprocess.run(
            [str(BIN / "prefect"), "worker", "start", "--pool", pool, "--run-once"],
            env={**env, "PREFECT_LOGGING_LEVEL": "INFO"},
            capture_output=True,
            text=True,
            timeout=900,
        )
        # The job container (kept: auto_remove off) ran once and exited 0; then it goes.
        job = sh("docker", "ps", "-aq", "--filter", f"label=io.prefect.flow-run-id={run_id}").split()
        exit_codes = [sh("docker", "inspect", "--format", "{{.State.ExitCode}}", c).strip() for c in job]
        for c in job:
            subprocess.run(["docker", "rm", "-f", c], capture_output=True, timeout=120)
        final = httpx.get(env["PREFECT_API_URL"] + f"/flow_runs/{run_id}").json()
        logs = httpx.post(
            env["PREFECT_API_URL"] + "/logs/filter", json={"logs": {"flow_run_id": {"any_": [run_id]}}, "limit": 200}
        ).json()
        detail = "\n".join(entry["message"] for entry in logs)[-4000:] + worker.stdout[-3000:] + worker.stderr[-3000:]
        assert final["state_type"] == "COMPLETED", detail
        assert exit_codes == ["0"], f"job containers {job}: exit codes {exit_codes}\n{detail}"
        assert secret not in json.dumps(dep) and secret not in json.dumps(final) and secret not in detail
    manifest = json.loads((data / "synth_openrouter" / "manifest.json").read_text())
    assert manifest["count"] == 6 and len(list((data / "synth_openrouter").glob("*.png"))) == 6
    assert (data / "qc_passed" / "qc_report.csv").is_file()
