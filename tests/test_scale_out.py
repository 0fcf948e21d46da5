"""Several generate runs in separate worker processes on one Prefect server backed by PostgreSQL,
sharing one provider limit: the stub never sees more than the limit in any second, every run
progresses (a small run finishes during a long one), and a killed worker's seat and slots come back
within the lease."""

from __future__ import annotations

import os
import signal
import time
import uuid
from pathlib import Path

import httpx
import pytest
import yaml

from flows.params import GenerateParams, Limits, Paths
from tests.conftest import REPO, TEST_KEY
from tests.support.flow_process import spawn_generate, wait_result
from tests.support.openrouter_stub import StubOpenRouter
from tests.support.prefect_server import ServerEnv

BANK = REPO / "prompt_bank" / "default.yaml"
IMAGE_CALLS = ("/images",)


@pytest.fixture(scope="module")
def server(prefect_server_pg: ServerEnv) -> ServerEnv:
    """The session's server on PostgreSQL (the repossessor frees expired leases every 2 s)."""
    return prefect_server_pg


class Run:
    """One generate flow run in its own process (a separate worker)."""

    def __init__(self, env: dict[str, str], data: Path, per_scene: int, seed: int, limits: dict, bank: Path = BANK):
        self.data = data
        self.log = data.parent / f"{data.name}.log"
        data.mkdir(parents=True, exist_ok=True)
        lim = Limits(
            rate_limit_name=limits["rate"], rate_per_s=limits["rate_per_s"],
            inflight_limit_name=limits["inflight"], max_inflight=limits["inflight_n"],
        )  # fmt: skip
        params = GenerateParams(per_scene=per_scene, seed=seed, limits=lim, use_references=False)
        paths = Paths(data_root=str(data), prompt_bank=str(bank), models_root=str(data.parent / "models"))
        self.proc = spawn_generate(params, paths, env, self.log)

    @property
    def images(self) -> int:
        return len(list((self.data / "synth_openrouter").glob("*.png")))

    def wait(self, timeout: float = 300) -> dict:
        return wait_result(self.proc, self.log, timeout)


def limits_for(rate: float, inflight: int) -> dict:
    tag = uuid.uuid4().hex[:8]
    return {"rate": f"rate-{tag}", "rate_per_s": rate, "inflight": f"inflight-{tag}", "inflight_n": inflight}


def run_env(server: dict[str, str], stub: StubOpenRouter) -> dict[str, str]:
    return {
        **server,
        "OPENROUTER_API_KEY": TEST_KEY,
        "OPENROUTER_BASE_URL": stub.base_url,
        "PREFECT_LOGGING_LEVEL": "INFO",
    }


def api(server: dict[str, str], path: str, body: dict | None = None) -> list | dict:
    with httpx.Client(base_url=server["PREFECT_API_URL"], timeout=30) as c:
        r = c.post(path, json=body) if body is not None else c.get(path)
        r.raise_for_status()
        return r.json()


def held(server: dict[str, str], prefix: str) -> dict[str, int]:
    found = api(server, "/v2/concurrency_limits/filter", {"limit": 200})
    return {g["name"]: int(g["active_slots"]) for g in found if g["name"].startswith(prefix)}


@pytest.mark.parametrize("workers", [2, 4])
def test_concurrent_runs_never_exceed_the_shared_limit(
    server: dict[str, str], stub: StubOpenRouter, tmp_path: Path, workers: int
) -> None:
    stub.latency, stub.latency_paths = 0.4, IMAGE_CALLS
    lim = limits_for(rate=6, inflight=8)
    env = run_env(server, stub)
    runs = [Run(env, tmp_path / f"w{i}" / "data", per_scene=3, seed=i, limits=lim) for i in range(workers)]
    summaries = [r.wait() for r in runs]
    assert all(s["generated"] == 18 and s["failed"] == 0 for s in summaries)
    assert stub.max_requests_in_window(1.0) <= 6, "the provider saw more than the shared limit in one second"
    assert not any(r.status == 429 for r in stub.requests)
    # every run ended: no seat and no in-flight slot is left taken
    assert all(v == 0 for v in held(server, lim["inflight"]).values())
    assert all(v == 0 for v in held(server, lim["rate"] + "-seat-").values())


def one_scene_bank(tmp_path: Path) -> Path:
    bank = yaml.safe_load(BANK.read_text())
    bank["scenes"] = bank["scenes"][:1]
    path = tmp_path / "one_scene.yaml"
    path.write_text(yaml.safe_dump(bank))
    return path


def test_a_one_image_run_finishes_during_a_long_run(
    server: dict[str, str], stub: StubOpenRouter, tmp_path: Path
) -> None:
    """Before run seats, the long run held every in-flight slot until its end and the small one waited."""
    stub.latency, stub.latency_paths = 0.5, IMAGE_CALLS
    lim = limits_for(rate=4, inflight=4)
    env = run_env(server, stub)
    long = Run(env, tmp_path / "long" / "data", per_scene=10, seed=1, limits=lim)  # 60 images, >= 15 s
    deadline = time.monotonic() + 120
    while long.images < 6 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert long.images >= 6, long.log.read_text()[-3000:]
    small = Run(env, tmp_path / "small" / "data", per_scene=1, seed=2, limits=lim, bank=one_scene_bank(tmp_path))
    summary = small.wait()
    long_done_then = long.images
    assert summary["generated"] == 1
    assert long.proc.poll() is None and long_done_then < 60, "the small run finished while the long one ran"
    assert "2 runs share" in small.log.read_text()
    assert long.wait()["generated"] == 60
    assert stub.max_requests_in_window(1.0) <= 4


def test_a_killed_worker_frees_its_share_within_the_lease(
    server: dict[str, str], stub: StubOpenRouter, tmp_path: Path
) -> None:
    stub.latency, stub.latency_paths = 0.5, IMAGE_CALLS
    lim = limits_for(rate=4, inflight=4)
    env = run_env(server, stub)
    doomed = Run(env, tmp_path / "doomed" / "data", per_scene=20, seed=3, limits=lim)
    survivor = Run(env, tmp_path / "survivor" / "data", per_scene=8, seed=4, limits=lim)
    deadline = time.monotonic() + 120
    while (doomed.images < 3 or survivor.images < 3) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert held(server, lim["inflight"])[lim["inflight"]] >= 2, "both runs hold in-flight slots"
    os.killpg(doomed.proc.pid, signal.SIGKILL)  # a worker host dies: no cleanup, its leases just stop renewing
    doomed.proc.wait(30)
    assert survivor.wait(300)["generated"] == 48, "the other run kept going"
    # The dead run's seat and slots come back once its leases (60 s) expire and the repossessor runs.
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        taken = {**held(server, lim["inflight"]), **held(server, lim["rate"] + "-seat-")}
        if not any(taken.values()):
            break
        time.sleep(1)
    assert not any(taken.values()), taken
    # and a new run gets the whole limit again
    again = Run(env, tmp_path / "again" / "data", per_scene=1, seed=5, limits=lim)
    assert again.wait()["generated"] == 6
    assert "runs share" not in again.log.read_text()
