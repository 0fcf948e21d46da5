"""Pytest fixtures for PostgreSQL-backed Prefect (loaded by tests/conftest.py as a plugin).

- ``postgres``: one throw-away cluster per test session (tests/support/postgres.py), fsync off.
  Session-scoped because a cluster takes ~2 s to start and a database ~0.1 s to create.
- ``postgres_url``: a fresh, empty database in it for one test (``postgresql+asyncpg://...``).
- ``prefect_server_pg``: a started ``prefect server start`` on its own fresh database, for one test
  module; the lease repossessor checks every 2 s so a killed worker's slots come back quickly.
  It yields a :class:`~tests.support.prefect_server.ServerEnv`: pass it as ``env=`` to worker
  processes; ``.db_query(sql)`` reads the server's tables.

PostgreSQL missing is an error naming the package to install, not a skip (see postgres.py).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.postgres import PostgresCluster, postgres_cluster
from tests.support.prefect_server import ServerEnv, prefect_server


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresCluster]:
    with postgres_cluster(fast=True) as cluster:
        yield cluster


@pytest.fixture
def postgres_url(postgres: PostgresCluster) -> str:
    return postgres.create_database()


@pytest.fixture(scope="module")
def prefect_server_pg(postgres: PostgresCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerEnv]:
    home = tmp_path_factory.mktemp("prefect-pg-home")
    with prefect_server(home, db=postgres, PREFECT_SERVER_SERVICES_REPOSSESSOR_LOOP_SECONDS="2") as env:
        yield env
