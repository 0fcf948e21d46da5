"""The video job ledger end to end against the video stub: one clip per shot, job ids on disk before any
poll, resumed runs (stopped, or SIGKILLed in another process) poll the same jobs and submit nothing, failed
jobs resubmitted only on request, the budget, the deadline, and webhooks waking the poller."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from ai_influencer.dataset.manifest import ImageRecord, rebuild_manifest, write_sidecar
from ai_influencer.openrouter import OpenRouterClient
from ai_influencer.openrouter.videos import VideoAPI, VideoJob
from ai_influencer.pacing import StopFlag
from ai_influencer.qc.report import QCRow, write_report
from ai_influencer.storyboard import Shot, Storyboard
from ai_influencer.video.clips import FIRST_FRAME, REFERENCES, ClipPlanning, clip_seconds, plan_clips, split_script
from ai_influencer.video.jobs import run_video
from ai_influencer.video.ledger import VideoStore
from ai_influencer.video.polling import VideoJobDeadlineError, WaitPolicy, wait_for_job
from ai_influencer.video.webhooks import WebhookError, WebhookInbox, receive
from tests.conftest import REPO, TEST_KEY
from tests.support.assets import face
from tests.support.video_stub import StubVideoAPI

VEO = "google/veo-3.1-fast"
FAST = WaitPolicy(poll_initial_s=0.05, poll_max_s=0.1, deadline_s=60, wake_check_s=0.02)
SCRIPT = "Good morning from the beach. The sea is calm today! Now a coffee in town. See you tomorrow."


def storyboard(scenes: tuple[str, ...] = ("beach", "cafe", "street")) -> Storyboard:
    shots = [
        Shot(scene=s, description=f"she walks through the {s}", lighting="golden hour", outfit="linen", pose="walk",
             on_screen_text="")
        for s in scenes
    ]  # fmt: skip
    return Storyboard(
        title="a day out",
        concept="a calm day",
        shots=shots,
        spoken_script=SCRIPT,
        caption_seeds=[f"seed {i}" for i in range(5)],
        hashtags=["#day"],
    )


@pytest.fixture
def data(tmp_path: Path) -> Path:
    """A workspace after prepare, generate and QC: references, QC-passed images with their scenes, a storyboard."""
    root = tmp_path / "data"
    cleaned, synth, passed = root / "cleaned", root / "synth_openrouter", root / "qc_passed"
    for folder in (cleaned, synth, passed):
        folder.mkdir(parents=True)
    shutil.copy(face("obama2.jpg"), cleaned / "ref_a.jpg")
    shutil.copy(face("obama3.jpg"), cleaned / "ref_b.jpg")
    rows = []
    # beach: two accepted (the higher score is the first frame), one rejected; cafe: one; street: one
    for name, scene, score, verdict in (
        ("b1.jpg", "beach", 0.51, "accepted"),
        ("b2.jpg", "beach", 0.58, "accepted"),
        ("b3.jpg", "beach", 0.90, "rejected"),
        ("c1.jpg", "cafe", 0.55, "accepted"),
        ("s1.jpg", "street", 0.50, "accepted"),
    ):
        shutil.copy(face("obama.jpg"), synth / name)
        write_sidecar(synth, ImageRecord(key=Path(name).stem, file=name, model="m", prompt="p", scene=scene))
        if verdict == "accepted":
            shutil.copy(synth / name, passed / name)
        rows.append(QCRow(name, 1, score, 120.0, "", verdict, "" if verdict == "accepted" else "identity"))
    rebuild_manifest(synth)
    write_report(rows, passed / "qc_report.csv")
    (root / "text").mkdir()
    (root / "text" / "storyboard.json").write_text(storyboard().model_dump_json())
    return root


@pytest.fixture
def vstub() -> Iterator[StubVideoAPI]:
    with StubVideoAPI(valid_keys=[TEST_KEY], pending_s=0.1, running_s=0.1) as server:
        yield server


@pytest.fixture
def api(vstub: StubVideoAPI) -> Iterator[VideoAPI]:
    with OpenRouterClient(
        TEST_KEY, base_url=vstub.base_url, backoff_initial=0.01, retry_cap=0.2, max_retries=2, timeout=10
    ) as client:
        yield VideoAPI(client)


def plans(api: VideoAPI, data: Path, *, mode: str = REFERENCES, model: str = VEO, **kw: Any) -> ClipPlanning:
    return plan_clips(
        storyboard(),
        api.get_model(model),
        mode=mode,
        qc_report=data / "qc_passed" / "qc_report.csv",
        qc_dir=data / "qc_passed",
        manifest=data / "synth_openrouter" / "manifest.json",
        references_dir=data / "cleaned",
        resolution=kw.pop("resolution", "720p"),
        **kw,
    )


# ---- planning ------------------------------------------------------------------------------------------------


def test_the_script_is_shared_out_in_order_and_durations_snap_to_the_model() -> None:
    lines = split_script(SCRIPT, 3)
    # 5 + 5 + 5 + 3 words: contiguous runs of about a third each, no sentence cut
    assert lines == [
        "Good morning from the beach.",
        "The sea is calm today!",
        "Now a coffee in town. See you tomorrow.",
    ]
    assert " ".join(lines) == SCRIPT, "every sentence once, in order"
    assert split_script("One line only.", 3) == ["One line only.", "", ""]
    assert clip_seconds("word " * 25, supported=[4, 6, 8]) == 8  # 25 words = 11 s: the longest the model has
    assert clip_seconds("five words are said here", supported=[4, 6, 8]) == 4
    assert clip_seconds("five words are said here", supported=[5, 10]) == 5
    assert clip_seconds("word " * 12) == 6  # 12 / 2.5 + 1 = 5.8 s, no listing: whole seconds


def test_first_frame_plans_use_each_scenes_best_qc_passed_image(api: VideoAPI, data: Path) -> None:
    planning = plans(api, data, mode=FIRST_FRAME)
    assert [p.scene for p in planning.plans] == ["beach", "cafe", "street"]
    firsts = [p.request.first_frame for p in planning.plans]
    assert firsts == [data / "qc_passed" / n for n in ("b2.jpg", "c1.jpg", "s1.jpg")], "highest accepted score"
    beach = planning.plans[0]
    assert beach.request.aspect_ratio == "9:16" and beach.request.duration == 4  # 5 words: 3 s -> the shortest
    assert planning.plans[2].request.duration == 6  # 8 words: 4.2 s -> 6 s, the next the model has
    assert beach.speaks and 'says: "Good morning from the beach."' in beach.request.prompt
    assert beach.request.generate_audio is True
    assert len({p.key for p in planning.plans}) == 3
    assert planning.total_usd == pytest.approx(sum(p.estimate.usd for p in planning.plans))
    assert planning.price_lines()[-1] == f"total for 3 clips: ${planning.total_usd:.4f}"
    # a silent model gets no line to say; a scene without a QC-passed image is left out, the others go on
    (data / "qc_passed" / "c1.jpg").unlink()
    silent = plans(api, data, mode=FIRST_FRAME, model="bytedance/seedance-2.0-fast")
    assert [p.scene for p in silent.plans] == ["beach", "street"]
    assert "says" not in silent.plans[0].request.prompt and silent.plans[0].request.generate_audio is None
    assert silent.problems == [
        f"shot 2 [cafe]: no QC-passed image of this scene in {data / 'qc_passed' / 'qc_report.csv'}; left out "
        "(generate more for it, or use mode references)"
    ]


def test_same_inputs_same_keys(api: VideoAPI, data: Path) -> None:
    first = [p.key for p in plans(api, data).plans]
    assert first == [p.key for p in plans(api, data).plans]
    assert first != [p.key for p in plans(api, data, seed=7).plans], "a changed request is a new clip"


# ---- one run, and the next ------------------------------------------------------------------------------------


def test_one_clip_per_shot_with_sidecars_and_manifest_and_a_rerun_pays_nothing(
    api: VideoAPI, vstub: StubVideoAPI, data: Path
) -> None:
    store = VideoStore(data / "video")
    planning = plans(api, data)
    result = run_video(api, planning.plans, store, policy=FAST)
    assert result.counts == {"done": 3} and result.submitted == 3
    for outcome, plan in zip(result.outcomes, planning.plans, strict=True):
        clip = json.loads(store.sidecar(plan.key).read_text())
        assert store.clip(plan.key).is_file()
        assert clip["job_id"] == outcome.job_id and clip["job_id"] in vstub.jobs
        assert clip["model"] == VEO and clip["parameters"]["mode"] == "reference-to-video"
        assert clip["parameters"]["input_references"][0]["sha256"]
        assert clip["cost_usd"] == pytest.approx(vstub.jobs[clip["job_id"]].cost)
        assert clip["probe"]["codec"] == "h264" and clip["probe"]["has_audio"] is True
        assert clip["timings"]["submitted_at"] and clip["timings"]["wait_s"] is not None
        assert clip["script_line"] == plan.script_line
        job = json.loads(store.job_file(plan.key).read_text())
        assert job["job_id"] == clip["job_id"] and job["status"] == "completed" and job["downloaded"]
    manifest = json.loads(store.manifest.read_text())
    assert manifest["count"] == 3 and manifest["waiting"] == [] and manifest["failed"] == []
    assert manifest["total_cost_usd"] == pytest.approx(sum(j.cost for j in vstub.jobs.values()))
    requests_before = len(vstub.requests)
    again = run_video(api, planning.plans, store, policy=FAST)
    assert again.counts == {"skipped": 3} and again.submitted == 0
    assert len(vstub.requests) == requests_before, "a finished batch is not even polled"


def test_the_job_id_is_on_disk_before_the_first_poll(api: VideoAPI, vstub: StubVideoAPI, data: Path) -> None:
    store = VideoStore(data / "video")
    plan = plans(api, data).plans[0]
    seen_on_first_poll: list[Any] = []
    real_poll = api.poll

    def poll(job_id: str) -> VideoJob:
        if not seen_on_first_poll:
            seen_on_first_poll.append(json.loads(store.job_file(plan.key).read_text())["job_id"])
        return real_poll(job_id)

    api.poll = poll  # type: ignore[method-assign]
    run_video(api, [plan], store, policy=FAST)
    assert seen_on_first_poll == [vstub.submits[0].job_id]


def test_a_stopped_run_resumes_the_same_jobs_without_submitting(api: VideoAPI, vstub: StubVideoAPI, data: Path) -> None:
    vstub.pending_s = 600.0  # the jobs are still pending when the run stops
    store = VideoStore(data / "video")
    planning = plans(api, data)
    stop = StopFlag()

    def stop_while_polling() -> None:
        while len(vstub.polls()) < 6 and not stop.is_set():
            time.sleep(0.01)
        stop.request("test: stop while polling")

    watcher = threading.Thread(target=stop_while_polling, daemon=True)
    watcher.start()
    first = run_video(api, planning.plans, store, policy=FAST, stop=stop)
    watcher.join(timeout=5)
    assert first.counts == {"waiting": 3} and len(vstub.polls()) >= 6
    assert all("stays in the ledger" in (o.error or "") for o in first.outcomes)
    ids = {o.job_id for o in first.outcomes}
    assert ids == {r.job_id for r in vstub.submits}
    manifest = json.loads(store.manifest.read_text())
    assert {w["job_id"] for w in manifest["waiting"]} == ids
    for job in vstub.jobs.values():
        job.pending_s = 0.0
    polls_before = len(vstub.polls())
    second = run_video(api, planning.plans, store, policy=FAST)
    assert second.counts == {"done": 3} and second.submitted == 0 and second.resumed == 3
    assert len(vstub.submits) == 3, "0 new submits"
    assert {r.job_id for r in vstub.polls()[polls_before:]} == ids, "the same job ids are polled"


def test_sigkill_during_polling_then_restart_polls_the_same_jobs(vstub: StubVideoAPI, data: Path) -> None:
    """A real SIGKILL of a run that is polling (no handler runs), then a fresh process resumes."""
    vstub.pending_s = 600.0
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.support.video_child", vstub.base_url, str(data)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if len(vstub.submits) == 3 and len({r.job_id for r in vstub.polls()}) == 3 and len(vstub.polls()) >= 6:
                break
            assert child.poll() is None, child.stdout.read() if child.stdout else ""
            time.sleep(0.05)
        else:
            raise AssertionError("the child never reached polling")
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == -signal.SIGKILL
    ids = {r.job_id for r in vstub.submits}
    for job in vstub.jobs.values():
        job.pending_s = 0.0
    polls_before = len(vstub.polls())
    resumed = subprocess.run(
        [sys.executable, "-m", "tests.support.video_child", vstub.base_url, str(data)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert 'RESULT {"done": 3}' in resumed.stdout
    assert "polling it again, not submitting" in resumed.stdout
    assert len(vstub.submits) == 3, "0 new submits after the kill"
    assert {r.job_id for r in vstub.polls()[polls_before:]} == ids
    store = VideoStore(data / "video")
    assert {json.loads(p.read_text())["job_id"] for p in store.root.glob("*.json") if p.name != "manifest.json"} == ids


# ---- jobs that end badly ----------------------------------------------------------------------------------------


def test_failed_and_expired_jobs_are_reported_and_resubmitted_only_on_request(
    api: VideoAPI, vstub: StubVideoAPI, data: Path
) -> None:
    store = VideoStore(data / "video")
    planning = plans(api, data)
    vstub.end_next("failed", "Content policy violation")
    vstub.end_next("expired")
    first = run_video(api, planning.plans, store, policy=FAST)
    assert [o.status for o in first.outcomes] == ["failed", "failed", "done"]
    assert "failed: Content policy violation" in (first.outcomes[0].error or "")
    assert "expired: Job exceeded maximum time to live" in (first.outcomes[1].error or "")
    manifest = json.loads(store.manifest.read_text())
    assert {f["status"] for f in manifest["failed"]} == {"failed", "expired"}
    again = run_video(api, planning.plans, store, policy=FAST)
    assert [o.status for o in again.outcomes] == ["failed", "failed", "skipped"] and again.submitted == 0
    assert "retry_failed resubmits it" in (again.outcomes[0].error or "")
    assert len(vstub.submits) == 3
    retried = run_video(api, planning.plans, store, policy=FAST, retry_failed=True)
    assert [o.status for o in retried.outcomes] == ["done", "done", "skipped"] and retried.submitted == 2
    record = json.loads(store.job_file(planning.plans[0].key).read_text())
    assert [a["status"] for a in record["attempts"]] == ["failed"] and record["status"] == "completed"
    assert record["attempts"][0]["job_id"] == first.outcomes[0].job_id != record["job_id"]


def test_an_uncertain_submit_is_never_repeated_without_asking(api: VideoAPI, vstub: StubVideoAPI, data: Path) -> None:
    store = VideoStore(data / "video")
    plan = plans(api, data).plans[0]
    vstub.inject("submit-lost")
    first = run_video(api, [plan], store, policy=FAST)
    assert first.outcomes[0].status == "failed" and "may exist and be billed" in (first.outcomes[0].error or "")
    assert json.loads(store.job_file(plan.key).read_text())["status"] == "uncertain"
    assert run_video(api, [plan], store, policy=FAST).submitted == 0
    assert len(vstub.jobs) == 1
    assert run_video(api, [plan], store, policy=FAST, retry_failed=True).counts == {"done": 1}
    assert len(vstub.jobs) == 2


# ---- money and time -------------------------------------------------------------------------------------------


def test_the_budget_stops_submits_at_the_cap_and_a_restart_does_not_reset_it(
    api: VideoAPI, vstub: StubVideoAPI, data: Path
) -> None:
    store = VideoStore(data / "video")
    planning = plans(api, data, duration=4)  # 4 s x $0.10 = $0.40 a clip
    assert [p.estimate.usd for p in planning.plans] == [0.4, 0.4, 0.4]
    first = run_video(api, planning.plans, store, policy=FAST, budget_usd=1.0)
    assert [o.status for o in first.outcomes] == ["done", "done", "budget"]
    assert "budget $1.00 reached: committed $0.80, shot 3 would add ~$0.40" in (first.outcomes[2].error or "")
    assert len(vstub.submits) == 2
    again = run_video(api, planning.plans, store, policy=FAST, budget_usd=1.0)
    assert [o.status for o in again.outcomes] == ["skipped", "skipped", "budget"] and len(vstub.submits) == 2


def test_a_budget_without_a_price_refuses_unless_an_estimate_is_given(
    api: VideoAPI, vstub: StubVideoAPI, data: Path
) -> None:
    store = VideoStore(data / "video")
    planning = plans(api, data, model="acme/token-video", mode=FIRST_FRAME)
    assert planning.total_usd is None
    refused = run_video(api, planning.plans, store, policy=FAST, budget_usd=5.0)
    assert {o.status for o in refused.outcomes} == {"budget"} and not vstub.submits
    assert "cannot be enforced: no price for acme/token-video" in (refused.outcomes[0].error or "")
    allowed = run_video(api, planning.plans, store, policy=FAST, budget_usd=1.0, estimate_usd=0.45)
    assert [o.status for o in allowed.outcomes] == ["done", "done", "budget"]


def test_a_job_past_its_deadline_is_reported_and_kept_for_the_next_run(
    api: VideoAPI, vstub: StubVideoAPI, data: Path
) -> None:
    vstub.pending_s = 600.0
    store = VideoStore(data / "video")
    plan = plans(api, data).plans[0]
    short = WaitPolicy(poll_initial_s=0.05, poll_max_s=0.1, deadline_s=0.4, wake_check_s=0.02)
    first = run_video(api, [plan], store, policy=short)
    assert first.outcomes[0].status == "waiting"
    assert "still pending" in (first.outcomes[0].error or "") and "deadline 0.4 s" in (first.outcomes[0].error or "")
    with pytest.raises(VideoJobDeadlineError, match="run again to keep waiting"):
        wait_for_job(api, store, plan.key, policy=short)
    for job in vstub.jobs.values():
        job.pending_s = 0.0
    record = wait_for_job(api, store, plan.key, policy=FAST)
    assert record.status == "completed" and record.job_id == first.outcomes[0].job_id
    assert run_video(api, [plan], store, policy=FAST).counts == {"done": 1} and len(vstub.submits) == 1


# ---- webhooks ----------------------------------------------------------------------------------------------------


class _Receiver:
    """What the hub route will do: hand the raw body and headers to ``webhooks.receive``."""

    def __init__(self, inbox: WebhookInbox, secret: str) -> None:
        self.answers: list[tuple[int, str]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    got = receive(inbox, raw, dict(self.headers.items()), secret=secret)
                    status, what = 200, "duplicate" if got.duplicate else "recorded"
                except WebhookError as exc:
                    status, what = 400, exc.reason
                receiver.answers.append((status, what))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/api/webhooks/video"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_signed_repeated_webhooks_wake_the_poller_once_each(api: VideoAPI, vstub: StubVideoAPI, data: Path) -> None:
    store = VideoStore(data / "video")
    receiver = _Receiver(store.inbox(), "whsec_test")
    vstub.webhook_url, vstub.webhook_secret, vstub.webhook_repeats = receiver.url, "whsec_test", 2
    vstub.pending_s = 1.5  # the first poll (right after the submits) finds every job pending
    planning = plans(api, data)
    # Without a webhook the second poll would come a minute after the first; the stop at 20 s proves the wake.
    slow = WaitPolicy(poll_initial_s=60, poll_max_s=60, deadline_s=120, wake_check_s=0.05)
    stop = StopFlag()
    timer = threading.Timer(20, stop.request, args=("test: no webhook woke the poller",))
    timer.start()
    try:
        result = run_video(api, planning.plans, store, policy=slow, stop=stop)
    finally:
        timer.cancel()
        receiver.close()
    assert result.counts == {"done": 3}
    assert sorted(receiver.answers) == [(200, "duplicate")] * 3 + [(200, "recorded")] * 3
    polls = [len(vstub.polls(r.job_id)) for r in vstub.submits]
    assert max(polls) <= 2 and 2 in polls, f"one poll after the submit, one when the webhook arrived: {polls}"
    assert len(list(store.webhooks.glob("*.json"))) == 3


def test_refused_webhooks_leave_polling_as_the_fallback(api: VideoAPI, vstub: StubVideoAPI, data: Path) -> None:
    store = VideoStore(data / "video")
    receiver = _Receiver(store.inbox(), "whsec_test")
    vstub.webhook_url, vstub.webhook_secret = receiver.url, "whsec_test"
    vstub.webhook_time_offset = -400  # every delivery is signed 400 s in the past: a replay
    try:
        result = run_video(api, plans(api, data).plans, store, policy=FAST)
    finally:
        receiver.close()
    assert result.counts == {"done": 3}
    assert receiver.answers == [(400, "stale")] * 3
    assert not list(store.webhooks.glob("*.json"))


# ---- identity on every clip -----------------------------------------------------------------------------------


def test_every_clip_is_checked_for_identity_and_the_stranger_fails(
    api: VideoAPI, vstub: StubVideoAPI, data: Path
) -> None:
    from ai_influencer.video.identity import ClipIdentityChecker
    from ai_influencer.vision.faces import DlibEngine

    checker = ClipIdentityChecker(DlibEngine(), sorted((data / "cleaned").iterdir()))
    vstub.subject_for = lambda body: "other" if "beach" in body["prompt"] else None
    store = VideoStore(data / "video")
    planning = plans(api, data, mode=FIRST_FRAME)
    result = run_video(api, planning.plans[:2], store, policy=FAST, identity=checker)
    assert result.counts == {"done": 2}
    assert [o.identity_verdict for o in result.outcomes] == ["failed", "passed"]
    beach = json.loads(store.sidecar(planning.plans[0].key).read_text())
    assert beach["identity"]["reason"].startswith("another person on")
    assert beach["filmstrip"] == str(store.filmstrip(planning.plans[0].key))
    assert store.filmstrip(planning.plans[0].key).is_file() and store.filmstrip(planning.plans[1].key).is_file()
    assert json.loads(store.manifest.read_text())["identity_failed"] == 1


def test_max_in_flight_holds_back_submits_until_a_job_ends(api: VideoAPI, vstub: StubVideoAPI, data: Path) -> None:
    store = VideoStore(data / "video")
    result = run_video(api, plans(api, data).plans, store, policy=FAST, max_in_flight=1)
    assert result.counts == {"done": 3}
    jobs = sorted(vstub.jobs.values(), key=lambda j: j.created)
    for earlier, later in itertools.pairwise(jobs):
        assert later.created >= earlier.created + earlier.pending_s + earlier.running_s, "one job at a time"


def test_no_credits_stops_further_submits_and_the_jobs_already_paid_are_still_kept(
    api: VideoAPI, vstub: StubVideoAPI, data: Path
) -> None:
    store = VideoStore(data / "video")

    def on_event(message: str) -> None:
        if "submitted" in message:
            vstub.inject("submit-402")  # the next submit finds the credits gone

    result = run_video(api, plans(api, data).plans, store, policy=FAST, on_event=on_event)
    assert [o.status for o in result.outcomes] == ["done", "failed", "failed"]
    assert "402" in (result.outcomes[1].error or "")
    assert (result.outcomes[2].error or "").startswith("not submitted: OpenRouter 402")
    assert len(vstub.submits) == 1 and len([r for r in vstub.requests if r.method == "POST"]) == 2
