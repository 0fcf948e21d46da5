"""The one OpenRouter client of the project (blocking, thread-safe, over httpx).

Parsing happens *inside* the retried call, so a 200 that carries an error, no
choices, a cut body or an image that does not fully decode is retried like a
5xx, while 400/401/402/403 never are (see errors.py). This client is the one
retry owner for HTTP-level faults: callers (Prefect tasks) must not retry them
again, or attempts multiply (5 client x 3 task retries was 24 per image).

Images go through the dedicated Image API (``POST /images``: ``n`` images per call, seeds, typed
per-endpoint capabilities and prices from ``GET /images/models`` and the endpoints listing) or, for a
model only the chat route serves, through chat completions with ``modalities``; which one a run uses
is decided by ``ai_influencer.openrouter.capabilities`` before anything is paid.

Every attempt has a whole-request deadline (``timeout``): connect, upload, the
provider's think time and the body download together. httpx's own timeouts are
per network operation, so a body dripped a few bytes at a time was waited out
for as long as the provider kept dripping.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel, SecretStr, ValidationError
from tenacity import (
    Retrying,
    retry_if_exception,
    stop_after_attempt,
)

from ai_influencer import __version__
from ai_influencer.openrouter.data_urls import decode_b64_image, decode_image, image_to_data_url, shrunk_data_url
from ai_influencer.openrouter.errors import (
    DeadlineExceededError,
    EmptyResponseError,
    ImageDecodeError,
    NoImageError,
    OpenRouterError,
    PayloadTooLargeError,
    RateLimitError,
    StructuredOutputError,
    UpstreamError,
    describe_body,
    error_from_response,
)
from ai_influencer.openrouter.retry import WaitRetryAfterOrBackoff, is_retryable, log_retry
from ai_influencer.openrouter.types import (
    ChatResult,
    Credits,
    GeneratedImage,
    ImageEndpoint,
    ImageModelInfo,
    ImageResult,
    KeyInfo,
    ModelInfo,
    Usage,
)
from ai_influencer.options.images import IMAGE_OPTION_DEFAULTS
from ai_influencer.pacing import Pacer
from ai_influencer.settings import Settings

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)


def _extract_json(text: str) -> Any:
    stripped = text.strip()
    fence = re.match(r"^```(?:json)?\s*(.*?)\s*```$", stripped, re.S)
    if fence:
        stripped = fence.group(1)
    return json.loads(stripped)


class _Core:
    """Configuration, request building, parsing and retry policy shared by both clients."""

    def __init__(
        self,
        api_key: SecretStr | str | None,
        *,
        base_url: str = "https://openrouter.ai/api/v1",
        app_title: str | None = "ai-influencer",
        app_url: str | None = None,
        timeout: float = 120.0,
        max_retries: int = 5,
        backoff_initial: float = 1.0,
        retry_cap: float = 60.0,
        models_ttl: float = 600.0,
    ) -> None:
        self._api_key = api_key if isinstance(api_key, SecretStr) or api_key is None else SecretStr(api_key)
        self.base_url = base_url.rstrip("/")
        self.app_title = app_title
        self.app_url = app_url
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff_initial = backoff_initial
        self.retry_cap = retry_cap
        self.models_ttl = models_ttl
        self._models_cache: tuple[float, list[ModelInfo]] | None = None
        self._models_lock = threading.Lock()
        self._image_models_cache: tuple[float, list[ImageModelInfo]] | None = None
        self._endpoints_cache: dict[str, tuple[float, list[ImageEndpoint]]] = {}

    @classmethod
    def _settings_kwargs(cls, settings: Settings) -> dict[str, Any]:
        return {
            "api_key": settings.openrouter_api_key,
            "base_url": settings.openrouter_base_url,
            "app_title": settings.openrouter_app_title,
            "app_url": settings.openrouter_app_url,
            "timeout": settings.openrouter_timeout_s,
            "max_retries": settings.openrouter_max_retries,
            "retry_cap": settings.openrouter_retry_cap_s,
            "models_ttl": settings.models_cache_ttl_s,
        }

    def __repr__(self) -> str:  # never show the key
        return f"{type(self).__name__}(base_url={self.base_url!r}, key={'set' if self._api_key else 'unset'})"

    # ---- request building ------------------------------------------------------
    def _headers(self) -> dict[str, str]:
        headers = {"User-Agent": f"ai-influencer/{__version__}", "Accept": "application/json"}
        if self._api_key is not None:
            headers["Authorization"] = f"Bearer {self._api_key.get_secret_value()}"
        if self.app_url:
            headers["HTTP-Referer"] = self.app_url
        if self.app_title:
            headers["X-Title"] = self.app_title
        return headers

    def _retry_kwargs(self) -> dict[str, Any]:
        return {
            "retry": retry_if_exception(is_retryable),
            "stop": stop_after_attempt(self.max_retries + 1),
            "wait": WaitRetryAfterOrBackoff(self.backoff_initial, self.retry_cap),
            "before_sleep": log_retry,
            "reraise": True,
        }

    @staticmethod
    def _chat_body(
        model: str,
        messages: list[dict[str, Any]],
        *,
        temperature: float | None = None,
        max_tokens: int | None = None,
        response_format: dict[str, Any] | None = None,
        fallback_models: Sequence[str] = (),
        extra: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"model": model, "messages": messages}
        if temperature is not None:
            body["temperature"] = temperature
        if max_tokens is not None:
            body["max_tokens"] = max_tokens
        if response_format is not None:
            body["response_format"] = response_format
        if fallback_models:
            body["models"] = list(fallback_models)
        body.update(extra or {})
        return body

    @staticmethod
    def _image_body(
        model: str,
        prompt: str,
        *,
        negative_prompt: str | None = None,
        reference_images: Sequence[bytes | str | Path] = (),
        aspect_ratio: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        text = prompt if not negative_prompt else f"{prompt}\n\nAvoid: {negative_prompt}"
        parts: list[dict[str, Any]] = [{"type": "text", "text": text}]
        parts += [{"type": "image_url", "image_url": {"url": image_to_data_url(r)}} for r in reference_images]
        body: dict[str, Any] = {
            "model": model,
            "messages": [{"role": "user", "content": parts}],
            "modalities": ["image", "text"],
        }
        if aspect_ratio:
            body["image_config"] = {"aspect_ratio": aspect_ratio}
        body.update(extra or {})
        return body

    @staticmethod
    def _images_body(
        model: str,
        prompt: str,
        *,
        n: int,
        negative_prompt: str | None,
        references: Sequence[str],
        params: dict[str, Any] | None,
        seed: int | None,
        provider: dict[str, Any] | None,
    ) -> dict[str, Any]:
        """``POST /images``: the Image API has no negative prompt, so it goes into the text as on chat."""
        text = prompt if not negative_prompt else f"{prompt}\n\nAvoid: {negative_prompt}"
        body: dict[str, Any] = {"model": model, "prompt": text}
        if n != 1:
            body["n"] = n
        body.update({k: v for k, v in (params or {}).items() if v is not None})
        if seed is not None:
            body["seed"] = seed
        if references:
            body["input_references"] = [{"type": "image_url", "image_url": {"url": url}} for url in references]
        if provider:
            body["provider"] = provider
        return body

    # ---- response parsing ------------------------------------------------------
    @staticmethod
    def _check(status: int, headers: httpx.Headers, raw: bytes) -> Any:
        try:
            body: Any = json.loads(raw)
        except ValueError:
            body = raw.decode("utf-8", "replace")
        if status != 200:
            raise error_from_response(status, body, dict(headers))
        if isinstance(body, dict) and "error" in body:
            raise error_from_response(200, body, dict(headers))
        if not isinstance(body, dict):
            raise UpstreamError(f"expected a JSON object, got {describe_body(raw)}", status=200)
        return body

    @staticmethod
    def _message(body: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        choices = body.get("choices")
        if not choices:
            raise EmptyResponseError("response has no choices", status=200)
        choice = choices[0]
        if isinstance(choice.get("error"), dict):  # mid-generation provider error
            raise error_from_response(200, {"error": choice["error"]})
        return choice, choice.get("message") or {}

    @classmethod
    def _parse_chat(cls, body: dict[str, Any], elapsed: float) -> ChatResult:
        choice, message = cls._message(body)
        content = message.get("content")
        if isinstance(content, list):
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        return ChatResult(
            id=body.get("id"),
            model=body.get("model", ""),
            text=content or "",
            finish_reason=choice.get("finish_reason"),
            usage=Usage.model_validate(body.get("usage") or {}),
            elapsed_s=elapsed,
        )

    @classmethod
    def _parse_image(cls, body: dict[str, Any], elapsed: float) -> ImageResult:
        _, message = cls._message(body)
        raw_images = message.get("images") or []
        text = message.get("content") or ""
        if not raw_images:
            reason = text.strip()[:300] or "no explanation"
            raise NoImageError(f"the model returned no image ({reason})", status=200)
        images = []
        for item in raw_images:
            url = (item.get("image_url") or {}).get("url") if isinstance(item, dict) else None
            if not url:
                raise ImageDecodeError("image entry without image_url.url", status=200)
            images.append(decode_image(url))
        return ImageResult(
            id=body.get("id"),
            model=body.get("model", ""),
            images=images,
            text=text if isinstance(text, str) else "",
            usage=Usage.model_validate(body.get("usage") or {}),
            elapsed_s=elapsed,
        )

    @staticmethod
    def _parse_images(body: dict[str, Any], elapsed: float, model: str, requested: int) -> ImageResult:
        """``data[]`` of ``POST /images``. Billing is per call, all or nothing: when some images of an
        answer are unusable and others are fine, the fine ones are kept and the others counted as
        missing (retrying would pay for the whole call again); when none is usable, the call is retried."""
        items = body.get("data")
        if not isinstance(items, list) or not items:
            raise NoImageError("the Image API answered without any image (data is empty)", status=200)
        images: list[GeneratedImage] = []
        dropped: list[str] = []
        for i, item in enumerate(items):
            try:
                if not isinstance(item, dict):
                    raise ImageDecodeError("image entry is not an object")
                images.append(decode_b64_image(item.get("b64_json"), item.get("media_type")))
            except ImageDecodeError as exc:
                dropped.append(f"image {i}: {exc.message}")
        if not images:
            raise ImageDecodeError(f"no usable image in the answer ({dropped[0]})", status=200)
        return ImageResult(
            id=body.get("id"),
            model=str(body.get("model") or model),
            images=images,
            usage=Usage.model_validate(body.get("usage") or {}),
            elapsed_s=elapsed,
            route="images",
            requested=requested,
            dropped=dropped,
        )

    @staticmethod
    def _parse_json(result: ChatResult, schema: type[M]) -> M:
        try:
            return schema.model_validate(_extract_json(result.text))
        except (ValueError, ValidationError) as exc:
            raise StructuredOutputError(
                f"model {result.model or '?'} did not return valid {schema.__name__} JSON: {exc}"
            ) from None

    @staticmethod
    def _json_schema_format(schema: type[BaseModel], name: str | None) -> dict[str, Any]:
        return {
            "type": "json_schema",
            "json_schema": {
                "name": name or schema.__name__,
                "strict": True,
                "schema": schema.model_json_schema(),
            },
        }

    def _cached_models(self) -> list[ModelInfo] | None:
        with self._models_lock:
            if self._models_cache and time.monotonic() - self._models_cache[0] < self.models_ttl:
                return self._models_cache[1]
        return None

    def _store_models(self, body: dict[str, Any]) -> list[ModelInfo]:
        models = [ModelInfo.from_api(m) for m in body.get("data") or [] if isinstance(m, dict) and "id" in m]
        with self._models_lock:
            self._models_cache = (time.monotonic(), models)
        return models

    @staticmethod
    def _filter_models(models: list[ModelInfo], output_modality: str | None) -> list[ModelInfo]:
        if output_modality is None:
            return models
        return [m for m in models if output_modality in m.output_modalities]

    @staticmethod
    def _transport_error(exc: httpx.HTTPError) -> OpenRouterError:
        if isinstance(exc, httpx.TimeoutException):
            return UpstreamError(f"request timed out ({type(exc).__name__})", status=408)
        if isinstance(exc, httpx.RemoteProtocolError):
            return UpstreamError(f"the connection closed before the response was complete ({exc})", status=0)
        return UpstreamError(f"network error ({type(exc).__name__}: {exc})", status=0)


class OpenRouterClient(_Core):
    """Blocking client; thread-safe (one pooled ``httpx.Client``)."""

    def __init__(self, api_key: SecretStr | str | None, *, transport: httpx.BaseTransport | None = None, **kw: Any):
        super().__init__(api_key, **kw)
        self._http = httpx.Client(timeout=self.timeout, transport=transport)

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> OpenRouterClient:
        settings.require_api_key()
        return cls(**{**cls._settings_kwargs(settings), **overrides})

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> OpenRouterClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _send(self, method: str, url: str, headers: dict[str, str], kw: dict[str, Any]) -> tuple[int, Any, bytes]:
        """One attempt, finished or abandoned within the deadline ``self.timeout``.

        The exchange runs on a helper thread that streams the body and checks a cancel flag
        between chunks; the caller waits at most the deadline for it. An abandoned attempt stops
        at its next chunk (or httpx's per-read timeout) and closes its connection, so a provider
        that never finishes cannot hold a worker, nor a connection, for good.
        """
        box: dict[str, Any] = {}
        done = threading.Event()
        cancelled = threading.Event()

        def exchange() -> None:
            try:
                with self._http.stream(method, url, headers=headers, **kw) as response:
                    chunks = []
                    for chunk in response.iter_bytes():
                        if cancelled.is_set():
                            return
                        chunks.append(chunk)
                    box["result"] = (response.status_code, response.headers, b"".join(chunks))
            except BaseException as exc:  # handed to the caller's thread
                box["error"] = exc
            finally:
                done.set()

        threading.Thread(target=exchange, name="openrouter-request", daemon=True).start()
        if not done.wait(self.timeout):
            cancelled.set()
            raise DeadlineExceededError(
                f"no complete response within the {self.timeout:g} s deadline (INFLUENCER_OPENROUTER_TIMEOUT_S)",
                status=408,
            )
        if "error" in box:
            exc = box["error"]
            if isinstance(exc, httpx.HTTPError):
                raise self._transport_error(exc) from None
            raise exc
        return box["result"]

    def _call(
        self,
        method: str,
        path: str,
        parse: Callable[[Any, float], T],
        *,
        pacer: Pacer | None = None,
        **kw: Any,
    ) -> T:
        headers = self._headers()
        if "json" in kw:
            # Serialized once, before pacing: a body with reference images is megabytes of JSON, and
            # encoding it between the pacer's go and the send put tens of ms of jitter on the send time.
            kw["content"] = json.dumps(kw.pop("json"), separators=(",", ":"), ensure_ascii=False).encode()
            headers["Content-Type"] = "application/json"
        url = f"{self.base_url}{path}"

        def once() -> T:
            if pacer is not None:
                pacer.before_send()
            start = time.perf_counter()
            status, response_headers, raw = self._send(method, url, headers, kw)
            try:
                result = parse(self._check(status, response_headers, raw), time.perf_counter() - start)
            except RateLimitError as exc:
                if pacer is not None:
                    pacer.on_response(True, exc.retry_after, own_limit=exc.own_limit)
                raise
            if pacer is not None:
                pacer.on_response(False)
            return result

        return Retrying(**self._retry_kwargs())(once)

    def chat(self, model: str, messages: list[dict[str, Any]], **kw: Any) -> ChatResult:
        return self._call("POST", "/chat/completions", self._parse_chat, json=self._chat_body(model, messages, **kw))

    def chat_json(
        self,
        model: str,
        messages: list[dict[str, Any]],
        schema: type[M],
        *,
        name: str | None = None,
        **kw: Any,
    ) -> tuple[M, ChatResult]:
        result = self.chat(model, messages, response_format=self._json_schema_format(schema, name), **kw)
        return self._parse_json(result, schema), result

    def generate_image(self, model: str, prompt: str, *, pacer: Pacer | None = None, **kw: Any) -> ImageResult:
        """One image through chat completions (the older route, for models the Image API does not list).

        ``pacer`` sees every attempt, retries included: a provider's rate limit counts each request.
        """
        return self._call(
            "POST",
            "/chat/completions",
            self._parse_image,
            pacer=pacer,
            json=self._image_body(model, prompt, **kw),
        )

    def generate_images(
        self,
        model: str,
        prompt: str,
        *,
        n: int = IMAGE_OPTION_DEFAULTS.n,
        negative_prompt: str | None = None,
        reference_images: Sequence[bytes | str | Path] = (),
        params: dict[str, Any] | None = None,
        seed: int | None = None,
        provider: dict[str, Any] | None = None,
        pacer: Pacer | None = None,
    ) -> ImageResult:
        """``POST /images``: up to ``n`` images in one call (providers may return fewer).

        ``params`` are the Image API's own fields (``size``, ``resolution``, ``aspect_ratio``,
        ``quality``, ``output_format``, ...), already checked against the endpoint's capabilities.
        A 413 (the references make the body too large) is answered once by sending the references
        again as small JPEGs; a second 413 is a clear error. ``pacer`` sees every attempt.
        """
        refs = [image_to_data_url(r) for r in reference_images]

        def call(urls: list[str]) -> ImageResult:
            body = self._images_body(
                model, prompt, n=n, negative_prompt=negative_prompt, references=urls, params=params, seed=seed,
                provider=provider,
            )  # fmt: skip
            return self._call(
                "POST", "/images", lambda b, t: self._parse_images(b, t, model, n), pacer=pacer, json=body
            )

        try:
            return call(refs)
        except PayloadTooLargeError as exc:
            if not refs:
                raise
            small = [shrunk_data_url(r) for r in reference_images]
            try:
                return call(small)
            except PayloadTooLargeError:
                size_kb = sum(len(u) for u in small) // 1024
                raise PayloadTooLargeError(
                    f"{model}: the request is too large even with its {len(refs)} reference photo(s) re-encoded to "
                    f"{size_kb} KB of small JPEGs ({exc.message}); send fewer reference photos",
                    status=413,
                    metadata=exc.metadata,
                ) from None

    def list_image_models(self, *, refresh: bool = False) -> list[ImageModelInfo]:
        """``GET /images/models``, cached like the model list (``models_ttl``)."""
        with self._models_lock:
            cached = self._image_models_cache
        if not refresh and cached and time.monotonic() - cached[0] < self.models_ttl:
            return cached[1]

        def parse(body: Any, _: float) -> list[ImageModelInfo]:
            return [ImageModelInfo.from_api(m) for m in body.get("data") or [] if isinstance(m, dict) and "id" in m]

        models = self._call("GET", "/images/models", parse)
        with self._models_lock:
            self._image_models_cache = (time.monotonic(), models)
        return models

    def image_endpoints(self, model: str, *, refresh: bool = False) -> list[ImageEndpoint]:
        """``GET /images/models/{author}/{slug}/endpoints``: each provider's definitive parameters and prices."""
        with self._models_lock:
            cached = self._endpoints_cache.get(model)
        if not refresh and cached and time.monotonic() - cached[0] < self.models_ttl:
            return cached[1]

        def parse(body: Any, _: float) -> list[ImageEndpoint]:
            return [ImageEndpoint.model_validate(e) for e in body.get("endpoints") or [] if isinstance(e, dict)]

        endpoints = self._call("GET", f"/images/models/{model}/endpoints", parse)
        with self._models_lock:
            self._endpoints_cache[model] = (time.monotonic(), endpoints)
        return endpoints

    def list_models(self, output_modality: str | None = None, *, refresh: bool = False) -> list[ModelInfo]:
        models = None if refresh else self._cached_models()
        if models is None:
            models = self._call("GET", "/models", lambda body, _: self._store_models(body))
        return self._filter_models(models, output_modality)

    def key_info(self) -> KeyInfo:
        return self._call("GET", "/key", lambda body, _: KeyInfo.model_validate(body.get("data") or {}))

    def credits(self) -> Credits:
        return self._call("GET", "/credits", lambda body, _: Credits.model_validate(body.get("data") or {}))
