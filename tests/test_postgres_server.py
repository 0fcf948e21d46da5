"""Prefect on PostgreSQL: the scale-out server setup, on a real throw-away cluster.

A started ``prefect server start`` whose database is PostgreSQL 15 (tests/support/postgres.py); the
real ``generate_flow`` runs in a separate process (a worker, as on another host) against the stub
OpenRouter server. The global concurrency limits that every worker shares are rows in PostgreSQL,
read back here with SQL, not only through the API.
"""

from __future__ import annotations

import os
import pwd
import time
import uuid
from pathlib import Path

import httpx
import pytest

from flows.params import GenerateParams, Limits, Paths
from tests.conftest import REPO, TEST_KEY
from tests.support.flow_process import spawn_generate, wait_result
from tests.support.openrouter_stub import StubOpenRouter
from tests.support.postgres import PostgresCluster, postgres_cluster
from tests.support.prefect_server import ServerEnv

BANK = str(REPO / "prompt_bank" / "default.yaml")


def test_cluster_is_loopback_only_password_protected_unprivileged_and_removed() -> None:
    with postgres_cluster(fast=True) as pg:
        assert pg.query("show listen_addresses") == [("127.0.0.1",)]
        assert pg.url == f"postgresql+asyncpg://prefect:{pg.password}@127.0.0.1:{pg.port}/prefect"
        postmaster = int((pg.data_dir / "postmaster.pid").read_text().split()[0])
        owner = os.stat(f"/proc/{postmaster}").st_uid
        if os.geteuid() == 0:
            assert owner != 0 and pwd.getpwuid(owner).pw_name in (
                "postgres",
                "nobody",
                os.environ.get("INFLUENCER_PG_USER"),
            )
        assert oct(pg.root.stat().st_mode & 0o777) == "0o700"
        wrong = PostgresCluster(pg.bindir, pg.root, pg.port, pg.user, "not-the-password", pg.database)
        with pytest.raises(RuntimeError, match="password authentication failed"):
            wrong.query("select 1")
        root, port = pg.root, pg.port
    assert not root.exists()
    with pytest.raises(RuntimeError, match=r"Connection refused|could not connect"):
        PostgresCluster(pg.bindir, Path("/nonexistent"), port, pg.user, pg.password, pg.database).query("select 1")


def test_generate_flow_in_a_worker_process_on_a_postgres_backed_server(
    prefect_server_pg: ServerEnv, stub: StubOpenRouter, tmp_path: Path
) -> None:
    env = prefect_server_pg
    assert env.database_url.startswith("postgresql+asyncpg://prefect:") and "@127.0.0.1:" in env.database_url
    tables = {row[0] for row in env.db_query("select tablename from pg_tables where schemaname = 'public'")}
    assert {"flow_run", "task_run", "concurrency_limit_v2", "alembic_version"} <= tables
    assert not list(env.home.glob("*.db")), "a PostgreSQL-backed server must not write a SQLite database"

    stub.latency = 0.4  # long enough to see the in-flight slots taken while requests are out
    tag = uuid.uuid4().hex[:6]
    limits = Limits(rate_limit_name=f"pg-rate-{tag}", rate_per_s=8, inflight_limit_name=f"pg-in-{tag}", max_inflight=3)
    paths = Paths(data_root=str(tmp_path / "data"), prompt_bank=BANK, models_root=str(tmp_path / "models"))
    worker_env = {
        **env,
        "OPENROUTER_API_KEY": TEST_KEY,
        "OPENROUTER_BASE_URL": stub.base_url,
        "INFLUENCER_OPENROUTER_MAX_RETRIES": "2",
    }
    proc = spawn_generate(GenerateParams(per_scene=1, use_references=False, limits=limits), paths, worker_env,
                          tmp_path / "worker.log")  # fmt: skip
    # While the worker runs, its in-flight slots are taken in the PostgreSQL row every worker shares.
    seen: set[int] = set()
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        rows = env.db_query(
            f"select active_slots from concurrency_limit_v2 where name = '{limits.inflight_limit_name}'"
        )
        seen.update(int(r[0]) for r in rows)
        time.sleep(0.05)
    result = wait_result(proc, tmp_path / "worker.log")

    images = sorted((tmp_path / "data" / "synth_openrouter").glob("*.png"))
    assert result["generated"] == len(images) == 6 and result["failed"] == 0
    assert max(seen, default=0) >= 1 and max(seen) <= limits.max_inflight, seen
    rows = {
        r[0]: r[1:]
        for r in env.db_query(
            'select name, "limit", slot_decay_per_second, active_slots, active from concurrency_limit_v2 '
            f"where name in ('{limits.rate_limit_name}', '{limits.inflight_limit_name}')"
        )
    }
    assert float(rows[limits.rate_limit_name][1]) == pytest.approx(8.0), rows  # the rate limit: slot decay 8/s
    assert rows[limits.inflight_limit_name][:2] == ("3", "0") and rows[limits.inflight_limit_name][3] == "t", rows
    assert rows[limits.inflight_limit_name][2] == "0", "the finished worker must give its in-flight slots back"
    # The same rows through the API the workers use.
    api = httpx.get(f"{env.api_url}/v2/concurrency_limits/{limits.inflight_limit_name}", timeout=10).json()
    assert api["limit"] == 3 and api["active_slots"] == 0
    # The flow run, its task runs and its state are PostgreSQL rows too. This run's only: the server is the
    # session's (tests/support/fixtures.py), the scale-out tests run the same flow on it.
    runs = env.db_query(
        "select fr.state_type, count(tr.id) from flow_run fr join flow f on f.id = fr.flow_id "
        "left join task_run tr on tr.flow_run_id = fr.id where f.name = 'generate' "
        f"and fr.parameters::text like '%{limits.inflight_limit_name}%' group by fr.id, fr.state_type"
    )
    assert len(runs) == 1 and runs[0][0] == "COMPLETED" and int(runs[0][1]) >= 6, runs
    assert len(stub.image_requests()) == 6


def test_sqlite_stays_the_default_and_bad_db_values_are_named(tmp_path: Path) -> None:
    from tests.support.prefect_server import database_url

    assert database_url("sqlite", tmp_path) == f"sqlite+aiosqlite:///{tmp_path}/prefect.db"
    with pytest.raises(ValueError, match="'mysql://x'"):
        database_url("mysql://x", tmp_path)
