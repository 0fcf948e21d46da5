"""The hub pages in a real headless Chromium (Debian's chromium driven by Playwright).

Screenshots go to test-output/screenshots/ (git-ignored) so a reviewer can look at them.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from interfaces.hub.app import create_app
from tests.conftest import REPO
from tests.support.assets import face
from tests.support.hub_server import serve
from tests.support.openrouter_stub import StubOpenRouter
from tests.support.review_workspace import ECHO, PERSONA, Template, clone
from tests.test_hub import POSTS, PROFILES, TOKEN, hub_settings

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SHOTS = REPO / "test-output" / "screenshots"
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium is not installed")


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
            ],
        )
        yield b
        b.close()


@pytest.fixture
def page(browser: object, stub: StubOpenRouter, tmp_path: Path) -> Iterator[tuple[object, str]]:
    SHOTS.mkdir(parents=True, exist_ok=True)
    with serve(create_app(hub_settings(stub, tmp_path))) as url:
        context = browser.new_context(viewport={"width": 1200, "height": 900})  # type: ignore[attr-defined]
        pg = context.new_page()
        pg.set_default_timeout(20_000)
        yield pg, url
        context.close()


def set_token(pg: object, value: str = TOKEN) -> None:
    pg.fill("#token", value)  # type: ignore[attr-defined]
    pg.dispatch_event("#token", "change")  # type: ignore[attr-defined]


def test_generate_page_shows_the_generated_image(page: tuple[object, str], stub: StubOpenRouter) -> None:
    pg, url = page
    pg.goto(url + "/")
    # without the token the page shows the hub's refusal: no model list (it spends the hub's key),
    # no generation, nothing paid for
    pg.click("#load-models")
    pg.wait_for_selector("#models-error:has-text('hub token')")
    pg.click("#generate")
    assert "hub token" in pg.text_content("#generate-error", timeout=20_000)
    assert stub.paid_requests == [] and not any(r.path.endswith("/models") for r in stub.requests)
    set_token(pg)
    pg.click("#load-models")
    pg.wait_for_selector("#models-count:has-text('models')")
    pg.click("#generate")
    img = pg.wait_for_selector("#result-image")
    assert pg.evaluate("el => el.naturalWidth", img) > 0
    assert "cost $" in pg.text_content("#result-usage")
    pg.screenshot(path=str(SHOTS / "hub-generate.png"), full_page=True)
    assert len(stub.paid_requests) == 1


def test_insights_page_shows_profiles_sorted_by_success_score(page: tuple[object, str], tmp_path: Path) -> None:
    pg, url = page
    (tmp_path / "posts.csv").write_text(POSTS)
    (tmp_path / "profiles.csv").write_text(PROFILES)
    pg.goto(url + "/influencer")
    set_token(pg)
    pg.set_input_files("#files", [str(tmp_path / "posts.csv"), str(tmp_path / "profiles.csv")])
    pg.click("#analyze")
    pg.wait_for_selector("#insights tbody tr")
    handles = pg.eval_on_selector_all("#insights tbody tr", "rows => rows.map(r => r.dataset.handle)")
    scores = pg.eval_on_selector_all("#insights tbody tr td:nth-child(3)", "cells => cells.map(c => +c.textContent)")
    assert handles == ["alice", "carol", "bob"] and scores == sorted(scores, reverse=True)
    pg.screenshot(path=str(SHOTS / "hub-insights.png"), full_page=True)
    # a broken file is named in the page's error
    (tmp_path / "posts.csv").write_text(POSTS.replace("120,12", "lots,12"))
    pg.set_input_files("#files", [str(tmp_path / "posts.csv")])
    pg.click("#analyze")
    pg.wait_for_selector("#insights-error:has-text('posts.csv line 3')")


def test_pipeline_page_shows_the_dataset_with_verdicts(page: tuple[object, str], tmp_path: Path) -> None:
    pg, url = page
    synth = tmp_path / "data" / "synth_openrouter"
    synth.mkdir(parents=True)
    shutil.copy(face("obama.jpg"), synth / "a.jpg")
    shutil.copy(face("biden.jpg"), synth / "b.jpg")
    (tmp_path / "data" / "qc_passed").mkdir()
    (tmp_path / "data" / "qc_passed" / "qc_report.csv").write_text(
        "file,faces,score,sharpness,duplicate_of,verdict,reason\na.jpg,1,0.8,120,,accepted,\nb.jpg,1,0.1,90,,rejected,id\n"
    )
    pg.goto(url + "/pipeline")
    # without the token the hub shows nothing of the dataset, only what to do
    pg.wait_for_selector("#dataset-summary:has-text('hub token')")
    assert pg.query_selector(".tile") is None
    set_token(pg)
    pg.wait_for_selector(".tile.accepted img")
    pg.wait_for_function("() => [...document.querySelectorAll('.tile img')].every(i => i.complete && i.naturalWidth)")
    assert "1 accepted · 1 rejected" in pg.text_content("#dataset-summary")
    # a rejected image says why (issue 28: a bare "rejected · 0.10" said nothing), and the review is one click away
    assert pg.text_content(".tile.rejected .reason") == "id" and pg.query_selector(".tile.accepted .reason") is None
    assert pg.get_attribute("#review-link", "href") == "/review"
    # no Prefect server configured for this hub: the runs table says so instead of failing silently
    assert "no Prefect server configured" in pg.text_content("#runs-error")
    pg.screenshot(path=str(SHOTS / "hub-pipeline.png"), full_page=True)


def test_review_page_keyboard_overrides_survive_a_reload_and_calibration_appears(
    browser: object, stub: StubOpenRouter, review_template: Template, tmp_path: Path
) -> None:
    """Issue 28: A / R / U on the keyboard, the full-size view beside the references, the verdicts kept
    across a reload and over a listing that arrives late, and the calibration suggestion once the labels
    suffice (keyboard triage only), applied with one click."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    clone(review_template, tmp_path)
    with serve(create_app(hub_settings(stub, tmp_path))) as url:
        context = browser.new_context(viewport={"width": 1300, "height": 900})  # type: ignore[attr-defined]
        pg = context.new_page()
        pg.set_default_timeout(20_000)
        pg.goto(url + "/review")
        pg.wait_for_selector("#review-error:has-text('hub token')")  # nothing shown without the token
        set_token(pg)
        pg.wait_for_selector("#grid .tile.selected")
        tiles = pg.eval_on_selector_all(
            "#grid .tile", "ts => ts.map(t => [t.dataset.file, t.classList.contains('accepted')])"
        )
        assert len(tiles) == 36
        assert "more" in pg.text_content("#cal-status") and pg.get_attribute("#cal-status", "data-ready") == "no"

        def selected() -> int:
            return int(pg.get_attribute("#grid .tile.selected", "data-index"))

        def press(key: str, expect_index: int) -> None:
            pg.keyboard.press(key)
            pg.wait_for_function(
                f"() => document.querySelector('#grid .tile.selected').dataset.index === '{expect_index}'"
            )

        pg.click('#grid .tile[data-index="0"]')  # the keys act on the grid, not while typing in a field
        # Override the first two (borderline first): the opposite of QC's verdict, by keyboard.
        flipped = {}
        for k in (0, 1):
            file, accepted = tiles[k]
            press("r" if accepted else "a", k + 1)  # a verdict moves on to the next image
            flipped[file] = "rejected" if accepted else "accepted"
        press("ArrowLeft", 1)
        press("u", 1)  # U takes the verdict back; R again restores the override
        pg.wait_for_function(
            "() => !document.querySelector('#grid .tile[data-index=\"1\"]').classList.contains('judged')"
        )
        press("r" if tiles[1][1] else "a", 2)
        for file, verdict in flipped.items():
            tile = f'#grid .tile[data-file="{file}"]'
            assert pg.get_attribute(tile, "class").split()[-2:] == ["override", "judged"]
            assert f"{verdict} (override, was" in pg.text_content(tile + " .verdict")
        # The full-size view, the references beside it.
        press("ArrowDown", 2 + pg.evaluate("columns()"))
        pg.keyboard.press("Enter")
        pg.wait_for_selector("#viewer:not([hidden]) #viewer-image")
        pg.wait_for_function(
            "() => { const i = document.getElementById('viewer-image'); return i.complete && i.naturalWidth > 0; }"
        )
        refs = pg.eval_on_selector_all("#viewer-refs img", "is => is.map(i => i.alt)")
        assert refs == ["obama3.jpg", "obama_2.jpg"]
        pg.wait_for_function(
            "() => [...document.querySelectorAll('#viewer-refs img')].every(i => i.complete && i.naturalWidth)"
        )
        pg.screenshot(path=str(SHOTS / "hub-review-viewer.png"))
        pg.keyboard.press("Escape")
        assert pg.is_hidden("#viewer")

        pg.reload()
        pg.wait_for_selector("#grid .tile.selected")
        pg.click('#grid .tile[data-index="0"]')
        for file, verdict in flipped.items():
            tile = f'#grid .tile[data-file="{file}"]'
            assert "override" in pg.get_attribute(tile, "class").split() and verdict in pg.get_attribute(tile, "class")
        pg.screenshot(path=str(SHOTS / "hub-review.png"), full_page=True)

        # Triage by keyboard, the truth from labels.csv, until the calibration has enough labels.
        order = pg.eval_on_selector_all("#grid .tile", "ts => ts.map(t => t.dataset.file)")
        press("ArrowRight", 1)
        press("ArrowRight", 2)
        persona = {n for n, p in review_template.identity.items() if p == PERSONA} - review_template.blurred - {ECHO}
        truth = {f: "a" if f in persona else "r" for f in order}

        # A list the hub served before a verdict was stored is not drawn over that verdict (it happens with a
        # Refresh, a filter change, or the second "change" of the token field when it loses focus, while keys
        # are pressed): hold a listing back, press a key meanwhile, then let the listing arrive.
        held: list[tuple[object, object]] = []
        sent: list[str] = []
        pg.on("request", lambda r: sent.append(r.url) if "/api/review/verdict" in r.url else None)
        pg.route("**/api/review/items*", lambda route: held.append((route, route.fetch())))
        pg.click("#refresh")
        for _ in range(400):  # the listing reaches the route within a few ms; bounded all the same
            if held:
                break
            pg.wait_for_timeout(25)
        assert held, "the Refresh button listed nothing"
        pg.keyboard.press(truth[order[2]])
        pg.wait_for_timeout(300)  # ample for the page to send the verdict if it did not wait for the listing
        assert sent == [], "a verdict was sent while a listing asked before it was still on its way"
        route, response = held[0]
        route.fulfill(response=response)  # type: ignore[attr-defined]
        pg.unroute("**/api/review/items*")
        pg.wait_for_function("() => document.querySelector('#grid .tile.selected').dataset.index === '3'")
        assert "judged" in pg.get_attribute(f'#grid .tile[data-file="{order[2]}"]', "class").split()
        assert len(sent) == 1

        for k in range(3, len(order)):
            press(truth[order[k]], min(k + 1, len(order) - 1))
            if pg.get_attribute("#cal-status", "data-ready") == "yes":
                break
        pg.wait_for_selector("#cal-table:not([hidden]) tr[data-threshold='minsim']")
        assert pg.get_attribute("#cal-status", "data-ready") == "yes"
        assert pg.is_visible("#cal-apply")
        pg.screenshot(path=str(SHOTS / "hub-review-calibration.png"), full_page=True)
        # One click stores the suggestion in the persona's settings; the page says QC now uses them.
        pg.click("#cal-apply")
        pg.wait_for_selector("#cal-result:has-text('stored in')")
        pg.wait_for_selector("#thresholds:has-text('persona calibration')")
        assert (tmp_path / "data" / "persona.json").is_file()
        context.close()
