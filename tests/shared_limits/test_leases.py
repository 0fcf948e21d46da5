"""A killed run's slots come back on Prefect's embedded server, which has no lease repossessor.

``influencer run`` keeps concurrency leases on disk (``durable_local_leases``) and the run's own
background threads free the expired ones (``reclaim_expired_leases``). Those threads once ran outside
the flow's context, saw Prefect's default (in-memory) lease storage, and freed nothing: a run resumed
after a SIGKILL waited for the dead run's slots until its timeout (seen in CI). The end-to-end version
is ``test_cli.py::test_main_job_killed_mid_generation_resumes_on_the_embedded_server``; this one
checks the threads directly and in seconds.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent(
    """
    import json, logging, time
    from datetime import datetime, timedelta, timezone

    from prefect.client.orchestration import get_client
    from prefect.settings import get_current_settings

    from shared_limits.limits import InflightPool, RunSeat, durable_local_leases, ensure_limit
    from shared_limits.prefect_compat import start_embedded_server

    said = []

    class Keep(logging.Handler):
        def emit(self, record):
            said.append(record.getMessage())

    log = logging.getLogger("leases-test")
    log.addHandler(Keep())
    log.setLevel(logging.INFO)

    def take(client, name):
        answer = client.increment_concurrency_slots_with_lease(
            names=[name], slots=1, mode="concurrency", lease_duration=60
        )
        return answer.json()["lease_id"]

    def active(client, name):
        return client.read_global_concurrency_limit_by_name(name).active_slots

    with durable_local_leases():
        start_embedded_server(120)
        ensure_limit("t-rate", 8, 4.0)
        ensure_limit("t-inflight", 3)
        ensure_limit("t-rate-seat-0", 1)
        with get_client(sync_client=True) as client:
            # The dead run: its seat and every in-flight slot, under leases nobody will renew.
            dead = [take(client, "t-rate-seat-0")] + [take(client, "t-inflight") for _ in range(3)]
            seat = RunSeat("t-rate", lease_s=60, logger=log)
            with seat, InflightPool("t-inflight", seat, 3, lease_s=60) as pool:
                pool.demand = 2
                joined = {"runs": seat.runs, "seat": seat.index}
                time.sleep(1.0)
                before = {"held": pool.held}
                # Fast-forward the dead run's leases to expired, as 60 s without renewal would leave
                # them (the lease files are the storage's truth, the index its accelerator).
                leases = get_current_settings().home / "concurrency_leases"
                past = (datetime.now(timezone.utc) - timedelta(seconds=1)).isoformat()
                index = json.loads((leases / "expirations.json").read_text())
                for lease in dead:
                    path = leases / f"{lease}.json"
                    data = json.loads(path.read_text())
                    data["expiration"] = index[str(lease)] = past
                    path.write_text(json.dumps(data))
                (leases / "expirations.json").write_text(json.dumps(index))
                deadline = time.monotonic() + 20
                while time.monotonic() < deadline and (pool.held < 2 or seat.runs > 1):
                    time.sleep(0.2)
                after = {
                    "held": pool.held,
                    "runs": seat.runs,
                    "inflight_active": active(client, "t-inflight"),
                    "dead_seat_active": active(client, "t-rate-seat-0"),
                }
    print("RESULT " + json.dumps({"joined": joined, "before": before, "after": after, "said": said}))
    """
)


def test_background_threads_free_a_killed_runs_expired_leases_on_the_embedded_server(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API_")}
    env.update(PREFECT_HOME=str(tmp_path / "prefect-home"), PYTHONPATH=str(REPO))
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=240
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-2000:] + proc.stderr[-4000:]
    result = json.loads(lines[-1][len("RESULT ") :])
    # While the dead run's leases are live, the new run takes the next seat and gets no in-flight slot.
    assert result["joined"] == {"runs": 2, "seat": 1}
    assert result["before"] == {"held": 0}
    # Once they expire, its own background threads free them: the dead seat is gone (the whole rate is
    # this run's again) and it holds the slots it needs, the only ones taken on the server.
    assert result["after"] == {"held": 2, "runs": 1, "inflight_active": 2, "dead_seat_active": 0}, result
    assert any("freed slots whose lease expired" in line and "t-inflight: 3" in line for line in result["said"]), result


HOLDER = textwrap.dedent(
    """
    import json, logging, sys, time

    import shared_limits.limits
    from shared_limits.limits import InflightPool, RunSeat, ensure_limit

    if len(sys.argv) > 2:  # how often this holder looks for dead holders while it shares
        shared_limits.limits.RECLAIM_EVERY_S = float(sys.argv[2])

    said = []

    class Keep(logging.Handler):
        def emit(self, record):
            said.append(record.getMessage())

    log = logging.getLogger("holder")
    log.addHandler(Keep())
    log.setLevel(logging.INFO)
    ensure_limit("h-rate", 8, 4.0)
    ensure_limit("h-inflight", 4)
    seat = RunSeat("h-rate", lease_s=60, logger=log)
    with seat, InflightPool("h-inflight", seat, 4, lease_s=60) as pool:
        pool.demand = int(sys.argv[1])
        while True:
            print(json.dumps({"held": pool.held, "runs": seat.runs, "seat": seat.index, "said": said}), flush=True)
            time.sleep(0.2)
    """
)


class Holder:
    """A run's slot-holding part (seat + in-flight pool) in its own process, reporting what it holds."""

    def __init__(self, env: dict[str, str], folder: Path, name: str, demand: int, reclaim_every: str = "") -> None:
        self.out = folder / f"{name}.out"
        self.err = (folder / f"{name}.err").open("w")
        argv = [sys.executable, "-c", HOLDER, str(demand)] + ([reclaim_every] if reclaim_every else [])
        self.proc = subprocess.Popen(argv, env=env, cwd=folder, stdout=self.out.open("w"), stderr=self.err)

    def state(self) -> dict:
        lines = [line for line in self.out.read_text().splitlines() if line.endswith("}")]
        return json.loads(lines[-1]) if lines else {"held": 0, "runs": 0, "seat": None, "said": []}

    def wait_for(self, done: Callable[[dict], bool], within: float) -> dict:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline and not done(self.state()):
            assert self.proc.poll() is None, self.err.name + ":\n" + Path(self.err.name).read_text()[-3000:]
            time.sleep(0.2)
        return self.state()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(30)
        self.err.close()


def test_a_restarted_run_frees_its_killed_predecessors_slots_at_once_and_never_a_live_runs(tmp_path: Path) -> None:
    """Issue 23: a run killed with SIGKILL kept its seat and in-flight slots for Prefect's minimum lease
    (60 s), and its restart waited for them. Every holder now records its leases with its identity; a
    new run frees those of a dead holder on this host at once, and leaves a live run's alone."""
    from tests.support.prefect_server import prefect_server

    (tmp_path / "home").mkdir()
    with prefect_server(tmp_path / "home") as env:
        env = {**env, "PYTHONPATH": str(REPO)}
        holders: list[Holder] = []
        try:
            # The live run does not look for dead holders here (it would, every few seconds, while it
            # shares: the next test), so the freeing below is the restart's own.
            live = Holder(env, tmp_path, "live", 2, reclaim_every="3600")
            holders.append(live)
            assert live.wait_for(lambda s: s["held"] == 2, 120)["held"] == 2
            dead = Holder(env, tmp_path, "dead", 2)
            holders.append(dead)
            # The limit (4) is full: the live run and the one about to die hold 2 each, on seats 0 and 1.
            assert dead.wait_for(lambda s: s["held"] == 2, 120) | {"said": []} == {
                "held": 2, "runs": 2, "seat": 1, "said": []
            }  # fmt: skip
            dead.proc.send_signal(signal.SIGKILL)
            dead.proc.wait(30)
            restart = Holder(env, tmp_path, "restart", 4)
            holders.append(restart)
            # Well inside the dead run's 60 s leases (the server's repossessor would free them only then).
            after = restart.wait_for(lambda s: s["held"] == 2, 30)
            assert after["held"] == 2 and after["runs"] == 2 and after["seat"] == 1, after
            freed = [m for m in after["said"] if m.startswith("freed the slots of a killed run")]
            assert freed == [f"freed the slots of a killed run (pid {dead.proc.pid} on this host, workspace ?): "
                             "h-inflight: 2, h-rate-seat-1: 1"], after["said"]  # fmt: skip
            time.sleep(1.0)  # the live run keeps its two slots: the limit has no room for more
            assert live.state()["held"] == 2 and restart.state()["held"] == 2
        finally:
            for holder in holders:
                holder.stop()


def test_a_live_run_sharing_with_a_run_killed_on_this_host_frees_its_slots_before_they_expire(tmp_path: Path) -> None:
    """A run killed while another shares the limits halved the live run's share until its leases
    expired (60 s, or never on a server without a repossessor). The live run's periodic look for
    expired leases now also frees those of a holder on this host whose process is gone."""
    from tests.support.prefect_server import prefect_server

    (tmp_path / "home").mkdir()
    with prefect_server(tmp_path / "home") as env:
        env = {**env, "PYTHONPATH": str(REPO)}
        holders: list[Holder] = []
        try:
            live = Holder(env, tmp_path, "live", 4)
            holders.append(live)
            assert live.wait_for(lambda s: s["held"] == 4, 120)["held"] == 4
            dead = Holder(env, tmp_path, "dead", 4)
            holders.append(dead)
            # Two runs: the live one gives back half of the limit (4) to the newcomer.
            assert dead.wait_for(lambda s: s["held"] == 2, 120)["runs"] == 2
            assert live.wait_for(lambda s: s["held"] == 2, 30)["held"] == 2
            dead.proc.send_signal(signal.SIGKILL)
            dead.proc.wait(30)
            # Well inside the dead run's 60 s leases: the live run is alone again and takes the whole limit.
            after = live.wait_for(lambda s: s["held"] == 4 and s["runs"] == 1, 30)
            assert after["held"] == 4 and after["runs"] == 1, after
            freed = [m for m in after["said"] if m.startswith("freed the slots of a killed run")]
            assert freed == [f"freed the slots of a killed run (pid {dead.proc.pid} on this host, workspace ?): "
                             "h-inflight: 2, h-rate-seat-1: 1"], after["said"]  # fmt: skip
        finally:
            for holder in holders:
                holder.stop()
