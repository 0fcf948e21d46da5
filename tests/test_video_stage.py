"""The video stage wired end to end against the stub (chat, images and the Video API on one base URL):
the hybrid flow with video on (real Prefect), ``influencer video`` (dry run, budget, a SIGKILL while
polling and the restart), and the hub's video routes (submit, status, content, signed webhooks)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from ai_influencer.dataset.manifest import ImageRecord, rebuild_manifest, write_sidecar
from ai_influencer.openrouter.videos import VideoParameterError
from ai_influencer.qc.report import QCRow, write_report
from ai_influencer.settings import Settings
from ai_influencer.storyboard import Shot, Storyboard
from ai_influencer.video.frames import probe_video
from ai_influencer.video.ledger import Attempt, JobRecord, VideoStore
from ai_influencer.video.webhooks import IDEMPOTENCY_HEADER, SIGNATURE_HEADER, signature
from flows.hybrid import hybrid_flow
from flows.params import GenerateParams, HybridParams, Limits, Paths, VideoParams
from flows.video import video_flow
from tests.conftest import REPO, TEST_KEY
from tests.support.assets import face
from tests.support.prefect_server import artifacts_since
from tests.support.video_stub import StubOpenRouterWithVideo

BANK = str(REPO / "prompt_bank" / "default.yaml")
SCENES = ("cafe_morning", "city_street")
SCRIPT = "Good morning, coffee first. Then a walk through the old town!"


def storyboard(scenes: tuple[str, ...] = SCENES) -> Storyboard:
    shots = [
        Shot(scene=s, description=f"she smiles at the camera ({s})", lighting="golden_hour", outfit="casual",
             pose="standing", on_screen_text="")
        for s in scenes
    ]  # fmt: skip
    return Storyboard(
        title="a morning",
        concept="coffee and a walk",
        shots=shots,
        spoken_script=SCRIPT,
        caption_seeds=[f"seed {i}" for i in range(5)],
        hashtags=["#morning"],
    )


@pytest.fixture
def vstub() -> Iterator[StubOpenRouterWithVideo]:
    server = StubOpenRouterWithVideo(
        valid_keys=[TEST_KEY], image_mix={"persona": 1.0}, chat_reply=lambda _body: storyboard().model_dump_json()
    )
    server.video.pending_s = server.video.running_s = 0.1
    with server:
        yield server


@pytest.fixture
def env(vstub: StubOpenRouterWithVideo, monkeypatch: pytest.MonkeyPatch) -> StubOpenRouterWithVideo:
    monkeypatch.setenv("OPENROUTER_API_KEY", TEST_KEY)
    monkeypatch.setenv("OPENROUTER_BASE_URL", vstub.base_url)
    monkeypatch.setenv("INFLUENCER_OPENROUTER_MAX_RETRIES", "2")
    return vstub


def fast_video(**kw: Any) -> VideoParams:
    return VideoParams(poll_initial_s=0.05, poll_max_s=0.1, limit_name=f"video-{uuid.uuid4().hex[:8]}", **kw)


def workspace_after_qc(root: Path, scenes: tuple[str, ...] = SCENES) -> Path:
    """A workspace as prepare, plan, generate and QC leave it (without paying for it): references, one
    QC-passed image of the persona per scene, a storyboard."""
    cleaned, synth, passed = root / "cleaned", root / "synth_openrouter", root / "qc_passed"
    for folder in (cleaned, synth, passed, root / "text"):
        folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(face("obama2.jpg"), cleaned / "ref_a.jpg")
    shutil.copy(face("obama3.jpg"), cleaned / "ref_b.jpg")
    rows = []
    for i, scene in enumerate(scenes):
        name = f"img{i}.jpg"
        shutil.copy(face("obama.jpg"), synth / name)
        shutil.copy(face("obama.jpg"), passed / name)
        write_sidecar(synth, ImageRecord(key=f"img{i}", file=name, model="m", prompt="p", scene=scene))
        rows.append(QCRow(name, 1, 0.6, 120.0, "", "accepted", ""))
    rebuild_manifest(synth)
    write_report(rows, passed / "qc_report.csv")
    (root / "text" / "storyboard.json").write_text(storyboard(scenes).model_dump_json())
    return root


# ---- the hybrid flow with video on -------------------------------------------------------------------------


def test_hybrid_with_video_writes_one_checked_clip_per_scene_and_a_rerun_pays_nothing(
    prefect_api_url: str, env: StubOpenRouterWithVideo, tmp_path: Path
) -> None:
    started = datetime.now(UTC)
    raw = tmp_path / "data" / "input_raw"
    raw.mkdir(parents=True)
    for n in ("obama.jpg", "obama3.jpg"):
        shutil.copy(face(n), raw / n)
    tag = uuid.uuid4().hex[:8]
    p = HybridParams(
        paths=Paths(data_root=str(tmp_path / "data"), prompt_bank=BANK, models_root=str(tmp_path / "models")),
        generate=GenerateParams(
            per_scene=2,
            limits=Limits(rate_limit_name=f"r-{tag}", rate_per_s=50, inflight_limit_name=f"i-{tag}", max_inflight=16),
        ),
        run_augment=False,
        run_train=False,
        run_evaluate=False,
        run_video=True,
        video=fast_video(),
    )
    result = hybrid_flow(p)
    video = result.video
    assert video is not None and video.counts == {"done": 2}, video
    assert video.submitted == 2 and video.identity_passed == 2
    store = VideoStore(tmp_path / "data" / "video")
    manifest = json.loads(store.manifest.read_text())
    assert manifest["count"] == 2 and sorted(c["scene"] for c in manifest["clips"]) == sorted(SCENES)
    for clip in manifest["clips"]:
        mp4 = store.root / clip["file"]
        probe = probe_video(mp4)  # decodes the whole clip
        assert probe.frames > 0 and probe.height > probe.width, "9:16"
        side = json.loads(store.sidecar(clip["key"]).read_text())
        assert side["job_id"] and side["model"] == "google/veo-3.1-fast" and side["cost_usd"] > 0
        assert side["parameters"]["mode"] == "image-to-video" and side["parameters"]["aspect_ratio"] == "9:16"
        assert side["identity"]["verdict"] == "passed" and Path(side["filmstrip"]).is_file()
        assert side["timings"]["submitted_at"] and side["timings"]["download_s"] is not None
    # the first frame is the scene's QC-passed image, and the spoken line is in the prompt
    bodies = [r.body for r in env.video.submits]
    assert all(b["frame_images"][0]["frame_type"] == "first_frame" for b in bodies)
    assert any("coffee first" in b["prompt"] for b in bodies)
    wanted = ("video-plan", "video-clips", "video-filmstrips")
    assert set(wanted) <= set(artifacts_since(prefect_api_url, started, *wanted))
    again = video_flow(p.video, p.paths)
    assert again.counts == {"skipped": 2} and len(env.video.submits) == 2, "a re-run pays nothing"


def test_the_video_flow_waits_for_one_job_at_a_time_and_reports_another_persons_clip_as_failed_identity(
    prefect_api_url: str, env: StubOpenRouterWithVideo, tmp_path: Path
) -> None:
    data = workspace_after_qc(tmp_path / "data")
    env.video.subject_for = lambda body: "other" if "cafe_morning" in body["prompt"] else None
    paths = Paths(data_root=str(data), prompt_bank=BANK, models_root=str(tmp_path / "models"))
    video = fast_video(max_in_flight=1)
    summary = video_flow(video, paths)
    assert summary.counts == {"done": 2}
    # one job at a time: the second was submitted only once the first had ended (the Prefect limit)
    limit = httpx.get(f"{prefect_api_url}/v2/concurrency_limits/{video.limit_name}").json()
    assert limit["limit"] == 1 and limit["active_slots"] == 0
    first, second = sorted(env.video.jobs.values(), key=lambda j: j.created)
    assert second.created >= first.created + first.pending_s + first.running_s
    verdicts = {c.scene: (c.verdict, c.reason) for c in summary.clips}
    assert verdicts["cafe_morning"][0] == "failed" and verdicts["cafe_morning"][1].startswith("another person on")
    assert verdicts["city_street"][0] == "passed", verdicts
    assert summary.identity_failed == 1 and summary.identity_passed == 1


def test_an_unsupported_parameter_fails_the_hybrid_run_before_anything_is_paid(
    prefect_api_url: str, env: StubOpenRouterWithVideo, tmp_path: Path
) -> None:
    p = HybridParams(
        paths=Paths(data_root=str(tmp_path / "data"), prompt_bank=BANK, models_root=str(tmp_path / "models")),
        run_prepare=False,
        run_augment=False,
        run_train=False,
        run_evaluate=False,
        run_video=True,
        video=fast_video(duration=5),  # Veo 3.1 Fast takes 4, 6 or 8 s
    )
    with pytest.raises(VideoParameterError, match=r"google/veo-3.1-fast: duration 5 s is not supported; it accepts 4"):
        hybrid_flow(p)
    assert env.paid_requests == [] and env.video.submits == [], "neither the plan, an image nor a clip was paid"


# ---- influencer video -----------------------------------------------------------------------------------------

INFLUENCER = str(Path(sys.executable).with_name("influencer"))
FAST_CLI = ["--poll-initial-s", "0.05", "--poll-max-s", "0.1"]


@pytest.fixture
def cli(vstub: StubOpenRouterWithVideo, tmp_path: Path) -> dict[str, str]:
    """The environment of a real ``influencer`` process against the stub, and a workspace after QC."""
    workspace_after_qc(tmp_path / "data", scenes=("cafe_morning", "city_street", "beach_sunset"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENROUTER_", "INFLUENCER_"))}
    env.update(
        OPENROUTER_API_KEY=TEST_KEY,
        OPENROUTER_BASE_URL=vstub.base_url,
        INFLUENCER_DATA_ROOT=str(tmp_path / "data"),
        INFLUENCER_MODELS_ROOT=str(tmp_path / "models"),
        INFLUENCER_PROMPT_BANK=BANK,
        INFLUENCER_OPENROUTER_MAX_RETRIES="2",
        PYTHONUNBUFFERED="1",
    )
    return env


def influencer(args: list[str], env: dict[str, str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([INFLUENCER, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def test_dry_run_prints_each_clips_price_and_the_total_and_submits_nothing(
    cli: dict[str, str], vstub: StubOpenRouterWithVideo, tmp_path: Path
) -> None:
    done = influencer(["video", "--dry-run", "--resolution", "1080p", "--duration", "6"], cli, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = [line for line in done.stdout.splitlines() if line.startswith("price: ")]
    # Veo 3.1 Fast in the stub: $0.10/s, $0.15/s at 1080p; 6 s a clip
    assert lines[:3] == [
        f"price: shot {i} [{scene}] 6 s first-frame: $0.9000 (per-video-second-1080p $0.15/s x 6 s)"
        for i, scene in enumerate(("cafe_morning", "city_street", "beach_sunset"), start=1)
    ]
    assert lines[3] == "price: total for 3 clips: $2.7000"
    assert "dry run: nothing was submitted" in done.stdout
    assert vstub.video.submits == [] and not (tmp_path / "data" / "video" / "jobs").exists()


def test_an_unsupported_parameter_is_one_line_before_the_first_submit(
    cli: dict[str, str], vstub: StubOpenRouterWithVideo, tmp_path: Path
) -> None:
    done = influencer(["video", "--resolution", "4K"], cli, tmp_path)
    assert done.returncode == 1
    assert "error: google/veo-3.1-fast: resolution '4K' is not supported; it accepts 720p, 1080p" in done.stderr
    assert vstub.video.submits == []


def test_the_budget_stops_submits_at_the_cap(
    cli: dict[str, str], vstub: StubOpenRouterWithVideo, tmp_path: Path
) -> None:
    # 4 s clips at $0.10/s = $0.40 each: a $1.00 budget pays for two of the three
    done = influencer(["video", "--duration", "4", "--budget", "1.0", "--no-identity", *FAST_CLI], cli, tmp_path)
    assert done.returncode == 4, done.stdout + done.stderr
    assert len(vstub.video.submits) == 2
    assert "shot 3 [beach_sunset] budget" in done.stdout and "budget $1.00 reached" in done.stdout
    assert "clips: budget 1, done 2; 2 submitted" in done.stdout
    again = influencer(["video", "--duration", "4", "--budget", "1.0", "--no-identity", *FAST_CLI], cli, tmp_path)
    assert again.returncode == 4 and len(vstub.video.submits) == 2, "a restart does not get its budget back"
    report = influencer(["report", "costs", "--json"], cli, tmp_path)
    assert report.returncode == 0, report.stderr
    video = json.loads(report.stdout)["video"]
    assert video == [
        {"model": "google/veo-3.1-fast", "jobs": 2, "clips": 2, "identity_passed": 0, "spend_usd": 0.8,
         "estimate_usd": 0.8, "unpriced": 0, "cost_per_clip_usd": 0.4}
    ]  # fmt: skip


def test_failed_jobs_are_reported_and_submitted_again_only_with_retry_failed(
    cli: dict[str, str], vstub: StubOpenRouterWithVideo, tmp_path: Path
) -> None:
    args = ["video", "--max-clips", "1", "--no-identity", *FAST_CLI]
    vstub.video.end_next("expired")
    first = influencer(args, cli, tmp_path)
    assert first.returncode == 2 and "shot 1 [cafe_morning] failed" in first.stdout and "expired" in first.stdout
    again = influencer(args, cli, tmp_path)
    assert again.returncode == 2 and "not submitted again (retry_failed resubmits it)" in again.stdout
    assert len(vstub.video.submits) == 1
    retried = influencer([*args, "--retry-failed"], cli, tmp_path)
    assert retried.returncode == 0, retried.stdout + retried.stderr
    assert "clips: done 1; 1 submitted" in retried.stdout and len(vstub.video.submits) == 2


def test_sigkill_while_polling_then_restart_polls_the_same_jobs_and_submits_nothing(
    cli: dict[str, str], vstub: StubOpenRouterWithVideo, tmp_path: Path
) -> None:
    vstub.video.pending_s = 600.0  # the jobs wait until the test lets them finish
    args = ["video", "--no-identity", *FAST_CLI]
    child = subprocess.Popen(
        [INFLUENCER, *args], env=cli, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            polled = {r.job_id for r in vstub.video.polls()}
            if len(vstub.video.submits) == 3 and len(polled) == 3 and len(vstub.video.polls()) >= 6:
                break
            assert child.poll() is None, child.stdout.read() if child.stdout else ""
            time.sleep(0.05)
        else:
            raise AssertionError("the run never reached polling")
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == -signal.SIGKILL
    ids = {r.job_id for r in vstub.video.submits}
    jobs = tmp_path / "data" / "video" / "jobs"
    assert {json.loads(p.read_text())["job_id"] for p in jobs.glob("*.json")} == ids, "ids on disk before the kill"
    for job in vstub.video.jobs.values():
        job.pending_s = 0.0
    polls_before = len(vstub.video.polls())
    resumed = influencer(args, cli, tmp_path)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert len(vstub.video.submits) == 3, "0 new submits after the kill"
    assert {r.job_id for r in vstub.video.polls()[polls_before:]} == ids, "the same job ids are polled"
    assert "polling it again, not submitting" in resumed.stderr
    assert "clips: done 3; 0 submitted, 3 resumed from the ledger" in resumed.stdout


# ---- the hub --------------------------------------------------------------------------------------------------

TOKEN = "hub-test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SECRET = "whsec-test-0123456789"


@pytest.fixture
def hub(vstub: StubOpenRouterWithVideo, tmp_path: Path) -> Iterator[str]:
    from interfaces.hub.app import create_app
    from tests.support.hub_server import serve

    data = workspace_after_qc(tmp_path / "data")
    settings = Settings(
        openrouter_api_key=TEST_KEY, openrouter_base_url=vstub.base_url, openrouter_max_retries=0, hub_token=TOKEN,
        data_root=data, video_webhook_secret=SECRET,
    )  # fmt: skip
    with serve(create_app(settings)) as url:
        yield url


def event(job_id: str = "job-abc", status: str = "completed") -> bytes:
    body = {"type": f"video.generation.{status}", "created_at": "2026-01-01T00:00:00Z",
            "data": {"id": job_id, "status": status}}  # fmt: skip
    return json.dumps(body, separators=(",", ":")).encode()


def deliver(hub: str, raw: bytes, sig: str | None, key: str = "job-abc-completed") -> httpx.Response:
    headers = {"Content-Type": "application/json", IDEMPOTENCY_HEADER: key}
    if sig is not None:
        headers[SIGNATURE_HEADER] = sig
    return httpx.post(f"{hub}{'/api/video/webhook'}", content=raw, headers=headers, timeout=10)


def test_hub_webhook_good_bad_stale_and_repeated_signatures(hub: str, tmp_path: Path) -> None:
    raw, now = event(), int(time.time())
    good = deliver(hub, raw, signature(SECRET, raw, now))  # no hub token: OpenRouter cannot send one
    assert good.status_code == 200 and good.json() == {"ok": True, "duplicate": False, "job_id": "job-abc"}
    again = deliver(hub, raw, signature(SECRET, raw, now + 5))
    assert again.status_code == 200 and again.json()["duplicate"] is True
    bad = deliver(hub, raw, signature("another-secret", raw, now), key="job-abc-bad")
    assert bad.status_code == 401 and bad.json()["reason"] == "bad_signature"
    changed = deliver(hub, event(status="failed"), signature(SECRET, raw, now), key="job-abc-changed")
    assert changed.status_code == 401 and changed.json()["reason"] == "bad_signature"
    stale = deliver(hub, raw, signature(SECRET, raw, now - 600), key="job-abc-stale")
    assert stale.status_code == 401 and stale.json()["reason"] == "stale"
    missing = deliver(hub, raw, None, key="job-abc-missing")
    assert missing.status_code == 401 and missing.json()["reason"] == "missing_signature"
    notes = list((tmp_path / "data" / "video" / "webhooks").glob("*.json"))
    assert len(notes) == 1, "only the good delivery is recorded, once"
    assert httpx.post(f"{hub}/api/generate/video", json={"prompt": "x"}, timeout=10).status_code == 401


def test_an_unsigned_hub_records_webhooks_only_for_its_own_jobs(vstub: StubOpenRouterWithVideo, tmp_path: Path) -> None:
    """No signing secret anywhere (the setting is unset, no Prefect): the hub still takes OpenRouter's
    deliveries, but only for jobs this workspace submitted, once per job and event, whatever the headers."""
    from interfaces.hub.app import create_app
    from tests.support.hub_server import serve

    data = workspace_after_qc(tmp_path / "data")
    store = VideoStore(data / "video")
    store.save_job(
        JobRecord(key="k0", index=0, scene="cafe_morning", model="google/veo-3.1-fast", parameters={}, job_id="job-new",
                  attempts=[Attempt(job_id="job-old", status="failed")])
    )  # fmt: skip
    (store.jobs / "k1.json").write_text('{"key": "k1", "job_id": "job-damaged", ')  # a torn record still counts
    settings = Settings(
        openrouter_api_key=TEST_KEY, openrouter_base_url=vstub.base_url, hub_token=TOKEN, data_root=data
    )
    with serve(create_app(settings)) as url:
        stranger = deliver(url, event("job-made-up"), None, key="job-made-up-completed")
        assert stranger.status_code == 404 and stranger.json()["reason"] == "unknown_job", stranger.text
        assert "job-made-up" in stranger.json()["detail"]
        for job in ("job-new", "job-old", "job-damaged"):
            got = [deliver(url, event(job), None, key=f"{job}-{i}") for i in range(3)]
            assert [r.status_code for r in got] == [200] * 3, got[0].text
            assert [r.json()["duplicate"] for r in got] == [False, True, True]
    assert len(list(store.webhooks.glob("*.json"))) == 3, "one note per own job, none for the stranger"


def test_hub_submits_a_clip_then_serves_its_status_and_content(
    hub: str, vstub: StubOpenRouterWithVideo, tmp_path: Path
) -> None:
    vstub.video.webhook_url, vstub.video.webhook_secret, vstub.video.webhook_repeats = (
        f"{hub}/api/video/webhook",
        SECRET,
        2,
    )
    body = {"prompt": "she smiles at the camera", "first_frame": "qc_passed/img0.jpg", "duration": 4}
    r = httpx.post(f"{hub}/api/generate/video", json=body, headers=AUTH, timeout=30)
    assert r.status_code == 202, r.text
    out = r.json()
    assert out["ok"] and out["kind"] == "video" and out["model"] == "google/veo-3.1-fast"
    job = out["job"]
    assert job["job_id"] in vstub.video.jobs and job["status"] == "pending"
    assert (tmp_path / "data" / "video" / "jobs" / f"{job['key']}.json").is_file(), "the job id is on disk at once"
    submitted = vstub.video.submits[0].body
    assert submitted["aspect_ratio"] == "9:16" and submitted["resolution"] == "720p"
    assert submitted["frame_images"][0]["frame_type"] == "first_frame"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        status = httpx.get(f"{hub}{job['status_url']}", headers=AUTH, timeout=30).json()
        if status["content_url"]:
            break
        time.sleep(0.1)
    else:
        raise AssertionError(f"the clip never became ready: {status}")
    assert status["status"] == "completed" and status["cost_usd"] == pytest.approx(0.4)
    content = httpx.get(f"{hub}{status['content_url']}", headers=AUTH, timeout=30)
    assert content.status_code == 200 and content.headers["content-type"] == "video/mp4"
    clip = tmp_path / "got.mp4"
    clip.write_bytes(content.content)
    assert probe_video(clip).frames > 0
    assert (
        hashlib.sha256(content.content).hexdigest()
        == hashlib.sha256(vstub.video.jobs[job["job_id"]].content).hexdigest()
    )
    deadline = time.monotonic() + 10
    while len(vstub.video.deliveries) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [d.http_status for d in vstub.video.deliveries] == [200, 200], "signed repeats accepted, recorded once"
    assert len(list((tmp_path / "data" / "video" / "webhooks").glob("*.json"))) == 1
    assert len(vstub.video.submits) == 1
    # an unsupported parameter: one line, nothing submitted
    bad = httpx.post(f"{hub}/api/generate/video", json={**body, "duration": 5}, headers=AUTH, timeout=30)
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "unsupported_parameter"
    assert "duration 5 s is not supported" in bad.json()["error"]["message"] and len(vstub.video.submits) == 1


def test_the_hub_lists_the_stages_clips_with_their_filmstrips(
    hub: str, vstub: StubOpenRouterWithVideo, tmp_path: Path
) -> None:
    from ai_influencer.dataset.workspace import Workspace
    from ai_influencer.openrouter import OpenRouterClient
    from ai_influencer.options.video import VideoOptions
    from ai_influencer.usecases import video as usecase

    ws = Workspace(tmp_path / "data", tmp_path / "models")
    options = VideoOptions(poll_initial_s=0.05, poll_max_s=0.1, max_clips=1)
    with OpenRouterClient(TEST_KEY, base_url=vstub.base_url, max_retries=0) as c:
        api = usecase.video_api(c)
        planning = usecase.plan_video(api, ws, options)
        usecase.make_videos(api, planning, ws, options, identity=usecase.identity_checker(Settings(), ws))
    listed = httpx.get(f"{hub}/api/video", headers=AUTH, timeout=30).json()
    assert listed["count"] == 1 and listed["identity_failed"] == 0
    clip = listed["clips"][0]
    assert clip["scene"] == "cafe_morning" and clip["verdict"] == "passed" and clip["url"].endswith(".mp4")
    film = httpx.get(f"{hub}{clip['filmstrip']}", headers=AUTH, timeout=30)
    assert film.status_code == 200 and film.headers["content-type"] == "image/png"
    assert httpx.get(f"{hub}{clip['url']}", headers=AUTH, timeout=30).headers["content-type"] == "video/mp4"


def test_the_pages_play_the_clips_pipeline_with_filmstrip_and_verdict_generate_after_polling(
    hub: str, vstub: StubOpenRouterWithVideo, tmp_path: Path
) -> None:
    from playwright.sync_api import sync_playwright

    from ai_influencer.dataset.workspace import Workspace
    from ai_influencer.openrouter import OpenRouterClient
    from ai_influencer.options.video import VideoOptions
    from ai_influencer.usecases import video as usecase
    from tests.test_hub_browser import CHROMIUM, SHOTS

    if not Path(CHROMIUM).exists():
        pytest.skip("Debian chromium is not installed")
    ws = Workspace(tmp_path / "data", tmp_path / "models")
    vstub.video.subject_for = lambda body: "other" if "city_street" in body["prompt"] else None
    options = VideoOptions(poll_initial_s=0.05, poll_max_s=0.1)
    with OpenRouterClient(TEST_KEY, base_url=vstub.base_url, max_retries=0) as c:
        api = usecase.video_api(c)
        usecase.make_videos(
            api, usecase.plan_video(api, ws, options), ws, options, identity=usecase.identity_checker(Settings(), ws)
        )
    SHOTS.mkdir(parents=True, exist_ok=True)
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
    ]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=flags)
        try:
            pg = browser.new_context(viewport={"width": 1200, "height": 900}).new_page()
            pg.set_default_timeout(20_000)
            pg.goto(hub + "/pipeline")
            pg.fill("#token", TOKEN)
            pg.dispatch_event("#token", "change")
            pg.wait_for_selector(".clip video")
            assert "2 clips · 1 failed identity" in pg.text_content("#clips-summary")
            pg.wait_for_function(
                "() => [...document.querySelectorAll('.clip video')].every(v => v.readyState >= 1 && v.videoWidth > 0)"
            )
            pg.wait_for_function(
                "() => [...document.querySelectorAll('.clip img.filmstrip')].every(i => i.complete && i.naturalWidth)"
            )
            headings = [h.text_content() for h in pg.query_selector_all(".clip h3")]
            assert headings[0].startswith("shot 1 · cafe_morning · identity passed")
            assert headings[1].startswith("shot 2 · city_street · identity failed")
            pg.screenshot(path=str(SHOTS / "hub-pipeline-clips.png"), full_page=True)
            # the Generate page: a video is a job; the page polls it until the clip plays
            pg.goto(hub + "/")
            pg.select_option("#kind", "video")
            pg.fill("#prompt", "she waves at the camera")
            pg.click("#generate")
            pg.wait_for_selector("#result-video")
            pg.wait_for_function("() => document.querySelector('#result-video').readyState >= 1")
            assert "model google/veo-3.1-fast · job " in pg.text_content("#result-usage")
            assert len(vstub.video.submits) == 3
        finally:
            browser.close()


def test_the_gui_video_button_runs_the_stage_and_streams_its_log(
    vstub: StubOpenRouterWithVideo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tkinter as tk

    from interfaces.desktop.app import DesktopApp
    from tests.support.xvfb import XVFB, session_display
    from tests.test_desktop import pump

    if XVFB is None:
        pytest.skip("Xvfb is not installed")
    data = workspace_after_qc(tmp_path / "data")
    screen = session_display()  # one display for the whole session: tests/support/xvfb.py says why
    monkeypatch.setenv("DISPLAY", screen)
    monkeypatch.delenv("OPENROUTER_API_KEY", raising=False)
    settings = Settings(
        data_root=data, openrouter_api_key=TEST_KEY, openrouter_base_url=vstub.base_url, prompt_bank=Path(BANK)
    )
    root = tk.Tk()
    app = DesktopApp(root, settings)
    try:
        root.update()
        app.buttons["video"].invoke()
        pump(app, lambda: "[exit " in app.log_text(), timeout=120)
        log = app.log_text()
        assert " video --model google/veo-3.1-fast " in log and "[exit 0]" in log, log[-3000:]
        assert "price: total for 2 clips:" in log and "clips: done 2; 2 submitted" in log
        assert len(vstub.video.submits) == 2 and TEST_KEY not in log
    finally:
        app.runner.stop(grace_s=2)
        root.destroy()


def test_the_runs_identity_checker_gives_each_clip_its_own_verdict_when_clips_are_checked_at_once(
    tmp_path: Path,
) -> None:
    """The flow's clip tasks finish together; dlib's descriptor network is not thread-safe (two clips checked
    at once mixed their faces: the persona's clip failed with "another person" in 5 of 5 tries)."""
    import threading

    from PIL import Image

    from ai_influencer.dataset.workspace import Workspace
    from ai_influencer.usecases import video as usecase
    from tests.support.video_stub import cover, encode_mp4

    ws = Workspace(workspace_after_qc(tmp_path / "data"), tmp_path / "models")
    clips = []
    for name in ("obama.jpg", "biden.jpg"):
        image = Image.open(face(name)).convert("RGB")
        clip = tmp_path / f"{name}.mp4"
        clip.write_bytes(encode_mp4([cover(image, (270, 480), 1 + 0.02 * i, 0.0) for i in range(18)], 6))
        clips.append(clip)
    checker = usecase.identity_checker(Settings(), ws)
    for _ in range(2):
        got: list[str] = ["", ""]

        def check(i: int, into: list[str]) -> None:
            into[i] = checker.check(clips[i]).verdict

        threads = [threading.Thread(target=check, args=(i, got)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert got == ["passed", "failed"]


def test_a_signed_webhook_through_the_hub_wakes_a_waiting_run(
    hub: str, vstub: StubOpenRouterWithVideo, tmp_path: Path
) -> None:
    """Polls 60 s apart: the clip is kept within seconds only because the hub's webhook note wakes the run."""
    vstub.video.webhook_url, vstub.video.webhook_secret = f"{hub}/api/video/webhook", SECRET
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENROUTER_", "INFLUENCER_"))}
    env.update(
        OPENROUTER_API_KEY=TEST_KEY, OPENROUTER_BASE_URL=vstub.base_url, INFLUENCER_DATA_ROOT=str(tmp_path / "data"),
        INFLUENCER_PROMPT_BANK=BANK, PYTHONUNBUFFERED="1",
    )  # fmt: skip
    args = ["video", "--max-clips", "1", "--no-identity", "--poll-initial-s", "60", "--poll-max-s", "60"]
    start = time.monotonic()
    done = influencer(args, env, tmp_path, timeout=50)
    assert done.returncode == 0, done.stdout + done.stderr
    assert time.monotonic() - start < 40, "woken by the webhook, not by the next poll"
    assert "webhook says completed; polling now" in done.stderr
    assert [d.http_status for d in vstub.video.deliveries] == [200]
    assert "clips: done 1; 1 submitted" in done.stdout
