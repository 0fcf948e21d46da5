"""Pytest fixtures for PostgreSQL-backed Prefect (loaded by tests/conftest.py as a plugin).

- ``postgres``: one throw-away cluster per test session (tests/support/postgres.py), fsync off.
  Session-scoped because a cluster takes ~2 s to start and a database ~0.1 s to create.
- ``postgres_url``: a fresh, empty database in it for one test (``postgresql+asyncpg://...``).
- ``prefect_server_pg``: a started ``prefect server start`` on its own fresh database, shared by the
  session's tests (each names its own limits, so none sees another's slots; a start costs ~7 s);
  the lease repossessor checks every 2 s so a killed worker's slots come back quickly.
  It yields a :class:`~tests.support.prefect_server.ServerEnv`: pass it as ``env=`` to worker
  processes; ``.db_query(sql)`` reads the server's tables.

PostgreSQL missing is an error naming the package to install, not a skip (see postgres.py).

- ``session_prefect_server``: one started SQLite ``prefect server start`` (UI on, no auth) for the session:
  the flows, video, hub, rate, UI and review-pause tests. Each of them once started its own server or
  ``prefect_test_harness`` (~9 s a start on two busy cores); each names its own limits, pools and
  deployments (or asserts on its own runs only), so what one leaves on the server proves nothing for another.
- ``prefect_api_url``: the session server's API URL, set as the in-process client's ``PREFECT_API_URL`` for
  one test module only (``temporary_settings``): modules without it never see it.
- ``tiny_sdxl``: the tiny random SDXL of tests/support/tiny_sdxl.py, built once per session (training and the
  flows that train read it, none writes into it).
- ``review_template``: the review workspace after a real QC with dlib (tests/support/review_workspace.py),
  built once per session for the four review modules (domain, hub API, browser, paused flow); each test
  works on a ``clone`` of it, never on the template itself.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.support.postgres import PostgresCluster, postgres_cluster
from tests.support.prefect_server import ServerEnv, prefect_server

if TYPE_CHECKING:
    from tests.support.review_workspace import Template


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresCluster]:
    with postgres_cluster(fast=True) as cluster:
        yield cluster


@pytest.fixture
def postgres_url(postgres: PostgresCluster) -> str:
    return postgres.create_database()


@pytest.fixture(scope="session")
def prefect_server_pg(postgres: PostgresCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerEnv]:
    home = tmp_path_factory.mktemp("prefect-pg-home")
    with prefect_server(home, db=postgres, PREFECT_SERVER_SERVICES_REPOSSESSOR_LOOP_SECONDS="2") as env:
        yield env


@pytest.fixture(scope="session")
def review_template(tmp_path_factory: pytest.TempPathFactory) -> Template:
    """Session-scoped: the same QC of the same photos was built once per review module (~10 s each)."""
    from tests.support.review_workspace import build  # QC and dlib load only in sessions that use it

    return build(tmp_path_factory.mktemp("review"))


@pytest.fixture(scope="session")
def session_prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerEnv]:
    with prefect_server(tmp_path_factory.mktemp("prefect-session"), ui=True) as env:
        yield env


@pytest.fixture(scope="module")
def prefect_api_url(session_prefect_server: ServerEnv) -> Iterator[str]:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: session_prefect_server.api_url}):
        yield session_prefect_server.api_url


@pytest.fixture(scope="session")
def tiny_sdxl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("diffusers")
    from tests.support.tiny_sdxl import build_tiny_sdxl

    return build_tiny_sdxl(tmp_path_factory.mktemp("tiny") / "sdxl")
