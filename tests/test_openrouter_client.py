"""The OpenRouter client against the stub server over real HTTP on 127.0.0.1."""

from __future__ import annotations

import base64
import io
import threading
import time
from email.utils import formatdate
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydantic import BaseModel, Field

from ai_influencer.openrouter import (
    AuthError,
    BadRequestError,
    EmptyResponseError,
    ImageDecodeError,
    InsufficientCreditsError,
    ModerationError,
    NoImageError,
    OpenRouterClient,
    RateLimitError,
    StructuredOutputError,
    UpstreamError,
    decode_image,
    image_to_data_url,
)
from ai_influencer.openrouter.errors import parse_retry_after
from tests.conftest import TEST_KEY
from tests.support.assets import face
from tests.support.openrouter_stub import StubOpenRouter

TEXT = "meta-llama/llama-3.1-70b-instruct"
IMAGE = "google/gemini-2.5-flash-image"
HELLO = [{"role": "user", "content": "hello"}]


def chat_calls(stub: StubOpenRouter) -> int:
    return sum(1 for r in stub.requests if r.path.endswith("/chat/completions"))


def test_chat_returns_text_usage_cost_and_sends_attribution(stub: StubOpenRouter) -> None:
    with OpenRouterClient(TEST_KEY, base_url=stub.base_url, app_title="My App", app_url="https://example.org") as c:
        result = c.chat(TEXT, HELLO, temperature=0.2, max_tokens=50)
    assert result.text == "stub reply to: hello"
    assert result.usage.cost == pytest.approx(stub.text_cost)
    assert result.usage.total_tokens == 100
    sent = stub.requests[-1]
    assert sent.headers["X-Title"] == "My App"
    assert sent.headers["HTTP-Referer"] == "https://example.org"
    assert "usage" not in sent.body, "the deprecated usage.include flag is not sent: every response has usage.cost"
    assert sent.body["temperature"] == 0.2 and sent.body["max_tokens"] == 50


class Plan(BaseModel):
    title: str
    captions: list[str] = Field(min_length=5)


def test_structured_json_output_is_requested_and_validated(client: OpenRouterClient, stub: StubOpenRouter) -> None:
    plan, result = client.chat_json(TEXT, HELLO, Plan)
    assert len(plan.captions) == 5
    fmt = stub.requests[-1].body["response_format"]
    assert fmt["type"] == "json_schema" and fmt["json_schema"]["strict"] is True
    assert fmt["json_schema"]["schema"]["properties"]["captions"]["minItems"] == 5
    assert result.usage.cost is not None


def test_structured_output_that_breaks_the_schema_is_a_clear_fatal_error() -> None:
    with StubOpenRouter(valid_keys=[TEST_KEY], chat_reply=lambda body: '{"title": "x", "captions": ["a"]}') as s:
        c = OpenRouterClient(TEST_KEY, base_url=s.base_url, backoff_initial=0.01)
        with pytest.raises(StructuredOutputError, match="Plan"):
            c.chat_json(TEXT, HELLO, Plan)
        assert chat_calls(s) == 1  # not retried: it is not a transport failure


def test_image_generation_returns_decoded_bytes_and_sends_references(
    client: OpenRouterClient, stub: StubOpenRouter
) -> None:
    ref = face("obama.jpg")
    result = client.generate_image(
        IMAGE, "portrait", negative_prompt="blurry", reference_images=[ref], aspect_ratio="3:4"
    )
    img = result.images[0]
    assert img.mime == "image/png" and img.extension == ".png"
    with Image.open(io.BytesIO(img.data)) as im:
        assert im.size == (512, 512)
    body = stub.requests[-1].body
    assert body["modalities"] == ["image", "text"]
    assert body["image_config"] == {"aspect_ratio": "3:4"}
    parts = body["messages"][0]["content"]
    assert parts[0]["type"] == "text" and "Avoid: blurry" in parts[0]["text"]
    assert parts[1]["image_url"]["url"].startswith("data:image/jpeg;base64,")
    assert result.usage.cost == pytest.approx(stub.image_cost)


def test_a_large_png_reference_is_sent_as_jpeg_and_encoded_once(tmp_path: Path) -> None:
    from ai_influencer.openrouter.data_urls import REFERENCE_INLINE_MAX_BYTES

    rng = np.random.default_rng(0)
    noisy = rng.integers(0, 255, (700, 700, 4), dtype=np.uint8)  # noise: a PNG far over the threshold
    noisy[..., 3] = 255
    noisy[:50, :50, 3] = 0  # a transparent corner, flattened onto white
    big = tmp_path / "ref.png"
    Image.fromarray(noisy, "RGBA").save(big)
    assert big.stat().st_size > REFERENCE_INLINE_MAX_BYTES
    url = image_to_data_url(big)
    assert url.startswith("data:image/jpeg;base64,")
    decoded = decode_image(url)
    assert len(decoded.data) < big.stat().st_size / 2
    with Image.open(io.BytesIO(decoded.data)) as im:
        assert im.size == (700, 700) and im.getpixel((10, 10)) == pytest.approx((255, 255, 255), abs=3)
    assert image_to_data_url(big) is url, "encoded once while the file is unchanged"
    small = tmp_path / "small.png"
    Image.fromarray(noisy[:64, :64], "RGBA").save(small)
    assert image_to_data_url(small).startswith("data:image/png;base64,"), "small files go as they are"
    Image.fromarray(noisy[:80, :80], "RGBA").save(small)  # changed file: read again
    assert decode_image(image_to_data_url(small)).data == small.read_bytes()


def test_models_are_cached_for_the_ttl_and_filtered_by_modality(stub: StubOpenRouter) -> None:
    c = OpenRouterClient(TEST_KEY, base_url=stub.base_url, models_ttl=60)
    image_models = c.list_models("image")
    assert {m.id for m in image_models} == {IMAGE, "black-forest-labs/flux.2-pro", "acme/chat-painter"}
    assert len(c.list_models()) == 5
    assert sum(r.path.endswith("/models") for r in stub.requests) == 1
    c.list_models(refresh=True)
    assert sum(r.path.endswith("/models") for r in stub.requests) == 2
    expired = OpenRouterClient(TEST_KEY, base_url=stub.base_url, models_ttl=0)
    expired.list_models()
    expired.list_models()
    assert sum(r.path.endswith("/models") for r in stub.requests) == 4


def test_key_and_credits(client: OpenRouterClient, stub: StubOpenRouter) -> None:
    client.generate_image(IMAGE, "x")
    credits = client.credits()
    assert credits.total_usage == pytest.approx(stub.image_cost)
    assert credits.remaining == pytest.approx(stub.credits_total - stub.image_cost)
    info = client.key_info()
    assert info.limit_remaining == pytest.approx(credits.remaining)


@pytest.mark.parametrize(
    ("fault", "error"),
    [("400", BadRequestError), ("402", InsufficientCreditsError), ("403", ModerationError)],
)
def test_fatal_errors_fail_fast_without_retry(
    client: OpenRouterClient, stub: StubOpenRouter, fault: str, error: type[Exception]
) -> None:
    stub.inject(fault)
    with pytest.raises(error):
        client.chat(TEXT, HELLO)
    assert chat_calls(stub) == 1


def test_moderation_error_carries_reasons(client: OpenRouterClient, stub: StubOpenRouter) -> None:
    stub.inject("403")
    with pytest.raises(ModerationError) as info:
        client.generate_image(IMAGE, "x")
    assert info.value.reasons == ["violence"]
    assert info.value.flagged_input == "flagged text"


def test_wrong_key_is_auth_error_and_never_leaks_the_key(stub: StubOpenRouter) -> None:
    secret = "sk-or-this-is-secret-123"
    c = OpenRouterClient(secret, base_url=stub.base_url, backoff_initial=0.01)
    with pytest.raises(AuthError) as info:
        c.chat(TEXT, HELLO)
    assert chat_calls(stub) == 1
    assert secret not in str(info.value) and secret not in repr(info.value) and secret not in repr(c)


def test_real_credit_exhaustion_is_402(stub: StubOpenRouter) -> None:
    stub.credits_total = stub.image_cost * 2.5
    c = OpenRouterClient(TEST_KEY, base_url=stub.base_url, backoff_initial=0.01)
    c.generate_image(IMAGE, "a")
    c.generate_image(IMAGE, "b")
    with pytest.raises(InsufficientCreditsError, match="Insufficient credits"):
        c.generate_image(IMAGE, "c")


@pytest.mark.parametrize(
    ("fault", "error"),
    [
        ("408", UpstreamError),
        ("500", UpstreamError),
        ("502", UpstreamError),
        ("503", UpstreamError),
        ("200-error", UpstreamError),
        ("empty-choices", EmptyResponseError),
        ("no-image", NoImageError),
        ("bad-image", ImageDecodeError),
        ("disconnect", UpstreamError),
        ("429", RateLimitError),
    ],
)
def test_transient_errors_are_retried_then_succeed(fault: str, error: type[Exception]) -> None:
    with StubOpenRouter(valid_keys=[TEST_KEY], retry_after="0") as s:
        c = OpenRouterClient(TEST_KEY, base_url=s.base_url, backoff_initial=0.01, max_retries=2)
        s.inject(fault)
        result = c.generate_image(IMAGE, "x")
        assert result.images, "the retry must produce an image"
        assert chat_calls(s) == 2
        # with no retries allowed the same fault surfaces as its own error class
        s.inject(fault)
        strict = OpenRouterClient(TEST_KEY, base_url=s.base_url, max_retries=0)
        with pytest.raises(error):
            strict.generate_image(IMAGE, "y")


def test_timeout_is_retried() -> None:
    with StubOpenRouter(valid_keys=[TEST_KEY], timeout_sleep=1.5) as s:
        c = OpenRouterClient(TEST_KEY, base_url=s.base_url, timeout=0.5, backoff_initial=0.01, max_retries=1)
        s.inject("timeout")
        assert c.chat(TEXT, HELLO).text
        strict = OpenRouterClient(TEST_KEY, base_url=s.base_url, timeout=0.5, max_retries=0)
        s.inject("timeout")
        with pytest.raises(UpstreamError, match=r"deadline|timed out") as info:
            strict.chat(TEXT, HELLO)
        assert info.value.status == 408


def test_retry_after_is_honoured() -> None:
    with StubOpenRouter(valid_keys=[TEST_KEY], retry_after="1") as s:
        c = OpenRouterClient(TEST_KEY, base_url=s.base_url, backoff_initial=0.01, max_retries=2)
        s.inject("429")
        c.chat(TEXT, HELLO)
        first, second = [r.t for r in s.requests if r.path.endswith("/chat/completions")]
        assert second - first >= 0.95  # waited the server's Retry-After, not the 10 ms backoff


def test_an_upstream_429_is_retried_soon_once_then_on_the_full_backoff() -> None:
    """A 429 without Retry-After or X-RateLimit-* headers (a busy upstream provider) says nothing about our rate:
    the first retry comes after a quarter of the backoff; later ones keep the whole schedule (issue 23 §1)."""
    with StubOpenRouter(valid_keys=[TEST_KEY]) as s:
        c = OpenRouterClient(TEST_KEY, base_url=s.base_url, backoff_initial=0.4, max_retries=3)
        s.inject("429-no-retry-after", "429-no-retry-after")
        c.chat(TEXT, HELLO)
        first, second, third = [r.t for r in s.requests if r.path.endswith("/chat/completions")]
        assert 0.09 <= second - first <= 0.35  # 0.1 s plus up to 0.1 s of jitter (and the round trip)
        assert third - second >= 0.75  # the regular second step: 0.8 s plus jitter


def test_retry_after_is_capped() -> None:
    with StubOpenRouter(valid_keys=[TEST_KEY], retry_after="3600") as s:
        c = OpenRouterClient(TEST_KEY, base_url=s.base_url, backoff_initial=0.01, retry_cap=0.2, max_retries=1)
        s.inject("429")
        start = time.monotonic()
        c.chat(TEXT, HELLO)
        assert time.monotonic() - start < 5


def test_retries_give_up_after_the_cap_with_the_last_error() -> None:
    with StubOpenRouter(valid_keys=[TEST_KEY]) as s:
        c = OpenRouterClient(TEST_KEY, base_url=s.base_url, backoff_initial=0.01, max_retries=2)
        s.inject("502", "502", "502", "502")
        with pytest.raises(UpstreamError):
            c.chat(TEXT, HELLO)
        assert chat_calls(s) == 3


def test_parse_retry_after_http_date() -> None:
    now = time.time()
    assert parse_retry_after(formatdate(now + 30, usegmt=True), now=now) == pytest.approx(30, abs=1.5)
    assert parse_retry_after("2.5") == 2.5
    assert parse_retry_after("garbage") is None
    assert parse_retry_after(None) is None


def test_server_rate_limit_is_survived_by_retrying_clients() -> None:
    with StubOpenRouter(valid_keys=[TEST_KEY], rps_limit=3, retry_after="1") as s:
        c = OpenRouterClient(TEST_KEY, base_url=s.base_url, backoff_initial=0.05, max_retries=8)
        results: list[str] = []

        def one(i: int) -> None:
            results.append(c.chat(TEXT, [{"role": "user", "content": f"m{i}"}]).text)

        threads = [threading.Thread(target=one, args=(i,)) for i in range(9)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert len(results) == 9
        assert any(r.status == 429 for r in s.requests), "the limit must actually have been hit"
        assert s.max_requests_in_window(1.0) <= 3


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        ("truncated-jpeg", "incomplete or corrupt image data"),
        ("html-data-url", "is an HTML page, not an image"),
        ("cut-json", "incomplete JSON"),
        ("html-502", r"HTML page \(502 Bad Gateway"),
        ("html-503", r"HTML page \(503 Service Temporarily Unavailable"),
    ],
)
def test_provider_faults_are_retried_and_explained_in_one_line(fault: str, message: str) -> None:
    with StubOpenRouter(valid_keys=[TEST_KEY]) as s:
        c = OpenRouterClient(TEST_KEY, base_url=s.base_url, backoff_initial=0.01, max_retries=1)
        s.inject(fault)
        result = c.generate_image(IMAGE, "x")
        with Image.open(io.BytesIO(result.images[0].data)) as im:
            im.load()  # the image the retry brought is complete
        assert chat_calls(s) == 2
        s.inject(fault)
        strict = OpenRouterClient(TEST_KEY, base_url=s.base_url, max_retries=0)
        with pytest.raises(UpstreamError, match=message) as info:
            strict.generate_image(IMAGE, "y")
        text = str(info.value)
        assert "\n" not in text and len(text) < 300, text
        assert "<html" not in text.lower() and "object at 0x" not in text


def test_a_jpeg_cut_on_a_base64_boundary_is_never_accepted() -> None:
    """PIL's verify() passes such a JPEG; only a full decode sees the missing end."""
    ok = io.BytesIO()
    Image.open(face("obama.jpg")).convert("RGB").save(ok, format="JPEG", quality=90)
    data = ok.getvalue()
    b64 = base64.b64encode(data).decode()
    for cut in range(len(b64) // 10, len(b64), max(4, len(b64) // 37 // 4 * 4)):
        cut -= cut % 4
        with pytest.raises(ImageDecodeError, match="incomplete or corrupt"):
            decode_image(f"data:image/jpeg;base64,{b64[:cut]}")
    assert decode_image(f"data:image/jpeg;base64,{b64}").data == data


def test_the_deadline_bounds_a_body_that_drips_forever() -> None:
    """httpx's timeout is the gap between chunks; a body dripping a chunk every 0.15 s never trips it."""
    with StubOpenRouter(valid_keys=[TEST_KEY], drip_seconds=6.0) as s:
        c = OpenRouterClient(TEST_KEY, base_url=s.base_url, timeout=1.0, max_retries=0)
        s.inject("drip")
        start = time.monotonic()
        with pytest.raises(UpstreamError, match="deadline") as info:
            c.generate_image(IMAGE, "x")
        waited = time.monotonic() - start
        assert info.value.status == 408 and info.value.retryable
        assert waited < 3.0, f"waited {waited:.1f} s for a body that drips for 6 s"
        # a retry after the abandoned attempt gets a whole image
        s.inject("drip")
        retrying = OpenRouterClient(TEST_KEY, base_url=s.base_url, timeout=1.0, backoff_initial=0.01, max_retries=1)
        assert retrying.generate_image(IMAGE, "y").images


def test_retry_after_gets_jitter_so_throttled_workers_do_not_return_together() -> None:
    with StubOpenRouter(valid_keys=[TEST_KEY], retry_after="1") as s:
        c = OpenRouterClient(TEST_KEY, base_url=s.base_url, backoff_initial=0.01, max_retries=3)
        s.rate_limit_burst(0.3)  # every request of the next 0.3 s is answered 429, Retry-After: 1
        threads = [
            threading.Thread(target=c.chat, args=(TEXT, [{"role": "user", "content": f"m{i}"}])) for i in range(8)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        retries = sorted(r.t for r in s.requests if r.status == 200)
    assert len(retries) == 8
    assert retries[-1] - retries[0] > 0.2, "all eight came back in the same instant"
