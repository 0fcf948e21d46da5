"""The Video API client against the video stub (a real HTTP server on 127.0.0.1): discovery, checks before
paying, prices, submit/poll/download, and what is retried (never a submit that may have created a job)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from ai_influencer.openrouter import AuthError, OpenRouterClient
from ai_influencer.openrouter.videos import (
    PriceEstimate,
    SubmitUncertainError,
    VideoAPI,
    VideoModel,
    VideoParameterError,
    VideoRequest,
    estimate_price,
)
from ai_influencer.pacing import StopFlag, StopRequested
from ai_influencer.video.frames import probe_video
from tests.conftest import TEST_KEY
from tests.support.assets import face
from tests.support.video_stub import StubVideoAPI


@pytest.fixture
def vstub() -> Iterator[StubVideoAPI]:
    with StubVideoAPI(valid_keys=[TEST_KEY], pending_s=0.1, running_s=0.15) as server:
        yield server


@pytest.fixture
def api(vstub: StubVideoAPI) -> Iterator[VideoAPI]:
    with OpenRouterClient(
        TEST_KEY, base_url=vstub.base_url, backoff_initial=0.01, retry_cap=0.2, max_retries=3, timeout=10
    ) as client:
        yield VideoAPI(client)


def _wait(api: VideoAPI, job_id: str) -> list[str]:
    seen = []
    for _ in range(200):
        job = api.poll(job_id)
        if not seen or seen[-1] != job.status:
            seen.append(job.status)
        if job.terminal:
            return seen
        threading.Event().wait(0.02)
    raise AssertionError(f"job {job_id} never ended: {seen}")


def test_discovery_reads_the_listing_and_caches_it(api: VideoAPI, vstub: StubVideoAPI) -> None:
    models = {m.id: m for m in api.list_models()}
    veo = models["google/veo-3.1-fast"]
    assert veo.supported_durations == [4, 6, 8]
    assert veo.supported_frame_images == ["first_frame", "last_frame"]
    assert veo.pricing_skus["per-video-second-1080p"] == "0.15"
    assert veo.allowed_passthrough_parameters == ["output_config"]
    assert models["minimax/hailuo-2.3"].supported_frame_images is None
    api.list_models()
    api.get_model("bytedance/seedance-2.0-fast")
    listing_calls = [r for r in vstub.requests if r.path.endswith("/videos/models")]
    assert len(listing_calls) == 1, "the model list is cached"
    api.list_models(refresh=True)
    assert len([r for r in vstub.requests if r.path.endswith("/videos/models")]) == 2


def test_submit_poll_download_round_trip(api: VideoAPI, vstub: StubVideoAPI, tmp_path: Path) -> None:
    vstub.pending_s, vstub.running_s = 0.4, 0.8  # wide enough for polls every 20 ms to see every state
    request = VideoRequest(
        model="google/veo-3.1-fast",
        prompt="she waves at the camera",
        duration=4,
        resolution="720p",
        aspect_ratio="9:16",
        first_frame=face("obama.jpg"),
    )
    job = api.submit(request)
    assert job.status == "pending" and job.id in vstub.jobs
    sent = vstub.submits[0].body
    assert sent["frame_images"][0]["frame_type"] == "first_frame"
    assert sent["frame_images"][0]["image_url"]["url"].startswith("data:image/jpeg;base64,")
    assert (sent["duration"], sent["aspect_ratio"], sent["resolution"]) == (4, "9:16", "720p")
    assert _wait(api, job.id) == ["pending", "in_progress", "completed"]
    done = api.poll(job.id)
    assert done.usage is not None and done.usage.cost == pytest.approx(0.4)
    assert done.usage.cost == pytest.approx(api.estimate(request).usd)
    got = api.download(job.id, tmp_path / "clip.mp4", verify=probe_video)
    probe = probe_video(got.path)
    assert (probe.codec, probe.width, probe.height, probe.has_audio) == ("h264", 270, 480, True)
    assert got.bytes == got.path.stat().st_size and len(got.sha256) == 64
    assert [p.name for p in tmp_path.iterdir()] == ["clip.mp4"]


@pytest.mark.parametrize(
    ("request_kw", "expected"),
    [
        ({"model": "acme/nope"}, "acme/nope: model is not a video model on OpenRouter; known: acme/token-video,"),
        ({"aspect_ratio": "1:1"}, "google/veo-3.1-fast: aspect_ratio '1:1' is not supported; it accepts 16:9, 9:16"),
        ({"duration": 5}, "google/veo-3.1-fast: duration 5 s is not supported; it accepts 4, 6, 8 s"),
        ({"resolution": "4K"}, "google/veo-3.1-fast: resolution '4K' is not supported; it accepts 720p, 1080p"),
        (
            {"model": "bytedance/seedance-2.0-fast", "duration": 5, "last_frame": "OBAMA"},
            "bytedance/seedance-2.0-fast: frame_images last_frame is not supported; it accepts first_frame",
        ),
        (
            {"model": "minimax/hailuo-2.3", "aspect_ratio": "16:9", "duration": 6, "first_frame": "OBAMA"},
            "minimax/hailuo-2.3: frame_images first_frame is not supported; it takes no frame images",
        ),
        (
            {"model": "bytedance/seedance-2.0-fast", "duration": 5, "generate_audio": True},
            "bytedance/seedance-2.0-fast: generate_audio is not supported",
        ),
        (
            {"provider_options": {"google-vertex": {"personGeneration": "allow"}}},
            "google/veo-3.1-fast: provider.options google-vertex.personGeneration is not a passthrough parameter; "
            "it accepts output_config",
        ),
        ({"size": "720x1280"}, "google/veo-3.1-fast: size '720x1280' given with resolution/aspect_ratio"),
        ({"callback_url": "http://example.com/hook"}, "callback_url 'http://example.com/hook' must be an https:// URL"),
        ({"prompt": "  "}, "google/veo-3.1-fast: prompt is empty"),
    ],
)
def test_a_parameter_the_model_cannot_take_fails_in_one_line_before_any_submit(
    api: VideoAPI, vstub: StubVideoAPI, request_kw: dict, expected: str
) -> None:
    kw = {"model": "google/veo-3.1-fast", "prompt": "a walk", "duration": 4, "aspect_ratio": "9:16", **request_kw}
    for frame in ("first_frame", "last_frame"):
        if kw.get(frame) == "OBAMA":
            kw[frame] = face("obama.jpg")
    with pytest.raises(VideoParameterError) as err:
        api.submit(VideoRequest(**kw))
    message = str(err.value)
    assert expected in message
    assert "\n" not in message
    assert not [r for r in vstub.requests if r.method == "POST"], "nothing may be sent before the check passes"


def test_price_estimates_from_pricing_skus(api: VideoAPI) -> None:
    models = {m.id: m for m in api.list_models()}
    veo, seedance = models["google/veo-3.1-fast"], models["bytedance/seedance-2.0-fast"]

    def price(model: VideoModel, **kw: object) -> PriceEstimate:
        return estimate_price(model, VideoRequest(model=model.id, prompt="x", **kw))

    assert price(veo, duration=8, resolution="1080p").usd == pytest.approx(1.2)  # the resolution variant wins
    assert price(veo, duration=4, resolution="720p").usd == pytest.approx(0.4)  # no 720p SKU: the base price
    assert price(veo, duration=4).usd == pytest.approx(0.6), "unknown resolution: the highest that may apply"
    assert price(seedance, duration=5, size="480x854").usd == pytest.approx(0.1)  # a size bills at its short side
    assert price(seedance, resolution="720p").usd == pytest.approx(0.5), "no duration: the longest listed"
    assert price(models["minimax/hailuo-2.3"], duration=6).usd == pytest.approx(0.28)  # per clip
    unknown = price(models["acme/token-video"], duration=5)
    assert unknown.usd is None and "video-tokens" in unknown.basis


def test_a_submit_is_retried_only_when_nothing_was_created(api: VideoAPI, vstub: StubVideoAPI) -> None:
    vstub.inject("submit-429", "submit-502")
    job = api.submit(VideoRequest(model="google/veo-3.1-fast", prompt="a walk", duration=4))
    assert len(vstub.jobs) == 1 and job.id in vstub.jobs
    assert [r.status for r in vstub.requests if r.method == "POST"] == [429, 502, 202]


@pytest.mark.parametrize("fault", ["submit-lost", "submit-cut"])
def test_a_lost_submit_answer_is_uncertain_and_never_sent_again(api: VideoAPI, vstub: StubVideoAPI, fault: str) -> None:
    vstub.inject(fault)
    with pytest.raises(SubmitUncertainError) as err:
        api.submit(VideoRequest(model="google/veo-3.1-fast", prompt="a walk", duration=4))
    assert "may exist and be billed" in str(err.value)
    assert len(vstub.jobs) == 1, "the stub did create (and bill) the job"
    assert len([r for r in vstub.requests if r.method == "POST"]) == 1, "a second submit would pay twice"


def test_a_refused_submit_is_not_retried(api: VideoAPI, vstub: StubVideoAPI) -> None:
    vstub.inject("401")
    with pytest.raises(AuthError):
        api.submit(VideoRequest(model="google/veo-3.1-fast", prompt="a walk", duration=4))
    assert len([r for r in vstub.requests if r.method == "POST"]) == 1 and not vstub.jobs


def test_polls_ride_out_server_errors(api: VideoAPI, vstub: StubVideoAPI) -> None:
    job = api.submit(VideoRequest(model="google/veo-3.1-fast", prompt="a walk", duration=4))
    vstub.inject("poll-500", "poll-429")
    assert api.poll(job.id).status in ("pending", "in_progress")
    assert [r.status for r in vstub.polls(job.id)] == [500, 429, 200]


@pytest.mark.parametrize("fault", ["content-truncated", "content-corrupt", "content-html"])
def test_a_bad_download_is_never_kept_and_is_fetched_again(
    api: VideoAPI, vstub: StubVideoAPI, tmp_path: Path, fault: str
) -> None:
    job = api.submit(VideoRequest(model="google/veo-3.1-fast", prompt="a walk", duration=4))
    _wait(api, job.id)
    vstub.inject(fault)
    got = api.download(job.id, tmp_path / "clip.mp4", verify=probe_video)
    assert probe_video(got.path).frames > 0
    assert len(vstub.downloads(job.id)) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4"], "no temporary file is left behind"


def test_a_stopped_download_leaves_nothing(api: VideoAPI, vstub: StubVideoAPI, tmp_path: Path) -> None:
    vstub.drip_seconds = 4.0
    job = api.submit(VideoRequest(model="google/veo-3.1-fast", prompt="a walk", duration=4))
    _wait(api, job.id)
    vstub.inject("content-drip")
    stop = StopFlag()
    threading.Timer(0.4, stop.request, args=("test stop",)).start()
    with pytest.raises(StopRequested):
        api.download(job.id, tmp_path / "clip.mp4", stop=stop)
    assert list(tmp_path.iterdir()) == [], "neither the clip nor its temporary file"


def test_the_video_api_mounts_on_the_chat_and_image_stub() -> None:
    """One base URL for a whole hybrid run: chat and models from the chat stub, videos from the video stub."""
    from tests.support.video_stub import StubOpenRouterWithVideo

    with (
        StubOpenRouterWithVideo(valid_keys=[TEST_KEY]) as stub,
        OpenRouterClient(TEST_KEY, base_url=stub.base_url, timeout=10, max_retries=1) as client,
    ):
        assert client.chat("meta-llama/llama-3.1-70b-instruct", [{"role": "user", "content": "hi"}]).text
        api = VideoAPI(client)
        job = api.submit(VideoRequest(model="google/veo-3.1-fast", prompt="a walk", duration=4))
        assert job.id in stub.video.jobs and len(stub.video.submits) == 1
        assert "google/gemini-2.5-flash-image" in {m.id for m in client.list_models()}
