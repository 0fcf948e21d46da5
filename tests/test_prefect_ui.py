"""The Prefect UI's run form of the hybrid deployment, in a real browser against a real server.

Before the flows took filled models as defaults (``params: HybridParams | None = None``), the form
opened on "params: None" and a user had to pick "HybridParams" to see any field.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.support.prefect_server import ServerEnv

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SHOTS = REPO / "test-output" / "screenshots"


@pytest.fixture(scope="module")
def ui_server(session_prefect_server: ServerEnv) -> ServerEnv:
    """The session's started server serves the UI (tests/support/fixtures.py)."""
    return session_prefect_server


def deploy_hybrid(env: dict[str, str]) -> str:
    """The hybrid flow's deployment, registered the way `prefect deploy` does (schema from the signature)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.hybrid import hybrid_flow

    with temporary_settings(updates={PREFECT_API_URL: env["PREFECT_API_URL"]}):
        return str(hybrid_flow.to_deployment(name="hybrid-ui-test").apply())


def test_the_run_form_opens_with_the_fields(ui_server: dict[str, str]) -> None:
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), "Debian chromium is needed (.ci/run installs it)"
    deployment_id = deploy_hybrid(ui_server)
    ui = ui_server["PREFECT_API_URL"].removesuffix("/api")
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update"],
        )  # fmt: skip
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(60_000)
        page.goto(f"{ui}/deployments/deployment/{deployment_id}/run")
        # The nested model's fields are there without choosing anything: stage switches, the
        # generation's images per scene and the QC thresholds (the manual's defaults).
        for label in ("Run Generate", "Per Scene", "Minsim", "Minblur", "Data Root"):
            page.get_by_text(f"{label} (Optional)", exact=True).first.wait_for()
        # the manual's defaults are filled in, not blank; the QC thresholds are left empty on purpose (the
        # persona's calibration applies, issue 28) and their help says which values apply otherwise
        values = page.locator("input").evaluate_all("els => els.map(e => e.value)")
        assert "12" in values, values
        text = page.locator("body").inner_text()
        assert "else 0.34" in text and "else 80" in text, text[:3000]
        page.screenshot(path=str(SHOTS / "prefect-run-form.png"), full_page=True)
        browser.close()
