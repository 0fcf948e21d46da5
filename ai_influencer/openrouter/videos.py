"""OpenRouter's Video API: model discovery, parameter checks, price estimates, submit, poll, download.

Video generation is an asynchronous job (``POST /videos`` answers 202 with a job id; ``GET /videos/{id}``
tells its state; ``GET /videos/{id}/content?index=N`` streams the MP4), so it lives beside the blocking
client rather than inside it: it shares the client's key, headers, connection pool, deadline and retry
policy (``OpenRouterClient``), and adds what only a paid asynchronous job needs.

* **Checked before paying.** ``check_request`` compares a request with the model's own listing from
  ``GET /videos/models`` (resolutions, aspect ratios, sizes, durations, frame types, audio, seed,
  passthrough parameters) and fails with one line naming the model, the parameter and what it accepts.
* **Never submitted twice by a retry.** ``POST /videos`` has no idempotency key. A submit is retried only
  when OpenRouter provably did not take it: an HTTP error answer (429, 5xx) or a connection that failed
  before the request was delivered. When the request was delivered but its answer was lost (read timeout,
  dropped connection, a 202 cut mid-body), a job may exist and be billed, so the client raises
  ``SubmitUncertainError`` instead of paying a second time.
* **Downloads are atomic and streamed**: chunks go to a temporary file next to the target (never all in
  memory: clips are tens of MB), the byte count is checked against Content-Length, an optional ``verify``
  (the ledger decodes the clip) runs on the temporary file, then it is fsynced and renamed.
* **The key stays on OpenRouter's host.** Polls and downloads go to ``{base_url}/videos/{id}`` and its
  content route, never to a ``polling_url`` or ``unsigned_urls`` host taken from a response (the OpenAPI
  example points ``unsigned_urls`` at a storage host): the bearer token is sent to the configured API only.

Each call has the client's whole-request deadline, checked between body chunks; a server that sends
nothing is cut by httpx's read timeout (the same value), so a call ends within about twice the deadline
at worst. Downloads have their own, longer deadline (``download_timeout``).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict, Field, field_validator
from tenacity import Retrying

from ai_influencer.io import atomic_write
from ai_influencer.openrouter.client import OpenRouterClient
from ai_influencer.openrouter.data_urls import image_to_data_url
from ai_influencer.openrouter.errors import (
    BadRequestError,
    DeadlineExceededError,
    FatalError,
    UpstreamError,
    describe_body,
    error_from_response,
)
from ai_influencer.pacing import StopFlag, StopRequested

PENDING, IN_PROGRESS, COMPLETED = "pending", "in_progress", "completed"
FAILED, CANCELLED, EXPIRED = "failed", "cancelled", "expired"
STATUSES = (PENDING, IN_PROGRESS, COMPLETED, FAILED, CANCELLED, EXPIRED)
TERMINAL_STATUSES = frozenset({COMPLETED, FAILED, CANCELLED, EXPIRED})
FRAME_TYPES = ("first_frame", "last_frame")
# The values OpenRouter's API accepts at all (openapi.yaml VideoGenerationRequest); a model may take fewer.
RESOLUTIONS = ("480p", "720p", "768p", "1080p", "1K", "2K", "4K")
ASPECT_RATIOS = ("16:9", "9:16", "1:1", "4:3", "3:4", "3:2", "2:3", "21:9", "9:21")
# pricing_skus keys billed once per clip (the OpenAPI example lists "generate"); per-second keys are parsed.
FLAT_SKUS = ("generate", "per-video", "per-generation", "per-request")
_PER_SECOND = re.compile(r"^per-video-second(?:-(?P<variant>.+))?$", re.I)
_SIZE = re.compile(r"^(\d{2,5})x(\d{2,5})$")

ImageInput = bytes | str | Path  # a file, raw bytes, or an https:// / data: URL


class VideoParameterError(BadRequestError):
    """A request the model cannot take, found before anything is sent or paid. ``str()`` is one line."""

    code = "video_parameter"

    def __init__(self, model: str, parameter: str, problem: str) -> None:
        super().__init__(f"{model}: {parameter} {problem}")
        self.model = model
        self.parameter = parameter

    def __str__(self) -> str:
        return self.message


class SubmitUncertainError(FatalError):
    """The submit reached OpenRouter but its answer was lost: a job may exist and be billed.

    Never retried, by the client or by a caller: look the job up in OpenRouter's activity page first.
    """

    code = "submit_uncertain"


class RequestNotSentError(UpstreamError):
    """The connection failed before the request was delivered: nothing was created, safe to retry."""

    code = "not_sent"


class VideoDownloadError(UpstreamError):
    """The clip's bytes are incomplete, empty, not a video, or do not decode; the download is retried."""

    code = "video_download"


class _Transport(Exception):
    def __init__(self, exc: httpx.HTTPError, delivered: bool) -> None:
        super().__init__(str(exc))
        self.exc = exc
        self.delivered = delivered


# ---- what the API says ----------------------------------------------------------------------------------


class VideoModel(BaseModel):
    """One entry of ``GET /videos/models``. A ``None`` list means the listing does not say."""

    model_config = ConfigDict(extra="allow")

    id: str
    canonical_slug: str = ""
    name: str = ""
    supported_resolutions: list[str] | None = None
    supported_aspect_ratios: list[str] | None = None
    supported_sizes: list[str] | None = None
    supported_durations: list[int] | None = None
    supported_frame_images: list[str] | None = None
    generate_audio: bool | None = None  # the model can generate audio with the video
    seed: bool | None = None  # the model honours ``seed``
    pricing_skus: dict[str, str] = Field(default_factory=dict)
    allowed_passthrough_parameters: list[str] = Field(default_factory=list)

    @field_validator("pricing_skus", mode="before")
    @classmethod
    def _skus(cls, value: Any) -> dict[str, str]:
        return {str(k): str(v) for k, v in (value or {}).items()}

    @field_validator("allowed_passthrough_parameters", mode="before")
    @classmethod
    def _passthrough(cls, value: Any) -> list[str]:
        return list(value or [])


class VideoUsage(BaseModel):
    model_config = ConfigDict(extra="allow")

    cost: float | None = None
    is_byok: bool | None = None


class VideoJob(BaseModel):
    """A job as ``POST /videos`` (202) or ``GET /videos/{id}`` describes it."""

    model_config = ConfigDict(extra="allow")

    id: str
    status: str = PENDING
    polling_url: str = ""
    generation_id: str | None = None
    unsigned_urls: list[str] = Field(default_factory=list)
    usage: VideoUsage | None = None
    error: str | None = None

    @field_validator("unsigned_urls", mode="before")
    @classmethod
    def _urls(cls, value: Any) -> list[str]:
        return list(value or [])

    @field_validator("error", mode="before")
    @classmethod
    def _error(cls, value: Any) -> str | None:
        if value is None or isinstance(value, str):
            return value
        if isinstance(value, dict):  # some providers nest {"message": ...}
            return str(value.get("message") or value)
        return str(value)

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES

    @property
    def outputs(self) -> int:
        """How many videos the job made (``content?index=0..N-1``); at least one once completed."""
        return max(1, len(self.unsigned_urls)) if self.status == COMPLETED else 0


# ---- what we ask for ------------------------------------------------------------------------------------


def _image_url(image: ImageInput) -> str:
    if isinstance(image, str) and image.startswith(("https://", "http://", "data:")):
        return image
    return image_to_data_url(image)


def image_digest(image: ImageInput) -> str:
    """What identifies an input image in a job key and a sidecar: the SHA-256 of its bytes (or of its URL)."""
    if isinstance(image, bytes):
        return hashlib.sha256(image).hexdigest()
    if isinstance(image, str) and image.startswith(("https://", "http://", "data:")):
        return hashlib.sha256(image.encode()).hexdigest()
    with Path(image).open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _image_label(image: ImageInput) -> str:
    if isinstance(image, bytes):
        return "<bytes>"
    if isinstance(image, str) and image.startswith("data:"):
        return "<data url>"
    return str(image)


@dataclass(frozen=True)
class VideoRequest:
    """One clip to generate. ``first_frame``/``last_frame`` make it image-to-video (they win over
    ``references``, as on OpenRouter); ``references`` alone make it reference-to-video."""

    model: str
    prompt: str = ""
    duration: int | None = None
    resolution: str | None = None
    aspect_ratio: str | None = None
    size: str | None = None
    first_frame: ImageInput | None = None
    last_frame: ImageInput | None = None
    references: tuple[ImageInput, ...] = ()
    generate_audio: bool | None = None
    seed: int | None = None
    callback_url: str | None = None
    provider_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    @property
    def frame_images(self) -> list[tuple[str, ImageInput]]:
        frames = [("first_frame", self.first_frame), ("last_frame", self.last_frame)]
        return [(kind, image) for kind, image in frames if image is not None]

    @property
    def mode(self) -> str:
        if self.frame_images:
            return "image-to-video"
        return "reference-to-video" if self.references else "text-to-video"

    def body(self) -> dict[str, Any]:
        """The JSON of ``POST /videos`` (images as data URLs: the provider needs no access to our disk)."""
        body: dict[str, Any] = {"model": self.model}
        if self.prompt:
            body["prompt"] = self.prompt
        for name in ("duration", "resolution", "aspect_ratio", "size", "generate_audio", "seed", "callback_url"):
            value = getattr(self, name)
            if value is not None:
                body[name] = value
        if self.frame_images:
            body["frame_images"] = [
                {"type": "image_url", "image_url": {"url": _image_url(image)}, "frame_type": kind}
                for kind, image in self.frame_images
            ]
        if self.references:
            body["input_references"] = [
                {"type": "image_url", "image_url": {"url": _image_url(r)}} for r in self.references
            ]
        if self.provider_options:
            body["provider"] = {"options": {k: dict(v) for k, v in self.provider_options.items()}}
        return body

    def parameters(self) -> dict[str, Any]:
        """The request as sidecars and job keys record it: images by SHA-256 and name, never their bytes."""
        out: dict[str, Any] = {"model": self.model, "prompt": self.prompt, "mode": self.mode}
        for name in ("duration", "resolution", "aspect_ratio", "size", "generate_audio", "seed"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        if self.frame_images:
            out["frame_images"] = [
                {"frame_type": kind, "sha256": image_digest(image), "source": _image_label(image)}
                for kind, image in self.frame_images
            ]
        if self.references:
            out["input_references"] = [{"sha256": image_digest(r), "source": _image_label(r)} for r in self.references]
        if self.provider_options:
            out["provider_options"] = {k: dict(v) for k, v in self.provider_options.items()}
        return out


# ---- checks and prices ----------------------------------------------------------------------------------


def _accepts(values: list[Any] | None, default: tuple[str, ...] = ()) -> list[Any]:
    return list(values) if values else list(default)


def _listing(values: list[Any]) -> str:
    return ", ".join(str(v) for v in values) if values else "none"


def check_request(model: VideoModel, request: VideoRequest) -> None:
    """Raise ``VideoParameterError`` (one line: model, parameter, what it accepts) for anything the model's
    listing rules out. A list the listing leaves empty (``null``) is not held against the request, except
    for frame images, seed and audio, which a model must declare to support."""
    m = model.id
    if not request.prompt.strip() and not request.frame_images:
        raise VideoParameterError(m, "prompt", "is empty; it is required unless a first or last frame is given")
    if request.size is not None and (request.resolution is not None or request.aspect_ratio is not None):
        raise VideoParameterError(
            m, "size", f"{request.size!r} given with resolution/aspect_ratio; they are interchangeable: give one"
        )
    if request.resolution is not None:
        allowed = _accepts(model.supported_resolutions, RESOLUTIONS)
        if request.resolution not in allowed:
            raise VideoParameterError(
                m, "resolution", f"{request.resolution!r} is not supported; it accepts {_listing(allowed)}"
            )
    if request.aspect_ratio is not None:
        allowed = _accepts(model.supported_aspect_ratios, ASPECT_RATIOS)
        if request.aspect_ratio not in allowed:
            raise VideoParameterError(
                m, "aspect_ratio", f"{request.aspect_ratio!r} is not supported; it accepts {_listing(allowed)}"
            )
    if request.size is not None:
        if not _SIZE.match(request.size):
            raise VideoParameterError(m, "size", f"{request.size!r} is not WIDTHxHEIGHT (e.g. 720x1280)")
        if model.supported_sizes and request.size not in model.supported_sizes:
            raise VideoParameterError(
                m, "size", f"{request.size!r} is not supported; it accepts {_listing(model.supported_sizes)}"
            )
    if request.duration is not None:
        if isinstance(request.duration, bool) or not isinstance(request.duration, int) or request.duration < 1:
            raise VideoParameterError(m, "duration", f"{request.duration!r} is not a whole number of seconds >= 1")
        if model.supported_durations and request.duration not in model.supported_durations:
            accepted = _listing(sorted(model.supported_durations))
            raise VideoParameterError(m, "duration", f"{request.duration} s is not supported; it accepts {accepted} s")
    for kind, _ in request.frame_images:
        supported = model.supported_frame_images or []
        if kind not in supported:
            what = f"accepts {_listing(supported)}" if supported else "takes no frame images (no image-to-video)"
            raise VideoParameterError(m, "frame_images", f"{kind} is not supported; it {what}")
    if request.generate_audio and model.generate_audio is False:
        raise VideoParameterError(m, "generate_audio", "is not supported: the model makes silent video only")
    if request.seed is not None and model.seed is False:
        raise VideoParameterError(m, "seed", "is not supported by this model")
    if request.callback_url is not None and not request.callback_url.startswith("https://"):
        raise VideoParameterError(m, "callback_url", f"{request.callback_url!r} must be an https:// URL")
    allowed_pass = model.allowed_passthrough_parameters
    for provider, options in request.provider_options.items():
        for key in options:
            if key not in allowed_pass:
                raise VideoParameterError(
                    m,
                    "provider.options",
                    f"{provider}.{key} is not a passthrough parameter; it accepts {_listing(allowed_pass)}",
                )


@dataclass(frozen=True)
class PriceEstimate:
    """What one clip is expected to cost, from the model's ``pricing_skus``. ``usd`` is None when the
    listing has no price this code can read (e.g. per-token SKUs); ``basis`` says how it was priced."""

    usd: float | None
    seconds: int | None
    basis: str

    def describe(self) -> str:
        return f"${self.usd:.4f} ({self.basis})" if self.usd is not None else f"unknown ({self.basis})"


def _price(value: str) -> float | None:
    try:
        price = float(value)
    except (TypeError, ValueError):
        return None
    return price if math.isfinite(price) and price >= 0 else None


def pricing_resolution(request: VideoRequest) -> str | None:
    """The resolution a clip is billed at: the requested one, else the short side of an explicit size."""
    if request.resolution is not None:
        return request.resolution
    if request.size and (m := _SIZE.match(request.size)):
        return f"{min(int(m[1]), int(m[2]))}p"
    return None


def estimate_price(model: VideoModel, request: VideoRequest) -> PriceEstimate:
    """Per-second SKUs (``per-video-second``, ``per-video-second-<resolution>``) times the duration, plus any
    per-clip SKU. A resolution variant wins over the base price; where several SKUs could apply (unknown
    resolution, or variants this code does not know, such as audio tiers) the highest is used: a budget
    must not be crossed because of an optimistic guess."""
    seconds = request.duration
    assumed = ""
    if seconds is None and model.supported_durations:
        seconds = max(model.supported_durations)
        assumed = f"; no duration given, priced at the longest listed ({seconds} s)"
    resolution = pricing_resolution(request)
    res_tokens = {r.lower() for r in RESOLUTIONS}
    generic: list[tuple[str, float]] = []
    matching: list[tuple[str, float]] = []
    flat: list[tuple[str, float]] = []
    for sku, raw in model.pricing_skus.items():
        price = _price(raw)
        if price is None:
            continue
        if sku.lower() in FLAT_SKUS:
            flat.append((sku, price))
            continue
        m = _PER_SECOND.match(sku)
        if not m:
            continue
        tokens = set((m["variant"] or "").lower().split("-")) - {""}
        sku_res = tokens & res_tokens
        if not sku_res:
            generic.append((sku, price))
        elif resolution is None or resolution.lower() in sku_res:
            matching.append((sku, price))
    per_second = max(matching or generic, key=lambda x: x[1], default=None)
    if per_second is None and not flat:
        keys = ", ".join(sorted(model.pricing_skus)) or "none"
        return PriceEstimate(None, seconds, f"{model.id} lists no per-second or per-clip price (pricing_skus: {keys})")
    usd = 0.0
    parts = []
    if per_second is not None:
        if seconds is None:
            return PriceEstimate(None, None, f"{per_second[0]} is per second and no duration is known")
        usd += per_second[1] * seconds
        parts.append(f"{per_second[0]} ${per_second[1]:g}/s x {seconds} s")
    if flat:
        sku, price = max(flat, key=lambda x: x[1])
        usd += price
        parts.append(f"{sku} ${price:g}")
    return PriceEstimate(round(usd, 6), seconds, " + ".join(parts) + assumed)


# ---- the API --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DownloadedVideo:
    path: Path
    bytes: int
    sha256: str
    content_type: str
    elapsed_s: float


_NOT_DELIVERED = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.WriteError, httpx.WriteTimeout)


class VideoAPI:
    """The Video API over one ``OpenRouterClient`` (its key, pool, deadline, retries). Thread-safe.

    The model list is cached for the client's ``models_ttl`` (like ``list_models``): checks and price
    estimates for every clip of a run cost one request.
    """

    def __init__(self, client: OpenRouterClient, *, download_timeout: float = 900.0):
        self.client = client
        self.download_timeout = download_timeout
        self._models: tuple[float, dict[str, VideoModel]] | None = None
        self._lock = threading.Lock()

    # ---- discovery ------------------------------------------------------------------------------------
    def list_models(self, *, refresh: bool = False) -> list[VideoModel]:
        with self._lock:
            cached = self._models
        if refresh or cached is None or time.monotonic() - cached[0] >= self.client.models_ttl:
            body = self._json("GET", "/videos/models")
            models = {
                m.id: m
                for m in (VideoModel.model_validate(raw) for raw in body.get("data") or [] if isinstance(raw, dict))
            }
            cached = (time.monotonic(), models)
            with self._lock:
                self._models = cached
        return list(cached[1].values())

    def get_model(self, model_id: str) -> VideoModel:
        models = {m.id: m for m in self.list_models()}
        if model_id not in models:
            known = sorted(models)
            shown = ", ".join(known[:12]) + (f" (+{len(known) - 12} more)" if len(known) > 12 else "")
            raise VideoParameterError(
                model_id, "model", f"is not a video model on OpenRouter; known: {shown or 'none'}"
            )
        return models[model_id]

    def check(self, request: VideoRequest) -> VideoModel:
        """The model's listing, after ``check_request`` found nothing it rules out."""
        model = self.get_model(request.model)
        check_request(model, request)
        return model

    def estimate(self, request: VideoRequest) -> PriceEstimate:
        return estimate_price(self.get_model(request.model), request)

    # ---- jobs -----------------------------------------------------------------------------------------
    def submit(self, request: VideoRequest, *, check: bool = True) -> VideoJob:
        """``POST /videos``: the paid call. Returns the pending job; see the module doc on retries."""
        if check:
            self.check(request)
        body = self._json("POST", "/videos", body=request.body(), submit=True)
        try:
            return VideoJob.model_validate(body)
        except ValueError:
            raise SubmitUncertainError(
                f"{request.model}: the submit was accepted but its answer is not a job ({str(body)[:200]})"
            ) from None

    def poll(self, job_id: str) -> VideoJob:
        """``GET /videos/{id}``: free; retried like any GET."""
        body = self._json("GET", f"/videos/{urllib.parse.quote(job_id, safe='')}")
        job = VideoJob.model_validate({**body, "id": body.get("id") or job_id})
        return job

    def download(
        self,
        job_id: str,
        target: Path,
        *,
        index: int = 0,
        stop: StopFlag | None = None,
        verify: Callable[[Path], object] | None = None,
    ) -> DownloadedVideo:
        """Stream ``content?index=N`` into ``target`` atomically; ``verify(tmp)`` may reject the bytes (it
        raises), which counts as a bad download and is retried. A set ``stop`` abandons it (nothing kept:
        downloads are free to repeat)."""

        def once() -> DownloadedVideo:
            return self._download_once(job_id, Path(target), index, stop, verify)

        return Retrying(**self.client._retry_kwargs())(once)

    # ---- transport ------------------------------------------------------------------------------------
    def _url(self, path: str) -> str:
        return f"{self.client.base_url}{path}"

    def _exchange(
        self, method: str, path: str, content: bytes | None, headers: dict[str, str]
    ) -> tuple[int, httpx.Headers, bytes]:
        deadline = time.monotonic() + self.client.timeout
        try:
            with self.client._http.stream(
                method, self._url(path), content=content, headers=headers, timeout=self.client.timeout
            ) as response:
                chunks = []
                for chunk in response.iter_bytes():
                    chunks.append(chunk)
                    if time.monotonic() > deadline:
                        raise DeadlineExceededError(
                            f"no complete response within the {self.client.timeout:g} s deadline "
                            "(INFLUENCER_OPENROUTER_TIMEOUT_S)",
                            status=408,
                        )
                return response.status_code, response.headers, b"".join(chunks)
        except httpx.HTTPError as exc:
            raise _Transport(exc, delivered=not isinstance(exc, _NOT_DELIVERED)) from None

    def _json(
        self, method: str, path: str, *, body: dict[str, Any] | None = None, submit: bool = False
    ) -> dict[str, Any]:
        headers = self.client._headers()
        content = None
        if body is not None:
            content = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
            headers["Content-Type"] = "application/json"

        def once() -> dict[str, Any]:
            try:
                status, response_headers, raw = self._exchange(method, path, content, headers)
            except _Transport as t:
                if not t.delivered:
                    raise RequestNotSentError(
                        f"the request was not delivered ({type(t.exc).__name__}: {t.exc})"
                    ) from None
                if submit:
                    raise SubmitUncertainError(
                        f"the submit was sent but its answer was lost ({type(t.exc).__name__}); a job may exist and "
                        "be billed: not retried (check https://openrouter.ai/activity)"
                    ) from None
                raise self.client._transport_error(t.exc) from None
            except DeadlineExceededError as exc:
                if submit:
                    raise SubmitUncertainError(
                        f"the submit was sent but its answer did not complete in time ({exc.message}); a job may "
                        "exist and be billed: not retried (check https://openrouter.ai/activity)"
                    ) from None
                raise
            return self._parse(status, response_headers, raw, submit=submit)

        return Retrying(**self.client._retry_kwargs())(once)

    @staticmethod
    def _parse(status: int, headers: httpx.Headers, raw: bytes, *, submit: bool) -> dict[str, Any]:
        try:
            body: Any = json.loads(raw)
        except ValueError:
            body = None
        if not 200 <= status < 300:
            raise error_from_response(
                status, body if body is not None else raw.decode("utf-8", "replace"), dict(headers)
            )
        if isinstance(body, dict) and "error" in body and "id" not in body:
            raise error_from_response(200, body, dict(headers))
        if not isinstance(body, dict) or (submit and not body.get("id")):
            what = describe_body(raw) if not isinstance(body, dict) else "no job id"
            if submit:
                raise SubmitUncertainError(
                    f"the submit was accepted ({status}) but its answer is unusable ({what}); a job may exist and be "
                    "billed: not retried (check https://openrouter.ai/activity)"
                )
            raise UpstreamError(f"expected a JSON object, got {what}", status=200)
        return body

    def _download_once(
        self,
        job_id: str,
        target: Path,
        index: int,
        stop: StopFlag | None,
        verify: Callable[[Path], object] | None,
    ) -> DownloadedVideo:
        headers = self.client._headers()
        headers["Accept"] = "video/*, application/octet-stream"
        path = f"/videos/{urllib.parse.quote(job_id, safe='')}/content?index={int(index)}"
        start = time.monotonic()
        deadline = start + self.download_timeout
        digest = hashlib.sha256()
        info: dict[str, Any] = {}

        def write(tmp: Path) -> None:
            with self.client._http.stream(
                "GET", self._url(path), headers=headers, timeout=self.client.timeout
            ) as response:
                if response.status_code != 200:
                    raw = response.read()
                    try:
                        body: Any = json.loads(raw)
                    except ValueError:
                        body = raw.decode("utf-8", "replace")
                    raise error_from_response(response.status_code, body, dict(response.headers))
                ctype = response.headers.get("content-type", "")
                if ctype.startswith(("application/json", "text/html", "text/plain")):
                    raise VideoDownloadError(
                        f"job {job_id} content is not a video ({ctype}: {describe_body(response.read())})", status=200
                    )
                length = response.headers.get("content-length")
                expected = int(length) if length and length.isdigit() else None
                received = 0
                with tmp.open("wb") as fh:
                    for chunk in response.iter_bytes():  # as it arrives: stop and deadline act mid-body
                        if stop is not None and stop.is_set():
                            raise StopRequested(
                                f"download of job {job_id} abandoned: {stop.reason or 'stop requested'}"
                            )
                        if time.monotonic() > deadline:
                            raise DeadlineExceededError(
                                f"download of job {job_id} took longer than {self.download_timeout:g} s", status=408
                            )
                        fh.write(chunk)
                        digest.update(chunk)
                        received += len(chunk)
                if expected is not None and received != expected:
                    raise VideoDownloadError(
                        f"download of job {job_id} ended after {received} of {expected} bytes", status=200
                    )
                if received == 0:
                    raise VideoDownloadError(f"job {job_id} content is empty", status=200)
                if verify is not None:
                    try:
                        verify(tmp)
                    except (ValueError, OSError) as exc:
                        raise VideoDownloadError(
                            f"job {job_id} content is not a usable video: {exc}", status=200
                        ) from None
                info.update(bytes=received, content_type=ctype)

        try:
            atomic_write(target, write)
        except httpx.HTTPError as exc:
            raise self.client._transport_error(exc) from None
        return DownloadedVideo(
            target, info["bytes"], digest.hexdigest(), info["content_type"], round(time.monotonic() - start, 3)
        )
