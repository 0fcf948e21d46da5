"""OpenRouter's Image API end to end over real HTTP: the stub as the docs describe it, the client,
the capability checks and price estimates made before anything is paid, and each error of the route."""

from __future__ import annotations

import base64
import io
import json

import pytest
from PIL import Image

from ai_influencer.openrouter import (
    BadRequestError,
    CreditsExhaustedError,
    InsufficientCreditsError,
    KeyLimitError,
    OpenRouterClient,
    PayloadTooLargeError,
    RateLimitError,
    UnsupportedParameterError,
    UpstreamError,
)
from ai_influencer.openrouter.capabilities import resolve_route
from ai_influencer.options.images import ImageOptions, ProviderRouting, image_options, parse_size
from tests.conftest import TEST_KEY
from tests.support.assets import face
from tests.support.openrouter_stub import DEFAULT_IMAGE_MODELS, StubOpenRouter, _endpoint

SEEDREAM = "bytedance-seed/seedream-4.5"
GEMINI = "google/gemini-2.5-flash-image"
FLUX = "black-forest-labs/flux.2-pro"
GPT = "openai/gpt-image-1"


def posts(stub: StubOpenRouter) -> list:
    return [r for r in stub.requests if r.path.endswith("/images")]


def fast(stub: StubOpenRouter, **kw: object) -> OpenRouterClient:
    options: dict = {"backoff_initial": 0.01, "retry_cap": 0.2, **kw}
    return OpenRouterClient(TEST_KEY, base_url=stub.base_url, **options)


# ---- discovery ----------------------------------------------------------------------------------
def test_image_models_and_endpoints_come_with_typed_descriptors_and_price_lines(stub: StubOpenRouter) -> None:
    c = fast(stub, models_ttl=60)
    models = {m.id: m for m in c.list_image_models()}
    assert set(models) == set(DEFAULT_IMAGE_MODELS)
    seedream = models[SEEDREAM]
    assert seedream.supported_parameters["n"].type == "range" and seedream.supported_parameters["n"].max == 4
    assert seedream.endpoints == f"/api/v1/images/models/{SEEDREAM}/endpoints"
    (endpoint,) = c.image_endpoints(SEEDREAM)
    assert endpoint.provider_slug == "bytedance" and endpoint.supported_parameters["seed"].accepts(7)
    assert endpoint.supported_parameters["resolution"].accepts("2K")
    assert not endpoint.supported_parameters["resolution"].accepts("8K")
    assert [(p.billable, p.unit, p.cost_usd, p.variant) for p in endpoint.pricing] == [
        ("output_image", "image", 0.04, None),
        ("output_image", "image", 0.08, "4k"),
        ("input_reference", "image", 0.002, None),
    ]
    listed = len(stub.requests)
    c.list_image_models()
    c.image_endpoints(SEEDREAM)
    assert len(stub.requests) == listed, "both listings are cached for the models TTL"


# ---- generation -----------------------------------------------------------------------------------
def test_n_images_in_one_call_with_references_seed_and_checked_parameters(stub: StubOpenRouter) -> None:
    c = fast(stub)
    result = c.generate_images(
        SEEDREAM, "portrait", n=3, negative_prompt="blurry", reference_images=[face("obama.jpg")],
        params={"aspect_ratio": "3:4", "resolution": "1K"}, seed=42, provider={"only": ["bytedance"]},
    )  # fmt: skip
    assert result.route == "images" and result.requested == 3 and len(result.images) == 3 and not result.short
    for img in result.images:
        with Image.open(io.BytesIO(img.data)) as im:
            im.load()  # every image decodes whole
    body = posts(stub)[-1].body
    assert body["n"] == 3 and body["seed"] == 42 and body["aspect_ratio"] == "3:4" and body["resolution"] == "1K"
    assert body["prompt"].endswith("Avoid: blurry") and body["provider"] == {"only": ["bytedance"]}
    assert body["input_references"][0]["image_url"]["url"].startswith("data:image/jpeg;base64,")
    assert "usage" not in body, "the deprecated usage.include flag is not sent"
    assert result.usage.cost == pytest.approx(3 * 0.04 + 0.002)


def test_a_short_answer_is_reported_short_and_billed_for_what_came(tmp_path: object) -> None:
    with StubOpenRouter(valid_keys=[TEST_KEY], answer_cap=2) as stub:
        result = fast(stub).generate_images(SEEDREAM, "x", n=4)
    assert len(result.images) == 2 and result.requested == 4 and result.short
    assert result.usage.cost == pytest.approx(2 * 0.04)


def test_the_same_seed_asks_the_same_question_and_gets_the_same_images(stub: StubOpenRouter) -> None:
    c = fast(stub)
    a = c.generate_images(SEEDREAM, "portrait", n=2, seed=7)
    b = c.generate_images(SEEDREAM, "portrait", n=2, seed=7)
    other = c.generate_images(SEEDREAM, "portrait", n=2, seed=8)
    unseeded = [c.generate_images(SEEDREAM, "portrait").images[0].data for _ in range(2)]
    assert [i.data for i in a.images] == [i.data for i in b.images]
    assert [i.data for i in a.images] != [i.data for i in other.images]
    assert a.images[0].data != a.images[1].data, "each image of an answer is its own"
    assert unseeded[0] != unseeded[1], "without a seed, the same prompt gives new images"


def test_the_stub_checks_every_parameter_against_the_serving_endpoint(stub: StubOpenRouter) -> None:
    c = fast(stub, max_retries=0)
    with pytest.raises(BadRequestError, match="single image per request"):
        c.generate_images(GEMINI, "x", n=2)
    with pytest.raises(BadRequestError, match="does not support the parameter 'seed'"):
        c.generate_images(GEMINI, "x", seed=1)
    with pytest.raises(BadRequestError, match="not accepted"):
        c.generate_images(GPT, "x", params={"size": "1000x1000"})
    with pytest.raises(BadRequestError, match="explicit pixel size"):
        c.generate_images(SEEDREAM, "x", params={"size": "1024x1024", "aspect_ratio": "1:1"})
    assert len(posts(stub)) == 4 and all(r.status == 400 for r in posts(stub))


def test_a_look_alike_serving_images_only_on_the_image_api_refuses_chat_image_output() -> None:
    with StubOpenRouter(valid_keys=[TEST_KEY], chat_images=False) as stub:
        c = fast(stub, max_retries=0)
        with pytest.raises(BadRequestError, match="use the Image API"):
            c.generate_image(GEMINI, "x")
        assert c.generate_images(GEMINI, "x").images
        assert c.chat("meta-llama/llama-3.1-70b-instruct", [{"role": "user", "content": "hi"}]).text


# ---- capabilities and prices, before anything is paid ---------------------------------------------
def test_an_unsupported_parameter_is_one_line_naming_model_parameter_and_what_it_accepts(stub: StubOpenRouter) -> None:
    c = fast(stub)
    cases = {
        (GEMINI, ImageOptions(n=4)): "--n 4: google/gemini-2.5-flash-image accepts n = 1",
        (SEEDREAM, ImageOptions(n=6)): f"--n 6: {SEEDREAM} accepts n = 1..4",
        (GPT, ImageOptions(size="1000x1000")): f"--size 1000x1000: {GPT} accepts size in 1024x1024, 1536x1024, "
        "1024x1536, auto",
        (FLUX, ImageOptions(size="1000x300")): f"--size 1000x300: {FLUX} accepts aspect_ratio in 1:1, 2:3",
        (FLUX, ImageOptions(quality="high")): f"--quality high: {FLUX} accepts no quality",
        ("acme/chat-painter", ImageOptions(n=2)): "--n 2: acme/chat-painter accepts n = 1 (chat route",
    }
    for (model, options), message in cases.items():
        with pytest.raises(UnsupportedParameterError) as err:
            resolve_route(c, model, options)
        assert str(err.value).startswith(message) and "\n" not in str(err.value)
    assert not posts(stub) and not stub.paid_requests, "nothing was sent to be paid for"


def test_size_maps_to_what_the_endpoint_takes(stub: StubOpenRouter) -> None:
    c = fast(stub)
    assert resolve_route(c, GPT, ImageOptions(size="1536x1024")).params == {"size": "1536x1024"}
    assert resolve_route(c, SEEDREAM, ImageOptions(size="1536x1024")).params == {
        "aspect_ratio": "3:2", "resolution": "2K",
    }  # fmt: skip
    assert resolve_route(c, GEMINI).params == {"aspect_ratio": "1:1"}
    route = resolve_route(c, FLUX, ImageOptions(size="4096x4096"))
    assert route.params["resolution"] == "2K" and any("nearest tier" in n for n in route.notes)


def test_price_lines_give_the_estimate_per_image_per_megapixel_per_reference_and_per_tier(
    stub: StubOpenRouter,
) -> None:
    c = fast(stub)
    seedream = resolve_route(c, SEEDREAM, ImageOptions(n=4), references=2)
    assert seedream.estimate(4) == pytest.approx(4 * 0.04 + 2 * 0.002)
    assert resolve_route(c, SEEDREAM, ImageOptions(size="4096x4096")).estimate(1) == pytest.approx(0.08)  # "4k"
    flux = resolve_route(c, FLUX, ImageOptions(size="1024x768"), references=1, reference_megapixels=[0.5])
    assert flux.estimate(1) == pytest.approx(0.03 * 1024 * 768 / 1e6 + 0.015 * 0.5)
    gemini = resolve_route(c, GEMINI, references=5)
    assert gemini.max_references == 3 and any("first 3 of 5" in n for n in gemini.notes)


def test_a_model_only_chat_serves_takes_the_chat_route_chosen_automatically(stub: StubOpenRouter) -> None:
    route = resolve_route(fast(stub), "acme/chat-painter", ImageOptions(size="1024x768", seed=3))
    assert route.kind == "chat" and route.params == {"aspect_ratio": "4:3"} and route.seed_for(5) is None
    assert route.estimate(1) == pytest.approx(0.02)  # the model list's image price


def test_provider_routing_picks_the_endpoints_that_are_checked() -> None:
    strict = _endpoint("Strict", "strict", {"aspect_ratio": {"type": "enum", "values": ["1:1"]}}, [])
    square = {"type": "enum", "values": ["1:1"]}
    multi = _endpoint(
        "Multi", "multi", {"n": {"type": "range", "min": 1, "max": 8}, "aspect_ratio": square},
        [{"billable": "output_image", "unit": "image", "cost_usd": 0.05}],
    )  # fmt: skip
    with StubOpenRouter(valid_keys=[TEST_KEY], image_models={"x/two": ("Two", [strict, multi])}) as stub:
        c = fast(stub)
        with pytest.raises(UnsupportedParameterError, match="accepts n = 1 on strict"):
            resolve_route(c, "x/two", ImageOptions(n=4))  # either provider could serve it
        only = ImageOptions(n=4, provider=ProviderRouting(only=["multi"]))
        route = resolve_route(c, "x/two", only)
        assert route.endpoints == ("multi",) and route.max_n == 8 and route.estimate(4) == pytest.approx(0.2)
        result = c.generate_images("x/two", "x", n=4, params=route.params, provider=route.provider)
        assert len(result.images) == 4


def test_a_model_whose_endpoint_takes_no_references_is_refused_before_paying() -> None:
    bare = _endpoint("Bare", "bare", {"aspect_ratio": {"type": "enum", "values": ["1:1"]}}, [])
    refused = r"--ref \(2 photos\): x/bare takes no reference images"
    with (
        StubOpenRouter(valid_keys=[TEST_KEY], image_models={"x/bare": ("Bare", [bare])}) as stub,
        pytest.raises(UnsupportedParameterError, match=refused),
    ):
        resolve_route(fast(stub), "x/bare", references=2)


def test_size_errors_name_the_value_out_of_range() -> None:
    with pytest.raises(ValueError, match=r"^--size 99x0: height 0 is out of range \(64..8192 pixels\)$"):
        parse_size("99x0")
    with pytest.raises(ValueError, match=r"^--size 99999x1024: width 99999 is out of range"):
        image_options(size="99999x1024")
    with pytest.raises(ValueError, match=r"^--size 'big': must be WIDTHxHEIGHT"):
        image_options(size="big")


# ---- the errors of the new route ---------------------------------------------------------------------
def test_400_is_never_retried(stub: StubOpenRouter) -> None:
    stub.inject("400", path="/images")
    with pytest.raises(BadRequestError):
        fast(stub).generate_images(SEEDREAM, "x")
    assert len(posts(stub)) == 1


@pytest.mark.parametrize(
    ("fault", "kind", "says"),
    [
        ("402-credits", CreditsExhaustedError, "account is out of credits"),
        ("402-key", KeyLimitError, "key reached its own credit limit"),
        ("402", InsufficientCreditsError, "injected 402"),
    ],
)
def test_402_says_whether_the_account_or_the_key_ran_out_and_is_never_retried(
    stub: StubOpenRouter, fault: str, kind: type, says: str
) -> None:
    stub.inject(fault, path="/images")
    with pytest.raises(kind, match=says) as err:
        fast(stub).generate_images(SEEDREAM, "x")
    assert len(posts(stub)) == 1
    assert fault == "402" or err.value.limit_source in ("openrouter_credits", "openrouter_key_limit")


def test_402_from_real_balances_credits_vs_key_limit() -> None:
    with StubOpenRouter(valid_keys=[TEST_KEY], credits_total=0.05) as stub:
        c = fast(stub)
        c.generate_images(SEEDREAM, "x")
        with pytest.raises(CreditsExhaustedError):
            c.generate_images(SEEDREAM, "x")
    with StubOpenRouter(valid_keys=[TEST_KEY], key_limit=0.05) as stub:
        c = fast(stub)
        c.generate_images(SEEDREAM, "x")
        with pytest.raises(KeyLimitError):
            c.generate_images(SEEDREAM, "x")
    assert str(CreditsExhaustedError("a")) != str(KeyLimitError("a"))


def test_413_re_encodes_the_references_smaller_once_then_says_so_clearly() -> None:
    ref = face("obama.jpg")
    with StubOpenRouter(valid_keys=[TEST_KEY]) as stub:
        stub.inject("413", path="/images")
        result = fast(stub).generate_images(SEEDREAM, "x", reference_images=[ref])
        first, second = posts(stub)
        assert first.status == 413 and second.status == 200 and result.images
        assert len(json.dumps(second.body)) < len(json.dumps(first.body))
        url = second.body["input_references"][0]["image_url"]["url"]
        with Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))) as im:
            assert max(im.size) <= 768
    with StubOpenRouter(valid_keys=[TEST_KEY], max_body_bytes=2000) as stub:  # no reference fits
        with pytest.raises(PayloadTooLargeError, match="even with its 1 reference photo"):
            fast(stub).generate_images(SEEDREAM, "x", reference_images=[ref])
        assert [r.status for r in posts(stub)] == [413, 413], "re-encoded once, then a clear error"


def test_429_with_and_without_retry_after(stub: StubOpenRouter) -> None:
    stub.retry_after = "0.3"
    stub.inject("429", "429-no-retry-after", path="/images")
    result = fast(stub, retry_cap=5).generate_images(SEEDREAM, "x")
    first, second, third = posts(stub)
    assert [first.status, second.status, third.status] == [429, 429, 200] and result.images
    assert second.t - first.t >= 0.3, "Retry-After is honoured"
    assert "Retry-After" not in json.dumps(second.headers)
    with StubOpenRouter(valid_keys=[TEST_KEY]) as other:
        other.inject("429", "429", path="/images")
        with pytest.raises(RateLimitError):
            fast(other, max_retries=1).generate_images(SEEDREAM, "x")


@pytest.mark.parametrize("fault", ["502", "524", "529", "500", "503"])
def test_failed_generations_are_retried_and_not_charged(stub: StubOpenRouter, fault: str) -> None:
    stub.inject(fault, path="/images")
    result = fast(stub).generate_images(SEEDREAM, "x")
    assert [r.status for r in posts(stub)] == [int(fault), 200] and result.images
    assert stub.usage_total == pytest.approx(0.04), "only the answer that came was billed"
    stub.inject(fault, fault, path="/images")
    with pytest.raises(UpstreamError):
        fast(stub, max_retries=1).generate_images(SEEDREAM, "x")


@pytest.mark.parametrize(
    "fault",
    ["bad-image", "truncated-jpeg", "html-data-url", "empty-choices", "no-image", "200-error", "cut-json",
     "html-502", "html-503", "disconnect", "408"],
)  # fmt: skip
def test_every_existing_fault_applies_on_the_new_route_and_is_survived(stub: StubOpenRouter, fault: str) -> None:
    stub.inject(fault, path="/images")
    result = fast(stub).generate_images(SEEDREAM, "x", n=2)
    assert len(result.images) == 2
    assert len(posts(stub)) == 2 and posts(stub)[0].fault == fault
    for img in result.images:
        with Image.open(io.BytesIO(img.data)) as im:
            im.load()


# ---- the hub's /api/generate/image takes the same path ------------------------------------------------
def test_the_hub_generates_through_the_same_route_with_n_and_refuses_what_the_endpoint_does_not_take(
    stub: StubOpenRouter, tmp_path: object
) -> None:
    from pathlib import Path

    import httpx

    from interfaces.hub.app import create_app
    from tests.support.hub_server import serve
    from tests.test_hub import AUTH, hub_settings

    with serve(create_app(hub_settings(stub, Path(str(tmp_path))))) as hub:
        ok = httpx.post(
            f"{hub}/api/generate/image", json={"model": SEEDREAM, "prompt": "x", "n": 3, "seed": 4}, headers=AUTH
        )
        assert ok.status_code == 200 and len(ok.json()["items"]) == 3
        assert posts(stub)[-1].body["n"] == 3 and posts(stub)[-1].body["seed"] == 4
        wide = httpx.post(
            f"{hub}/api/generate/image", json={"model": GEMINI, "prompt": "x", "aspect_ratio": "16:9"}, headers=AUTH
        )
        assert wide.status_code == 200 and posts(stub)[-1].body["aspect_ratio"] == "16:9"
        sent = len(posts(stub))
        refused = httpx.post(f"{hub}/api/generate/image", json={"model": GEMINI, "prompt": "x", "n": 2}, headers=AUTH)
        assert refused.status_code == 400 and refused.json()["error"] == {
            "code": "unsupported_parameter",
            "message": "--n 2: google/gemini-2.5-flash-image accepts n = 1",
        }
        assert len(posts(stub)) == sent, "refused before anything was paid"
