"""The Control Hub over real HTTP: uvicorn on 127.0.0.1, the stub OpenRouter server, a Prefect test server."""

from __future__ import annotations

import base64
import io
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from ai_influencer.settings import Settings
from flows.api import api_client
from interfaces.hub.app import create_app
from tests.conftest import TEST_KEY
from tests.support.assets import face
from tests.support.hub_server import serve
from tests.support.openrouter_stub import StubOpenRouter
from tests.support.prefect_server import ServerEnv

TOKEN = "hub-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}

POSTS = """handle,timestamp,likes,comments,views,followers
alice,2026-01-01T10:00:00Z,100,10,1000,1000
alice,2026-01-08T10:00:00Z,120,12,1100,1100
alice,2026-01-15T10:00:00Z,130,20,,1210
bob,2026-01-01T12:00:00Z,10,1,300,2000
bob,2026-01-15T12:00:00Z,12,0,200,2000
carol,2026-01-05T09:00:00Z,50,5,,
"""
PROFILES = """handle,followers
carol,500
"""


def hub_settings(stub: StubOpenRouter, tmp_path: Path, **kw: object) -> Settings:
    return Settings(
        openrouter_api_key=TEST_KEY,
        openrouter_base_url=stub.base_url,
        openrouter_max_retries=0,
        hub_token=TOKEN,
        data_root=tmp_path / "data",
        hub_max_upload_mb=0.05,
        **kw,
    )


@pytest.fixture
def hub(stub: StubOpenRouter, tmp_path: Path) -> Iterator[str]:
    with serve(create_app(hub_settings(stub, tmp_path))) as url:
        yield url


def test_models_are_filtered_and_cached(hub: str, stub: StubOpenRouter) -> None:
    r = httpx.get(f"{hub}/api/models", params={"output_modality": "image"}, headers=AUTH)
    assert r.status_code == 200
    models = r.json()["models"]
    assert models and all("image" in m["output_modalities"] for m in models)
    all_models = httpx.get(f"{hub}/api/models", headers=AUTH).json()
    assert all_models["count"] > len(models)
    assert sum(rq.path.endswith("/models") for rq in stub.requests) == 1  # TTL cache: one upstream call


def test_generate_image_and_text_need_the_token_and_share_one_shape(hub: str, stub: StubOpenRouter) -> None:
    body = {"model": "google/gemini-2.5-flash-image", "prompt": "Photo of ohwx woman"}
    assert httpx.post(f"{hub}/api/generate/image", json=body, timeout=30).status_code == 401
    bad = httpx.post(f"{hub}/api/generate/image", json=body, headers={"Authorization": "Bearer nope"}, timeout=30)
    assert bad.status_code == 401 and stub.paid_requests == []
    r = httpx.post(f"{hub}/api/generate/image", json=body, headers=AUTH, timeout=30)
    out = r.json()
    assert r.status_code == 200 and out["ok"] and out["kind"] == "image" and out["error"] is None
    item = out["items"][0]
    assert item["mime"] == "image/png"
    assert Image.open(io.BytesIO(base64.b64decode(item["b64"]))).size[0] > 0
    assert out["usage"]["cost"] == pytest.approx(stub.image_cost)

    text = httpx.post(
        f"{hub}/api/generate/text", json={"model": "meta-llama/llama-3.1-70b-instruct", "prompt": "hi"}, headers=AUTH
    ).json()
    assert text["ok"] and text["items"][0]["mime"] == "text/plain" and text["items"][0]["text"]


@pytest.mark.parametrize(
    ("fault", "status", "code"),
    [
        ("400", 400, "bad_request"),
        ("402", 402, "insufficient_credits"),
        ("403", 422, "moderation"),
        ("429", 429, "rate_limited"),
        ("503", 502, "upstream_error"),
        ("401", 502, "openrouter_auth"),
    ],
)
def test_openrouter_errors_map_to_clear_statuses(
    hub: str, stub: StubOpenRouter, fault: str, status: int, code: str
) -> None:
    stub.inject(fault, path="/images")
    r = httpx.post(
        f"{hub}/api/generate/image", json={"model": "google/gemini-2.5-flash-image", "prompt": "x"}, headers=AUTH
    )
    body = r.json()
    assert r.status_code == status and body["ok"] is False and body["items"] == []
    assert body["error"]["code"] == code and body["error"]["message"]
    assert TEST_KEY not in r.text


def test_influencer_insights_from_uploaded_csv(hub: str) -> None:
    files = [("files", ("posts.csv", POSTS, "text/csv")), ("files", ("profiles.csv", PROFILES, "text/csv"))]
    r = httpx.post(f"{hub}/api/influencer", files=files, headers=AUTH)
    assert r.status_code == 200, r.text
    profiles = {p["handle"]: p for p in r.json()["profiles"]}
    order = [p["handle"] for p in r.json()["profiles"]]
    alice, bob, carol = profiles["alice"], profiles["bob"], profiles["carol"]
    # alice: (110/1000 + 132/1100 + 150/1210) / 3 = 11.80 %; 2 gaps over 14 days = 1 post/week;
    # followers 1000 -> 1210 in 14 days = 10 %/week compound.
    assert alice["engagement_rate"] == pytest.approx(100 * (0.11 + 0.12 + 150 / 1210) / 3, abs=1e-3)
    assert alice["cadence_per_week"] == pytest.approx(1.0)
    assert alice["growth_weekly"] == pytest.approx(10.0, abs=1e-3)
    assert bob["engagement_rate"] == pytest.approx(100 * (11 / 2000 + 12 / 2000) / 2, abs=1e-3)
    assert bob["growth_weekly"] == pytest.approx(0.0)
    assert carol["engagement_rate"] == pytest.approx(11.0) and carol["cadence_per_week"] is None
    assert any("two posts" in n for n in carol["notes"])
    # documented score: percentile ranks within the upload, weights 0.5 / 0.3 / 0.2
    assert alice["success_score"] == pytest.approx(100 * (0.5 * 5 / 6 + 0.3 * 0.75 + 0.2 * 0.75) / 1.0, abs=0.1)
    assert order == ["alice", "carol", "bob"]


def test_influencer_rejects_bad_input_naming_file_row_and_field(hub: str) -> None:
    bad = POSTS.replace("120,12", "lots,12")
    r = httpx.post(f"{hub}/api/influencer", files=[("files", ("posts.csv", bad, "text/csv"))], headers=AUTH)
    assert r.status_code == 422 and "posts.csv line 3: 'likes' is not a number: 'lots'" in r.json()["detail"]
    r = httpx.post(
        f"{hub}/api/influencer", files=[("files", ("posts.csv", "handle,likes\na,1\n", "text/csv"))], headers=AUTH
    )
    assert r.status_code == 422 and "missing column(s) timestamp, comments" in r.json()["detail"]
    big = POSTS + "alice,2026-01-20T10:00:00Z,1,1,1,1\n" * 2000
    r = httpx.post(f"{hub}/api/influencer", files=[("files", ("posts.csv", big, "text/csv"))], headers=AUTH)
    assert r.status_code == 413
    doc = json.dumps({"posts": [{"handle": "z", "timestamp": "yesterday", "likes": 1, "comments": 0}]})
    r = httpx.post(f"{hub}/api/influencer", files=[("files", ("export.json", doc, "application/json"))], headers=AUTH)
    assert r.status_code == 422 and "export.json posts item 1: 'timestamp' is not an ISO date" in r.json()["detail"]


def test_dataset_browser_and_files_stay_inside_the_data_root(hub: str, tmp_path: Path) -> None:
    synth = tmp_path / "data" / "synth_openrouter"
    synth.mkdir(parents=True)
    shutil.copy(face("obama.jpg"), synth / "a.jpg")
    shutil.copy(face("biden.jpg"), synth / "b.jpg")
    qc = tmp_path / "data" / "qc_passed"
    qc.mkdir()
    (qc / "qc_report.csv").write_text(
        "file,faces,score,sharpness,duplicate_of,verdict,reason\na.jpg,1,0.8,120,,accepted,\nb.jpg,1,0.1,90,,rejected,identity\n"
    )
    (tmp_path / "secret.txt").write_text("outside")
    c = httpx.Client(base_url=hub, headers=AUTH, timeout=30)
    ds = c.get("/api/dataset").json()
    assert [(i["file"], i["verdict"]) for i in ds["images"]] == [("a.jpg", "accepted"), ("b.jpg", "rejected")]
    assert ds["counts"] == {"accepted": 1, "rejected": 1}
    assert c.get(ds["images"][0]["url"]).content == (synth / "a.jpg").read_bytes()
    thumb = c.get(ds["images"][0]["thumb"])
    assert thumb.headers["content-type"] == "image/jpeg" and max(Image.open(io.BytesIO(thumb.content)).size) <= 256
    for evil in ("/files/../secret.txt", "/files/%2e%2e/secret.txt", "/files/..%2fsecret.txt"):
        r = c.get(evil)
        assert r.status_code in (403, 404) and "outside" not in r.text
    assert c.get("/api/thumb", params={"path": "../secret.txt"}).status_code == 403
    assert c.get("/api/dataset", params={"folder": "../.."}).status_code == 403


def test_nul_paths_and_undecodable_images_get_a_clear_answer_not_a_500(hub: str, tmp_path: Path) -> None:
    synth = tmp_path / "data" / "synth_openrouter"
    synth.mkdir(parents=True)
    shutil.copy(face("obama.jpg"), synth / "a.jpg")
    (synth / "text.jpg").write_text("not a jpeg at all")
    (synth / "cut.jpg").write_bytes(face("obama.jpg").read_bytes()[:3000])  # a download cut short
    c = httpx.Client(base_url=hub, headers=AUTH, timeout=30)
    for bad in ("text.jpg", "cut.jpg"):
        r = c.get("/api/thumb", params={"path": f"synth_openrouter/{bad}"})
        assert r.status_code == 415 and f"synth_openrouter/{bad}: not a readable image" in r.json()["detail"], r.text
    assert c.get("/api/thumb", params={"path": "synth_openrouter/a.jpg"}).status_code == 200
    assert {i["file"] for i in c.get("/api/dataset").json()["images"]} == {"a.jpg", "cut.jpg", "text.jpg"}
    for r in (
        c.get("/api/thumb", params={"path": "synth_openrouter/a.jpg\x00.png"}),
        c.get("/files/synth_openrouter/a.jpg%00.png"),
        c.get("/api/dataset", params={"folder": "synth_openrouter\x00"}),
    ):
        assert r.status_code == 400 and r.json()["detail"] == "the path contains a NUL byte", (r.url, r.text)
    for r in (c.get("/files/" + "a" * 5000 + ".jpg"), c.get("/api/dataset", params={"folder": "a" * 5000})):
        assert r.status_code == 400 and r.json()["detail"] == "unusable path: File name too long", r.text
    assert c.get("/static/hub.js%00.png").status_code == 404 and c.get("/static/" + "a" * 5000).status_code == 404


def test_every_data_route_needs_the_token_reads_included(hub: str, stub: StubOpenRouter, tmp_path: Path) -> None:
    synth = tmp_path / "data" / "synth_openrouter"
    synth.mkdir(parents=True)
    shutil.copy(face("obama.jpg"), synth / "a.jpg")
    reads = [
        "/api/dataset",
        "/api/thumb?path=synth_openrouter/a.jpg",
        "/files/synth_openrouter/a.jpg",
        "/api/runs",
        "/api/models?refresh=true",  # spends the hub's key upstream
    ]
    for path in reads:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"X-Hub-Token": "wrong"}):
            r = httpx.get(hub + path, headers=headers, timeout=30)
            assert r.status_code == 401, (path, headers, r.status_code)
            assert b"\xff\xd8" not in r.content[:4]
    assert not any(rq.path.endswith("/models") for rq in stub.requests), "refused before any upstream call"
    assert httpx.get(f"{hub}/files/synth_openrouter/a.jpg", headers={"X-Hub-Token": TOKEN}).status_code == 200
    # The pages' cookie: set from the header, good for reads (img tags, links), never for spending.
    browser = httpx.Client(base_url=hub, timeout=30)
    assert browser.post("/api/session").status_code == 401
    session = browser.post("/api/session", headers=AUTH)
    assert session.status_code == 200
    assert (
        "httponly" in session.headers["set-cookie"].lower()
        and "samesite=strict" in session.headers["set-cookie"].lower()
    )
    assert browser.get("/files/synth_openrouter/a.jpg").content == (synth / "a.jpg").read_bytes()
    body = {"model": "google/gemini-2.5-flash-image", "prompt": "x"}
    assert browser.post("/api/generate/image", json=body).status_code == 401, "a cookie alone never spends money"
    assert stub.paid_requests == []
    # the page shells and API docs carry no data
    for page in ("/", "/pipeline", "/influencer", "/static/hub.js", "/docs"):
        assert httpx.get(hub + page).status_code == 200, page


def test_openapi_docs(hub: str) -> None:
    assert httpx.get(f"{hub}/docs").status_code == 200
    paths = httpx.get(f"{hub}/openapi.json").json()["paths"]
    assert {"/api/models", "/api/generate/{kind}", "/api/influencer", "/api/pipeline/run", "/api/runs"} <= set(paths)


def test_pipeline_run_starts_a_deployment_and_lists_runs(
    stub: StubOpenRouter, session_prefect_server: ServerEnv, tmp_path: Path
) -> None:
    api = session_prefect_server.api_url  # the session's started server (tests/support/fixtures.py)
    # Through the hub's own Prefect client: the server is shared with the other worker's tests, and its
    # SQLite answers a write that meets another one 503 (this setup failed on it once in CI).
    with api_client(api) as prefect_api:
        flow_id = prefect_api.post("/flows/", json={"name": "hybrid"}).raise_for_status().json()["id"]
        prefect_api.post("/deployments/", json={"name": "hybrid-local", "flow_id": flow_id}).raise_for_status()
    with serve(create_app(hub_settings(stub, tmp_path), prefect_api_url=api)) as hub:
        params = {"params": {"generate": {"per_scene": 2, "budget_usd": 1.5}}}
        assert httpx.post(f"{hub}/api/pipeline/run", json={"parameters": params}).status_code == 401
        r = httpx.post(f"{hub}/api/pipeline/run", json={"parameters": params}, headers=AUTH, timeout=30)
        assert r.status_code == 200, r.text
        run = r.json()
        assert run["deployment"] == "hybrid/hybrid-local" and run["state"] == "SCHEDULED"
        stored = httpx.get(f"{api}/flow_runs/{run['id']}").json()
        assert stored["parameters"] == params
        runs = httpx.get(f"{hub}/api/runs", headers=AUTH).json()["runs"]
        assert runs[0]["id"] == run["id"] and runs[0]["flow"] == "hybrid" and runs[0]["state"] == "SCHEDULED"
        missing = httpx.post(f"{hub}/api/pipeline/run", json={"deployment": "hybrid/nope"}, headers=AUTH)
        assert missing.status_code == 404 and "not found" in missing.json()["detail"]
