from __future__ import annotations

import os

# Before any task module is imported: short Prefect task retry delays, no server telemetry.
os.environ.setdefault("INFLUENCER_TASK_RETRY_DELAY_S", "0.05")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

# A suite started in the background of a non-interactive shell (`.ci/run &`, some CI runners) ignores SIGINT
# by POSIX rule, and every child inherits that: `influencer` rightly keeps an ignored Ctrl-C ignored, and
# Prefect's worker, which stops itself with a SIGINT, never stopped (a test waited 60 s, then killed it).
# The tests give their children what a terminal or a service manager gives them: SIGINT at its default.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

from ai_influencer.openrouter import OpenRouterClient
from tests.support.openrouter_stub import StubOpenRouter

# postgres, postgres_url, prefect_server_pg: PostgreSQL-backed Prefect (see tests/support/fixtures.py)
pytest_plugins = ["tests.support.fixtures"]

TEST_KEY = "sk-or-test-key"
REPO = Path(__file__).resolve().parents[1]


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """``-n auto`` (pyproject's addopts): two workers, one where only one CPU is ours.

    On the project's 2-vCPU machine one pytest process left half the CPU idle (most tests wait on a
    started server or a child process), so two workers took the suite from 23 to under 16 minutes. More
    than two is untested against the tests that kill a run mid-generation or measure a send rate; ask for
    it with ``-n N``."""
    return max(1, min(2, len(os.sched_getaffinity(0))))


def stop_local_servers(root: Path) -> list[int]:
    """Stop every local Prefect server (``interfaces.local_server``) whose workspace lies under ``root``.

    ``influencer run`` and ``influencer hub`` keep a detached server per workspace by design; a test that ran
    them (on a workspace under its temporary folder) must not leave it behind."""
    from interfaces import local_server

    stopped = []
    for depth in ("", "*/", "*/*/", "*/*/*/"):
        for state in root.glob(f"{depth}{local_server.FOLDER}/{local_server.STATE}"):
            server = local_server.stop(state.parent.parent)
            if server is not None:
                stopped.append(server.pid)
    return stopped


@pytest.fixture(autouse=True)
def _no_local_server_left(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    used = (getattr(request.node, "funcargs", None) or {}).get("tmp_path")  # torn down already: its value stays
    if used is not None:
        stop_local_servers(used)


@pytest.fixture(scope="session", autouse=True)
def _no_local_server_left_in_the_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    yield
    stop_local_servers(tmp_path_factory.getbasetemp())


@pytest.fixture
def stub() -> Iterator[StubOpenRouter]:
    with StubOpenRouter(valid_keys=[TEST_KEY]) as server:
        yield server


@pytest.fixture
def client(stub: StubOpenRouter) -> Iterator[OpenRouterClient]:
    with OpenRouterClient(
        TEST_KEY, base_url=stub.base_url, backoff_initial=0.01, retry_cap=2.0, max_retries=3, timeout=10
    ) as c:
        yield c


@pytest.fixture
def cli_env(stub: StubOpenRouter, tmp_path: Path) -> dict[str, str]:
    """Environment for running the real ``influencer`` console script against the stub."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENROUTER_", "INFLUENCER_"))}
    env.update(
        OPENROUTER_API_KEY=TEST_KEY,
        OPENROUTER_BASE_URL=stub.base_url,
        INFLUENCER_DATA_ROOT=str(tmp_path / "data"),
        INFLUENCER_MODELS_ROOT=str(tmp_path / "models"),
        INFLUENCER_PROMPT_BANK=str(REPO / "prompt_bank" / "default.yaml"),
        INFLUENCER_OPENROUTER_MAX_RETRIES="2",
        PYTHONUNBUFFERED="1",
    )
    return env
