"""The hub's review API over real HTTP (uvicorn on 127.0.0.1) on a real workspace after the real QC (dlib).

What the page calls: the grid (borderline first, reasons, filters), A / R / U, the calibration suggestion
and its one-click apply, the token on every route, and one-line refusals.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from ai_influencer.dataset.manifest import ImageRecord, write_sidecar
from ai_influencer.dataset.workspace import Workspace
from interfaces.hub.app import create_app
from tests.support.hub_server import serve
from tests.support.openrouter_stub import StubOpenRouter
from tests.support.review_workspace import ECHO, PERSONA, Template, clone
from tests.test_hub import AUTH, TOKEN, hub_settings


@pytest.fixture
def hub(review_template: Template, stub: StubOpenRouter, tmp_path: Path) -> Iterator[tuple[str, Workspace]]:
    ws = clone(review_template, tmp_path)  # tmp_path/data: the hub's data root
    for name, scene in (("obama_1.jpg", "office"), ("obama_1_mirror.png", "office"), ("adams_1.jpg", "beach")):
        write_sidecar(ws.synth, ImageRecord(key=name.split(".")[0], file=name, model="m", prompt="p", scene=scene))
    with serve(create_app(hub_settings(stub, tmp_path))) as url:
        yield url, ws


def post(url: str, path: str, body: dict | None = None) -> httpx.Response:
    return httpx.post(url + path, json=body, headers=AUTH, timeout=60)


def get(url: str, path: str, **params: str) -> httpx.Response:
    return httpx.get(url + path, params=params, headers=AUTH, timeout=60)


def test_grid_lists_every_image_with_why_borderline_first_and_filters(hub: tuple[str, Workspace]) -> None:
    url, _ = hub
    assert httpx.get(url + "/review").status_code == 200  # the page shell is open, its data is not
    for path in ("/api/review/items", "/api/review/calibration"):
        assert httpx.get(url + path).status_code == 401
    body = get(url, "/api/review/items").json()
    items = {i["file"]: i for i in body["items"]}
    assert body["total"] == len(items) == 36 and body["qc_report"]
    assert body["thresholds"]["minsim"]["value"] == 0.34 and body["thresholds"]["minsim"]["source"] == "default"
    assert [r["file"] for r in body["references"]] == ["obama3.jpg", "obama_2.jpg"]
    ref = httpx.get(url + body["references"][0]["thumb"], headers=AUTH)
    assert ref.status_code == 200 and ref.headers["content-type"] == "image/jpeg"
    # Every rejection says why, the ones QC made before measuring identity too (issue 28's "rejected · 0.65").
    assert all(i["reason"] for i in items.values() if i["verdict"] != "accepted")
    echo = items[ECHO]
    assert (echo["verdict"], echo["score"], echo["reason"], echo["kinds"], echo["borderline"]) == (
        "rejected",
        None,
        "copy of reference obama_2.jpg",
        ["copy"],
        None,
    )
    soft = items["lin_manuel_miranda_1.png"]
    assert soft["score"] is None and soft["reason"].startswith("sharpness: face 78.4 < minblur 80")
    distances = [i["borderline"] for i in body["items"]]
    finite = [d for d in distances if d is not None]
    assert finite == sorted(finite) and distances[: len(finite)] == finite  # borderline first, never-flips last
    assert body["items"][0]["file"] == "lin_manuel_miranda_1.png"  # 78.4 against minblur 80: the nearest
    thumb = httpx.get(url + items["obama_1.jpg"]["thumb"], headers=AUTH)
    assert thumb.status_code == 200 and thumb.content[:2] == b"\xff\xd8"

    assert set(body["facets"]["reasons"]) == {"copy", "duplicate", "faces", "identity", "sharpness"}
    assert body["facets"]["scenes"] == ["beach", "office"]
    only = get(url, "/api/review/items", verdict="rejected", reason="copy").json()["items"]
    assert [i["file"] for i in only] == [ECHO]
    office = get(url, "/api/review/items", scene="office").json()["items"]
    assert sorted(i["file"] for i in office) == ["obama_1.jpg", "obama_1_mirror.png"]
    accepted = get(url, "/api/review/items", verdict="accepted").json()["items"]
    assert {i["file"] for i in accepted} == {n for n, i in items.items() if i["verdict"] == "accepted"}
    bad = get(url, "/api/review/items", reason="vibes")
    assert bad.status_code == 400 and "reason: 'vibes' is not one of" in bad.json()["detail"]


def test_verdicts_undo_and_refusals(hub: tuple[str, Workspace]) -> None:
    url, ws = hub
    body = {"file": "rose_leslie_1.jpg", "verdict": "accepted"}
    # A state-changing call never takes the cookie alone (another site could make a browser send it).
    cookie = httpx.post(url + "/api/review/verdict", json=body, cookies={"hub_token": TOKEN}, timeout=30)
    assert cookie.status_code == 401 and not ws.qc_overrides.exists()

    r = post(url, "/api/review/verdict", body).json()
    item = r["item"]
    assert r["judgement"]["was"] == "rejected" and r["judgement"]["overrides"]
    assert (item["verdict"], item["auto_verdict"], item["overridden"]) == ("accepted", "rejected", True)
    assert item["reason"].startswith("override: accepted (was: identity: 0.000 < minsim 0.34")
    assert "override" in item["kinds"]
    stored = json.loads(ws.qc_overrides.read_text())["images"]
    assert [e["history"][-1]["file"] for e in stored.values()] == ["rose_leslie_1.jpg"]
    listed = get(url, "/api/review/items", reason="override").json()
    assert [i["file"] for i in listed["items"]] == ["rose_leslie_1.jpg"] and listed["overridden"] == 1
    confirm = post(url, "/api/review/verdict", {"file": "obama_1.jpg", "verdict": "accepted"}).json()["item"]
    assert confirm["judgement"]["verdict"] == "accepted" and not confirm["overridden"]
    assert "confirmed" in confirm["kinds"]

    undone = post(url, "/api/review/undo", {"file": "rose_leslie_1.jpg"}).json()
    assert undone["undone"]["verdict"] == "accepted" and undone["item"]["verdict"] == "rejected"
    assert post(url, "/api/review/undo", {"file": "rose_leslie_1.jpg"}).json()["undone"] is None

    for payload, status, words in (
        ({"file": "../secrets.png", "verdict": "accepted"}, 400, "not a plain file name"),
        ({"file": "missing.png", "verdict": "rejected"}, 400, "missing.png: not among the candidates"),
        ({"file": "adams_1.jpg", "verdict": "accepted", "cause": "identity"}, 400, "only for a rejection"),
    ):
        r = post(url, "/api/review/verdict", payload)
        assert r.status_code == status and words in r.json()["detail"], r.text
    assert post(url, "/api/review/verdict", {"file": "adams_1.jpg", "verdict": "maybe"}).status_code == 422
    # A damaged store is the user's work: refused with what to do, never overwritten.
    ws.qc_overrides.write_text("{not json")
    answers = (
        get(url, "/api/review/items"),
        post(url, "/api/review/verdict", body),
        get(url, "/api/review/calibration"),
    )
    for r in answers:
        assert r.status_code == 409 and "qc_overrides.json: unreadable review overrides" in r.json()["detail"]
    assert ws.qc_overrides.read_text() == "{not json"


def test_calibration_says_how_many_more_then_suggests_and_applies(
    hub: tuple[str, Workspace], review_template: Template
) -> None:
    url, ws = hub
    cal = get(url, "/api/review/calibration").json()
    assert not cal["ready"] and cal["labels"] == 0 and cal["min_per_class"] == 5
    assert cal["missing"][0] == "minsim: 5 more accepted and 5 more rejected labels needed (faces with sharpness >= 80)"
    assert post(url, "/api/review/calibration/apply").status_code == 409 and not ws.persona_settings.exists()

    # The persona's sharp photos accepted, four other people rejected: one rejected label short for minsim.
    persona = sorted(
        n for n, p in review_template.identity.items() if p == PERSONA and n not in review_template.blurred
    )
    persona = [n for n in persona if n not in (ECHO, "obama_3_240p.jpg")]
    assert len(persona) == 6
    for name in persona:
        post(url, "/api/review/verdict", {"file": name, "verdict": "accepted"}).raise_for_status()
    for name in ("adams_1.jpg", "biden_1.jpg", "carell_1.jpg", "clapton_1.jpg"):
        post(url, "/api/review/verdict", {"file": name, "verdict": "rejected"}).raise_for_status()
    cal = get(url, "/api/review/calibration").json()
    assert not cal["ready"] and cal["fits"][0]["needed"] == {"accepted": 0, "rejected": 1}
    assert cal["missing"][0] == "minsim: 1 more rejected label needed (faces with sharpness >= 80)"
    post(url, "/api/review/verdict", {"file": "hopkins_1.jpg", "verdict": "rejected"}).raise_for_status()
    cal = get(url, "/api/review/calibration").json()
    sim = cal["fits"][0]
    assert cal["ready"] and sim["labels"] == {"accepted": 6, "rejected": 5} and sim["suggested"] == 0.34
    assert sim["kept"] and sim["at_suggested"]["precision"] == 1.0 and sim["at_suggested"]["recall"] == 1.0
    assert cal["fits"][1]["suggested"] is None and cal["fits"][1]["missing"].startswith("minblur: 5 more rejected")

    applied = post(url, "/api/review/calibration/apply")
    assert applied.status_code == 200 and applied.json()["stored"] == {"minsim": 0.34}
    stored = json.loads(ws.persona_settings.read_text())["qc"]
    assert stored["minsim"] == 0.34 and stored["backend"] == "dlib" and "minblur" not in stored
    thresholds = get(url, "/api/review/items").json()["thresholds"]
    assert thresholds["minsim"]["source"] == "persona" and thresholds["minblur"]["source"] == "default"
