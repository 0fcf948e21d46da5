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
import subprocess
import sys
import textwrap
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
