"""A stub OpenRouter server for tests and benchmarks.

A real HTTP server on 127.0.0.1 (random port) speaking OpenRouter's wire
format: ``POST /chat/completions`` (text, ``json_schema`` structured output,
``modalities: ["image","text"]`` image generation), the Image API as
OpenRouter's docs describe it (``GET /images/models`` with typed capability
descriptors, ``GET /images/models/{author}/{slug}/endpoints`` with each
provider's definitive parameters and pricing lines, ``POST /images`` with ``n``,
``seed``, sizes, ``input_references`` and provider routing, parameters checked
against the endpoint that serves the request, billed by its price lines, all or
nothing), ``GET /models``, ``/key``, ``/credits``, ``/generation``. It adds what
the real service does to a client under load: latency, a requests-per-second
limit answered with 429 + Retry-After, injected faults of every class (on both
image routes), short answers, a credit balance and a key limit that end in 402
(``limit_source``), a body limit answered with 413, and, with
``chat_images=False``, a chat route that refuses image output (a look-alike that
serves images only on ``/images``). Generated "images" are real photos (the
persona, other people, blurred persona) so downstream identity QC can be tested
end to end; with a ``seed`` the same request answers the same images. Every
request is recorded, so tests can count paid calls, images and requests per
second.

It lives with the tests and is never the product's default endpoint.
"""

from __future__ import annotations

import base64
import collections
import copy
import hashlib
import io
import json
import random
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

from PIL import Image, ImageEnhance, ImageFilter, ImageOps

from tests.support.assets import faces_dir

FAULTS = (
    "400",
    "401",
    "402",
    "403",
    "408",
    "429",
    "500",
    "502",
    "503",
    "200-error",
    "empty-choices",
    "no-image",
    "bad-image",
    "timeout",
    "disconnect",
    # Faults an independent look-alike of the provider injects (and ours must survive):
    "truncated-jpeg",  # a JPEG whose base64 is cut on a 4-character boundary: valid base64, truncated image
    "html-data-url",  # an HTML error page inside the image's data URL
    "html-502",  # a 502 answered by a proxy's HTML page
    "html-503",
    "cut-json",  # a 200 whose JSON body stops half-way, sent without Content-Length
    "drip",  # a 200 whose body trickles in over ``drip_seconds`` (each chunk well inside any read timeout)
    # The Image API's own errors and answers:
    "413",  # payload too large
    "524",  # upstream timeout at the edge
    "529",  # provider overloaded
    "402-credits",  # 402 with error.metadata.limit_source = openrouter_credits
    "402-key",  # 402 with error.metadata.limit_source = openrouter_key_limit
    "429-no-retry-after",  # a 429 without a Retry-After header (an upstream provider's)
    "short",  # an Image API answer with fewer images than asked (half, rounded up; billed for those)
)

IMAGE_CALLS = ("/images", "/chat/completions")  # the paths an image request may take (chat: the older route)
ASPECTS = ["1:1", "2:3", "3:2", "3:4", "4:3", "4:5", "5:4", "9:16", "16:9", "21:9"]
SEED_RANGE = {"type": "range", "min": 0, "max": 2147483647}


def _endpoint(name: str, slug: str, params: dict[str, Any], pricing: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "provider_name": name,
        "provider_slug": slug,
        "provider_tag": slug,
        "supported_parameters": params,
        "allowed_passthrough_parameters": [],
        "supports_streaming": False,
        "pricing": pricing,
    }


# The Image API's catalogue: model id -> (display name, endpoints). Shapes from OpenRouter's docs
# (guides/overview/multimodal/image-generation.mdx, openapi ImageEndpoint / ImagePricingEntry).
DEFAULT_IMAGE_MODELS: dict[str, tuple[str, list[dict[str, Any]]]] = {
    "google/gemini-2.5-flash-image": (
        "Gemini 2.5 Flash Image",
        [
            _endpoint(
                "Google AI Studio",
                "google-ai-studio",
                {
                    "aspect_ratio": {"type": "enum", "values": ASPECTS},
                    "input_references": {"type": "range", "min": 0, "max": 3},
                },
                [{"billable": "output_image", "unit": "image", "cost_usd": 0.039}],
            )
        ],
    ),
    "bytedance-seed/seedream-4.5": (
        "Seedream 4.5",
        [
            _endpoint(
                "Bytedance",
                "bytedance",
                {
                    "n": {"type": "range", "min": 1, "max": 4},
                    "resolution": {"type": "enum", "values": ["1K", "2K", "4K"]},
                    "aspect_ratio": {"type": "enum", "values": ASPECTS},
                    "seed": SEED_RANGE,
                    "input_references": {"type": "range", "min": 0, "max": 10},
                },
                [
                    {"billable": "output_image", "unit": "image", "cost_usd": 0.04},
                    {"billable": "output_image", "unit": "image", "cost_usd": 0.08, "variant": "4k"},
                    {"billable": "input_reference", "unit": "image", "cost_usd": 0.002},
                ],
            )
        ],
    ),
    "black-forest-labs/flux.2-pro": (
        "FLUX.2 Pro",
        [
            _endpoint(
                "Black Forest Labs",
                "black-forest-labs",
                {
                    "aspect_ratio": {"type": "enum", "values": ASPECTS},
                    "resolution": {"type": "enum", "values": ["1K", "2K"]},
                    "seed": {"type": "boolean"},
                    "output_format": {"type": "enum", "values": ["jpeg", "png"]},
                    "input_references": {"type": "range", "min": 0, "max": 8},
                },
                [
                    {"billable": "output_image", "unit": "megapixel", "cost_usd": 0.03},
                    {"billable": "input_reference", "unit": "megapixel", "cost_usd": 0.015},
                ],
            )
        ],
    ),
    "openai/gpt-image-1": (
        "GPT Image 1",
        [
            _endpoint(
                "OpenAI",
                "openai",
                {
                    "n": {"type": "range", "min": 1, "max": 10},
                    "size": {"type": "enum", "values": ["1024x1024", "1536x1024", "1024x1536", "auto"]},
                    "quality": {"type": "enum", "values": ["auto", "low", "medium", "high"]},
                    "output_format": {"type": "enum", "values": ["png", "jpeg", "webp"]},
                    "background": {"type": "enum", "values": ["auto", "transparent", "opaque"]},
                    "output_compression": {"type": "range", "min": 0, "max": 100},
                    "input_references": {"type": "range", "min": 0, "max": 16},
                },
                [
                    {"billable": "output_image", "unit": "image", "cost_usd": 0.042},
                    {"billable": "input_reference", "unit": "image", "cost_usd": 0.01},
                ],
            )
        ],
    ),
}
_TIER_SIDE = {"512": 512, "1K": 1024, "2K": 2048, "4K": 4096}
_MIME = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}

DEFAULT_MODELS: list[dict[str, Any]] = [
    {
        "id": "meta-llama/llama-3.1-70b-instruct",
        "name": "Llama 3.1 70B Instruct",
        "context_length": 131072,
        "pricing": {"prompt": "0.0000004", "completion": "0.0000004"},
        "architecture": {
            "modality": "text->text",
            "input_modalities": ["text"],
            "output_modalities": ["text"],
        },
        "supported_parameters": ["temperature", "max_tokens", "response_format", "structured_outputs"],
    },
    {
        "id": "google/gemini-2.5-flash",
        "name": "Gemini 2.5 Flash",
        "context_length": 1048576,
        "pricing": {"prompt": "0.0000003", "completion": "0.0000025"},
        "architecture": {
            "modality": "text+image->text",
            "input_modalities": ["text", "image"],
            "output_modalities": ["text"],
        },
        "supported_parameters": ["temperature", "max_tokens", "response_format", "structured_outputs"],
    },
    {
        "id": "google/gemini-2.5-flash-image",
        "name": "Gemini 2.5 Flash Image",
        "context_length": 32768,
        "pricing": {"prompt": "0.0000003", "completion": "0.0000025", "image": "0.039"},
        "architecture": {
            "modality": "text+image->text+image",
            "input_modalities": ["text", "image"],
            "output_modalities": ["image", "text"],
        },
        "supported_parameters": ["temperature", "max_tokens"],
    },
    {
        "id": "black-forest-labs/flux.2-pro",
        "name": "FLUX.2 Pro",
        "context_length": 46864,
        "pricing": {"prompt": "0", "completion": "0", "image": "0.03"},
        "architecture": {
            "modality": "text+image->image",
            "input_modalities": ["text", "image"],
            "output_modalities": ["image"],
        },
        "supported_parameters": [],
    },
    {
        # Makes images through chat completions only: the Image API does not list it.
        "id": "acme/chat-painter",
        "name": "Chat Painter",
        "context_length": 8192,
        "pricing": {"prompt": "0", "completion": "0", "image": "0.02"},
        "architecture": {
            "modality": "text+image->text+image",
            "input_modalities": ["text", "image"],
            "output_modalities": ["image", "text"],
        },
        "supported_parameters": [],
    },
]


@dataclass
class RecordedRequest:
    t: float
    method: str
    path: str
    body: Any
    status: int = 0
    paid: bool = False
    fault: str | None = None
    served_kind: str | None = None
    images: int = 0  # images the answer carried (paid ones)
    asked: int = 0  # images the request asked for (Image API ``n``; 1 on the chat route)
    authorization_ok: bool = False
    headers: dict[str, str] = field(default_factory=dict)
    wall: float = field(default_factory=time.time)  # arrival, wall clock (to compare with server timestamps)


def _schema_instance(schema: dict[str, Any], defs: dict[str, Any], name: str = "value", depth: int = 0) -> Any:
    """A minimal JSON instance satisfying a (pydantic-generated) JSON schema."""
    if depth > 12:
        return None
    if "$ref" in schema:
        return _schema_instance(defs[schema["$ref"].split("/")[-1]], defs, name, depth + 1)
    for key in ("anyOf", "oneOf", "allOf"):
        if key in schema:
            options = [s for s in schema[key] if s.get("type") != "null"] or schema[key]
            return _schema_instance(options[0], defs, name, depth + 1)
    if "const" in schema:
        return schema["const"]
    if "enum" in schema:
        return schema["enum"][0]
    kind = schema.get("type", "object")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "string")
    if kind == "object":
        props = schema.get("properties", {})
        return {k: _schema_instance(v, defs, k, depth + 1) for k, v in props.items()}
    if kind == "array":
        count = max(int(schema.get("minItems", 1)), 1)
        item = schema.get("items", {"type": "string"})
        return [
            f"stub {name} {i + 1}" if item.get("type") == "string" else _schema_instance(item, defs, name, depth + 1)
            for i in range(count)
        ]
    if kind == "string":
        text = f"stub {name}"
        return text.ljust(int(schema.get("minLength", 0)), ".")
    if kind == "integer":
        return int(schema.get("minimum", 1))
    if kind == "number":
        return float(schema.get("minimum", 1.0))
    if kind == "boolean":
        return True
    return None


class _PhotoPool:
    """Real photos turned into varied 'generations': random square crop around the face, flip, colour."""

    # Face boxes (left, top, right, bottom) found by dlib's HOG detector on the shipped files.
    PERSONA: ClassVar[dict[str, tuple[int, int, int, int]]] = {
        "obama.jpg": (349, 142, 617, 409),
        "obama2.jpg": (171, 290, 438, 558),
        "obama3.jpg": (633, 277, 954, 598),
    }
    OTHER: ClassVar[dict[str, tuple[int, int, int, int]]] = {
        "biden.jpg": (419, 241, 740, 562),
        "t1.jpg": (870, 67, 999, 196),
    }

    def __init__(self, size: int) -> None:
        root = faces_dir()
        self.size = size
        self.persona = [(Image.open(root / n).convert("RGB"), box) for n, box in self.PERSONA.items()]
        self.other = [(Image.open(root / n).convert("RGB"), box) for n, box in self.OTHER.items()]

    def render(self, kind: str, rng: random.Random, fmt: str = "PNG") -> bytes:
        source = self.other if kind == "other" else self.persona
        image, (left, top, right, bottom) = source[rng.randrange(len(source))]
        fw = right - left
        side = int(fw * rng.uniform(1.5, 2.1))
        cx = (left + right) / 2 + rng.uniform(-0.15, 0.15) * fw
        cy = (top + bottom) / 2 + rng.uniform(-0.1, 0.15) * fw
        x0 = int(max(0, min(image.width - side, cx - side / 2)))
        y0 = int(max(0, min(image.height - side, cy - side / 2)))
        crop = image.crop((x0, y0, x0 + side, y0 + side)).resize((self.size, self.size), Image.Resampling.LANCZOS)
        if rng.random() < 0.5:
            crop = ImageOps.mirror(crop)
        crop = ImageEnhance.Brightness(crop).enhance(rng.uniform(0.85, 1.15))
        crop = ImageEnhance.Color(crop).enhance(rng.uniform(0.8, 1.2))
        if kind == "blurred":
            crop = crop.filter(ImageFilter.GaussianBlur(radius=self.size / 90))
        buf = io.BytesIO()
        if fmt == "JPEG":
            crop.save(buf, format="JPEG", quality=90)
        elif fmt == "WEBP":
            crop.save(buf, format="WEBP", quality=90)
        else:
            crop.save(buf, format="PNG", compress_level=1)
        return buf.getvalue()


class StubOpenRouter:
    """Start with ``with StubOpenRouter() as stub:``; point clients at ``stub.base_url``."""

    def __init__(
        self,
        *,
        valid_keys: Iterable[str] = ("sk-or-test-key",),
        latency: float = 0.0,
        latency_paths: tuple[str, ...] | None = None,
        rps_limit: float | None = None,
        retry_after: str = "1",
        limit_headers: bool = False,
        upstream_429: float = 0.0,
        upstream_retry_after: str | None = None,
        image_mix: dict[str, float] | None = None,
        image_size: int = 512,
        image_cost: float = 0.039,
        text_cost: float = 0.0005,
        credits_total: float = 100.0,
        timeout_sleep: float = 5.0,
        drip_seconds: float = 60.0,
        report_cost: bool = True,
        seed: int = 0,
        chat_reply: Callable[[dict[str, Any]], str] | None = None,
        models: list[dict[str, Any]] | None = None,
        image_models: dict[str, tuple[str, list[dict[str, Any]]]] | None = None,
        chat_images: bool = True,
        answer_cap: int | None = None,
        key_limit: float | None = None,
        max_body_bytes: int | None = None,
    ) -> None:
        self.valid_keys = set(valid_keys)
        self.latency = latency
        # Only these path suffixes are slow (e.g. image generation); None: every path.
        self.latency_paths = latency_paths
        self.rps_limit = rps_limit
        self.retry_after = retry_after
        # How OpenRouter itself answers its own limits (``rps_limit``, ``rate_limit_burst``): with
        # X-RateLimit-Limit/Remaining/Reset headers. False: the bare 429 + Retry-After of older tests.
        self.limit_headers = limit_headers
        # An upstream provider that is busy, whatever our rate: this share of image requests is answered
        # 429 with no X-RateLimit-* headers, and Retry-After only when ``upstream_retry_after`` is set
        # (OpenRouter passes one on only when every provider it tried gave a hint).
        self.upstream_429 = upstream_429
        self.upstream_retry_after = upstream_retry_after
        self._upstream_rng = random.Random(seed)
        self.image_mix = image_mix or {"persona": 0.7, "other": 0.15, "blurred": 0.15}
        self.image_cost = image_cost
        self.text_cost = text_cost
        self.credits_total = credits_total
        self.timeout_sleep = timeout_sleep
        self.drip_seconds = drip_seconds
        self.report_cost = report_cost  # False: usage carries no cost (some providers/BYOK keys)
        self.seed = seed
        self._limited_until = 0.0  # every request is answered 429 until then (see ``rate_limit_burst``)
        self.chat_reply = chat_reply
        # Optional: pick the served image kind from the request (e.g. "other" for one outfit), else image_mix.
        self.kind_for: Callable[[dict[str, Any]], str | None] | None = None
        self.models = models or DEFAULT_MODELS
        # The Image API: {model id: (name, endpoints)}; an empty dict answers 404 (a look-alike without it).
        if image_models is None:  # the default catalogue, the default image model priced at ``image_cost``
            image_models = copy.deepcopy(DEFAULT_IMAGE_MODELS)
            image_models["google/gemini-2.5-flash-image"][1][0]["pricing"][0]["cost_usd"] = image_cost
        self.image_models = image_models
        self.chat_images = chat_images  # False: the chat route refuses image output (images only on /images)
        self.answer_cap = answer_cap  # every Image API answer carries at most this many images
        self.key_limit = key_limit  # the key's own credit limit (402 openrouter_key_limit beyond it)
        self.max_body_bytes = max_body_bytes  # POST /images bodies above this are answered 413
        # Unseeded answers per prompt: the n-th ask of a prompt gets the n-th image, whatever arrived between.
        self._unseeded: collections.Counter[str] = collections.Counter()
        self.usage_total = 0.0
        self.requests: list[RecordedRequest] = []
        self._faults: collections.deque[tuple[str, str | None]] = collections.deque()
        self._admitted: collections.deque[float] = collections.deque()
        self._lock = threading.Lock()
        self._pool = _PhotoPool(image_size)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._generations: dict[str, dict[str, Any]] = {}

    # ---- lifecycle -------------------------------------------------------------
    def start(self) -> StubOpenRouter:
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # keep test output clean
                pass

            def do_GET(self) -> None:
                stub._handle(self, "GET")

            def do_POST(self) -> None:
                stub._handle(self, "POST")

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="stub-openrouter", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> StubOpenRouter:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._server is not None, "stub not started"
        return self._server.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/v1"

    # ---- test controls ------------------------------------------------------------
    def inject(self, *faults: str, path: str | None = None) -> None:
        """Queue faults; each applies to one upcoming request (optionally only to ``path``)."""
        for fault in faults:
            if fault not in FAULTS:
                raise ValueError(f"unknown fault {fault!r}; known: {FAULTS}")
            self._faults.append((fault, path))

    def rate_limit_burst(self, seconds: float) -> None:
        """Answer every request with 429 + Retry-After for the next ``seconds``: what many workers see
        together when a provider throttles an account."""
        self._limited_until = time.monotonic() + seconds

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()
            self._faults.clear()
            self._admitted.clear()

    @property
    def paid_requests(self) -> list[RecordedRequest]:
        with self._lock:
            return [r for r in self.requests if r.paid]

    def admitted_times(self) -> list[float]:
        with self._lock:
            return [r.t for r in self.requests if r.status not in (429,) and r.authorization_ok]

    def image_requests(self) -> list[RecordedRequest]:
        """Every image request received (both routes), in arrival order."""
        with self._lock:
            return [
                r
                for r in self.requests
                if r.path.endswith("/images")
                or (r.path.endswith("/chat/completions") and isinstance(r.body, dict) and "modalities" in r.body)
            ]

    @property
    def paid_images(self) -> int:
        with self._lock:
            return sum(r.images for r in self.requests if r.paid)

    def max_requests_in_window(self, window: float = 1.0, *, paths: tuple[str, ...] = IMAGE_CALLS) -> int:
        """Largest number of admitted requests inside any ``window``-second interval."""
        with self._lock:
            times = sorted(r.t for r in self.requests if r.status != 429 and r.path.endswith(paths))
        best, lo = 0, 0
        for hi, t in enumerate(times):
            while t - times[lo] >= window:
                lo += 1
            best = max(best, hi - lo + 1)
        return best

    # ---- request handling ------------------------------------------------------------
    def _take_fault(self, path: str) -> str | None:
        with self._lock:
            for i, (fault, only) in enumerate(self._faults):
                if only is None or path.endswith(only):
                    del self._faults[i]
                    return fault
        return None

    def _rate_limited(self, now: float) -> bool:
        if not self.rps_limit:
            return False
        with self._lock:
            while self._admitted and now - self._admitted[0] >= 1.0:
                self._admitted.popleft()
            if len(self._admitted) >= self.rps_limit:
                return True
            self._admitted.append(now)
            return False

    def _upstream_busy(self) -> bool:
        with self._lock:
            return self._upstream_rng.random() < self.upstream_429

    def _own_limit_headers(self, now: float) -> dict[str, str]:
        """Headers of a 429 for one of our own limits: Retry-After, and OpenRouter's X-RateLimit-* set
        (Reset in epoch milliseconds: when the oldest request of the window leaves it)."""
        hdrs = {"Retry_After": self.retry_after}
        if self.limit_headers:
            with self._lock:
                oldest = self._admitted[0] if self._admitted else now
            frees = max(self._limited_until, oldest + 1.0) - now
            hdrs.update(
                X_RateLimit_Limit=str(int(self.rps_limit or 0)),
                X_RateLimit_Remaining="0",
                X_RateLimit_Reset=str(int((time.time() + max(0.0, frees)) * 1000)),
            )
        return hdrs

    def _handle(self, h: BaseHTTPRequestHandler, method: str) -> None:
        now = time.monotonic()
        path = h.path.split("?", 1)[0]
        length = int(h.headers.get("Content-Length") or 0)
        raw = h.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode(errors="replace")
        auth = h.headers.get("Authorization", "")
        rec = RecordedRequest(
            t=now,
            method=method,
            path=path,
            body=body,
            authorization_ok=auth.removeprefix("Bearer ") in self.valid_keys,
            headers={k: v for k, v in h.headers.items() if k.lower() != "authorization"},
        )
        with self._lock:
            self.requests.append(rec)

        def reply(status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
            rec.status = status
            data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
            h.send_response(status)
            h.send_header("Content-Type", "application/json" if not isinstance(payload, bytes) else "text/html")
            cut = rec.fault == "cut-json" and status == 200
            if cut:  # no length, connection closed after half the body: only the JSON parser can tell
                data = data[: len(data) // 2]
                h.send_header("Connection", "close")
                h.close_connection = True
            else:
                h.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                h.send_header(k, v)
            h.end_headers()
            try:
                if rec.fault == "drip" and status == 200:
                    self._drip(h, data)
                else:
                    h.wfile.write(data)
                h.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):  # the client was killed or gave up mid-request
                rec.status = -status

        def error(status: int, message: str, metadata: dict[str, Any] | None = None, **hdrs: str) -> None:
            err: dict[str, Any] = {"code": status, "message": message}
            if metadata:
                err["metadata"] = metadata
            reply(status, {"error": err}, {k.replace("_", "-"): v for k, v in hdrs.items()})

        public = path == "/api/v1/models" or path.startswith("/api/v1/images/models")
        if not rec.authorization_ok and not public:
            return error(401, "No auth credentials found" if not auth else "User not found.")
        # The free public listings (models, Image API endpoints) are not counted against ``rps_limit``: a
        # provider's limit never sees them, and counting them took a run's first second under the limit.
        if now < self._limited_until or (not public and self._rate_limited(now)):
            return error(429, "Rate limit exceeded", **self._own_limit_headers(now))
        if self.upstream_429 and method == "POST" and path.endswith(IMAGE_CALLS) and self._upstream_busy():
            hint = {"Retry_After": self.upstream_retry_after} if self.upstream_retry_after is not None else {}
            return error(429, "Provider returned error", {"provider_name": "stub-upstream", "raw": "busy"}, **hint)
        if self.latency and (self.latency_paths is None or path.endswith(self.latency_paths)):
            time.sleep(self.latency)
        fault = self._take_fault(path)
        rec.fault = fault
        if fault and self._apply_fault(fault, h, rec, error, reply):
            return

        if method == "GET" and path == "/api/v1/models":
            return reply(200, {"data": self.models})
        if method == "GET" and path.startswith("/api/v1/images/models"):
            return self._image_listing(path, reply, error)
        if method == "POST" and path == "/api/v1/images":
            if self.max_body_bytes is not None and length > self.max_body_bytes:
                return error(413, f"Request payload too large ({length} bytes; limit {self.max_body_bytes})")
            if not isinstance(body, dict):
                return error(400, "the request body must be a JSON object")
            return self._images(body, rec, reply, error)
        if method == "GET" and path == "/api/v1/key":
            return reply(
                200,
                {
                    "data": {
                        "label": "sk-or-...test",
                        "usage": self.usage_total,
                        "limit": self.credits_total,
                        "limit_remaining": self.credits_total - self.usage_total,
                        "is_free_tier": False,
                    }
                },
            )
        if method == "GET" and path == "/api/v1/credits":
            return reply(200, {"data": {"total_credits": self.credits_total, "total_usage": self.usage_total}})
        if method == "GET" and path == "/api/v1/generation":
            gen_id = h.path.partition("id=")[2]
            if gen_id not in self._generations:
                return error(404, f"generation {gen_id} not found")
            return reply(200, {"data": self._generations[gen_id]})
        if method == "POST" and path == "/api/v1/chat/completions" and isinstance(body, dict):
            return self._chat(body, rec, reply, error)
        return error(404 if method == "GET" else 400, f"unknown endpoint {method} {path}")

    def _drip(self, h: BaseHTTPRequestHandler, data: bytes) -> None:
        """Send ``data`` in ~40 pieces spread over ``drip_seconds``; stop early if the client hangs up."""
        pieces = 40
        step = max(1, -(-len(data) // pieces))
        for i in range(0, len(data), step):
            h.wfile.write(data[i : i + step])
            h.wfile.flush()
            time.sleep(self.drip_seconds / pieces)

    def _apply_fault(self, fault: str, h: BaseHTTPRequestHandler, rec: RecordedRequest, error: Any, reply: Any) -> bool:
        if fault in ("html-502", "html-503"):
            status = int(fault[-3:])
            title = {502: "502 Bad Gateway", 503: "503 Service Temporarily Unavailable"}[status]
            page = (
                f"<!DOCTYPE html>\n<html><head><title>{title}</title><style>body{{font:14px sans-serif}}</style>"
                f"</head><body><center><h1>{title}</h1></center><hr><center>cloudflare</center>"
                + "<!-- padding -->" * 40
                + "</body></html>"
            ).encode()
            reply(status, page)
            return True
        if fault.isdigit():
            status = int(fault)
            meta = {"reasons": ["violence"], "flagged_input": "flagged text"} if status == 403 else None
            extra = {"Retry_After": self.retry_after} if status == 429 else {}
            error(status, f"injected {status}", meta, **extra)
            return True
        if fault in ("402-credits", "402-key"):
            source = "openrouter_credits" if fault == "402-credits" else "openrouter_key_limit"
            error(402, "Insufficient credits. Add more using https://openrouter.ai/credits", {"limit_source": source})
            return True
        if fault == "429-no-retry-after":
            error(429, "Rate limit exceeded", {"error_type": "rate_limit_exceeded", "provider_code": "rate_limited"})
            return True
        if fault == "200-error":
            reply(200, {"error": {"code": 502, "message": "provider returned error"}})
            return True
        if fault == "empty-choices":
            if rec.path.endswith("/images"):  # the Image API's empty answer
                reply(200, {"created": int(time.time()), "data": []})
            else:
                reply(200, {"id": "gen-empty", "model": "stub", "choices": []})
            return True
        if fault == "timeout":
            time.sleep(self.timeout_sleep)
            return False
        if fault == "disconnect":
            rec.status = -1
            h.close_connection = True
            h.connection.close()
            return True
        return False  # no-image / bad-image / short / ... are applied inside the image response

    def _chat(self, body: dict[str, Any], rec: RecordedRequest, reply: Any, error: Any) -> None:
        model = body.get("model")
        if not model or not isinstance(body.get("messages"), list) or not body["messages"]:
            return error(400, "model and messages are required")
        if model not in {m["id"] for m in self.models}:
            return error(400, f"{model} is not a valid model ID")
        is_image = "image" in (body.get("modalities") or [])
        if is_image and not self.chat_images:
            return error(
                400,
                f"{model} does not generate images on /chat/completions here: use the Image API (POST /api/v1/images)",
                {"error_type": "invalid_request", "availability": {"code": "wrong_endpoint", "retryable": False}},
            )
        cost = self.image_cost if is_image else self.text_cost
        with self._lock:
            if self.usage_total + cost > self.credits_total:
                broke = True
            else:
                broke = False
                self.usage_total += cost
        if broke:
            return error(402, "Insufficient credits. Add more using https://openrouter.ai/credits")
        gen_id = f"gen-{len(self.requests)}-{hashlib.sha1(json.dumps(body, sort_keys=True).encode()).hexdigest()[:10]}"
        usage = {
            "prompt_tokens": 40,
            "completion_tokens": 60 if not is_image else 1290,
            "total_tokens": 100 if not is_image else 1330,
            "cost": cost,
        }
        if not self.report_cost:
            del usage["cost"]
        message: dict[str, Any] = {"role": "assistant", "content": ""}
        if is_image:
            digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode() + str(self.seed).encode()).digest()
            rng = random.Random(int.from_bytes(digest[:8], "big"))
            kinds, weights = zip(*self.image_mix.items(), strict=True)
            kind = rng.choices(kinds, weights=weights, k=1)[0]
            if self.kind_for is not None:
                kind = self.kind_for(body) or kind
            rec.served_kind = kind
            if rec.fault == "no-image":
                message["content"] = "I can't create that image."
            elif rec.fault == "bad-image":
                message["images"] = [
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgoAAAA"}}
                ]
            elif rec.fault == "truncated-jpeg":
                b64 = base64.b64encode(self._pool.render(kind, rng, fmt="JPEG")).decode()
                cut = (len(b64) * 2 // 3) // 4 * 4  # valid base64 that decodes to the first 2/3 of the JPEG
                message["images"] = [{"type": "image_url", "image_url": {"url": f"data:image/jpeg;base64,{b64[:cut]}"}}]
            elif rec.fault == "html-data-url":
                page = base64.b64encode(b"<!DOCTYPE html><html><head><title>Error</title></head></html>").decode()
                message["images"] = [{"type": "image_url", "image_url": {"url": f"data:image/png;base64,{page}"}}]
            else:
                b64 = base64.b64encode(self._pool.render(kind, rng)).decode()
                message["images"] = [{"type": "image_url", "image_url": {"url": f"data:image/png;base64,{b64}"}}]
                message["content"] = "Here is your image."
        else:
            message["content"] = self._text_reply(body)
        rec.paid = True
        rec.asked = 1 if is_image else 0
        rec.images = len(message.get("images") or [])
        self._generations[gen_id] = {"id": gen_id, "model": model, "total_cost": cost, **usage}
        reply(
            200,
            {
                "id": gen_id,
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model,
                "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                "usage": usage,
            },
        )

    # ---- the Image API ------------------------------------------------------------------------
    def _image_listing(self, path: str, reply: Any, error: Any) -> None:
        if not self.image_models:
            return error(404, "Not Found")
        if path == "/api/v1/images/models":
            data = []
            for model_id, (name, endpoints) in self.image_models.items():
                union: dict[str, Any] = {}
                for e in endpoints:
                    union.update(e["supported_parameters"])
                data.append(
                    {
                        "id": model_id,
                        "name": name,
                        "description": f"{name} (stub)",
                        "created": 1750000000,
                        "architecture": {"input_modalities": ["text", "image"], "output_modalities": ["image"]},
                        "supported_parameters": union,
                        "supports_streaming": False,
                        "endpoints": f"/api/v1/images/models/{model_id}/endpoints",
                    }
                )
            return reply(200, {"data": data})
        model_id = path.removeprefix("/api/v1/images/models/").removesuffix("/endpoints")
        if not path.endswith("/endpoints") or model_id not in self.image_models:
            return error(404, f"image model {model_id} not found")
        return reply(200, {"id": model_id, "endpoints": self.image_models[model_id][1]})

    @staticmethod
    def _served_by(endpoints: list[dict[str, Any]], provider: dict[str, Any]) -> dict[str, Any] | None:
        """The endpoint provider routing picks: ``only`` / ``ignore`` filter, ``order`` first, else the first."""
        found = endpoints
        if provider.get("only"):
            found = [e for e in found if e["provider_slug"] in provider["only"]]
        if provider.get("ignore"):
            found = [e for e in found if e["provider_slug"] not in provider["ignore"]]
        for slug in provider.get("order") or []:
            for e in found:
                if e["provider_slug"] == slug:
                    return e
        return found[0] if found else None

    @staticmethod
    def _accepts(cap: dict[str, Any], value: Any) -> bool:
        if cap.get("type") == "enum":
            return str(value) in [str(v) for v in cap.get("values") or []]
        if cap.get("type") == "range":
            return isinstance(value, int) and not isinstance(value, bool) and cap["min"] <= value <= cap["max"]
        return True

    @staticmethod
    def _dimensions(body: dict[str, Any]) -> tuple[int, int]:
        """The pixels an answer is billed for: explicit ``size``, else the tier's side on the aspect ratio."""
        size = str(body.get("size") or "")
        if "x" in size:
            w, h = size.lower().split("x")
            return int(w), int(h)
        side = _TIER_SIDE.get(str(body.get("resolution") or size or "1K"), 1024)
        a, b = (int(x) for x in str(body.get("aspect_ratio") or "1:1").split(":"))
        return (side, side * b // a) if a >= b else (side * a // b, side)

    @staticmethod
    def _price(lines: list[dict[str, Any]], billable: str, tier: str) -> dict[str, Any] | None:
        found = [p for p in lines if p["billable"] == billable]
        exact = [p for p in found if (p.get("variant") or "").lower() == tier.lower()]
        plain = [p for p in found if not p.get("variant")]
        return (exact or plain or [None])[0]

    def _images(self, body: dict[str, Any], rec: RecordedRequest, reply: Any, error: Any) -> None:
        """``POST /images`` as the docs describe it, every parameter checked against the serving endpoint."""
        model, prompt = body.get("model"), body.get("prompt")
        if not model or not isinstance(prompt, str) or not prompt:
            return error(400, "model and prompt are required")
        if model not in self.image_models:
            return error(400, f"{model} is not a valid image model ID")
        if "x" in str(body.get("size") or "") and ("resolution" in body or "aspect_ratio" in body):
            return error(400, "an explicit pixel size cannot be combined with resolution or aspect_ratio")
        provider = body.get("provider") or {}
        endpoint = self._served_by(self.image_models[model][1], provider)
        if endpoint is None:
            return error(404, f"no endpoint of {model} matches your provider routing")
        params = endpoint["supported_parameters"]
        n = body.get("n", 1)
        if not isinstance(n, int) or not 1 <= n <= 10:
            return error(400, "n must be an integer from 1 to 10")
        if n > 1 and "n" not in params:
            return error(
                400, f"{endpoint['provider_name']} generates a single image per request: n > 1 is not supported"
            )
        known = {"model", "prompt", "provider", "stream", "input_references"}
        for key, value in body.items():
            if key in known or (key == "n" and n == 1):
                continue
            cap = params.get(key)
            if cap is None:
                return error(400, f"{endpoint['provider_name']} does not support the parameter {key!r} for {model}")
            if not self._accepts(cap, value):
                return error(400, f"{key}={value!r} is not accepted by {endpoint['provider_name']} for {model}")
        refs = body.get("input_references") or []
        if refs:
            cap = params.get("input_references")
            if cap is None:
                return error(400, f"{endpoint['provider_name']} takes no input_references for {model}")
            if cap.get("type") == "range" and len(refs) > cap["max"]:
                return error(400, f"at most {cap['max']} input_references are accepted by {endpoint['provider_name']}")
        count = n
        if self.answer_cap is not None:
            count = min(count, self.answer_cap)
        if rec.fault == "short":
            count = -(-n // 2) if n > 1 else n
        if rec.fault == "no-image":
            count = 0
        w, h = self._dimensions(body)
        tier = str(body.get("resolution") or next((t for t, s in _TIER_SIDE.items() if s >= max(w, h)), "4K"))
        cost = 0.0
        out = self._price(endpoint["pricing"], "output_image", tier)
        if out is not None:
            cost += out["cost_usd"] * count * (w * h / 1e6 if out["unit"] == "megapixel" else 1)
        ref_line = self._price(endpoint["pricing"], "input_reference", tier)
        if ref_line is not None and refs and count:
            sizes = [self._reference_pixels(r) for r in refs]
            cost += ref_line["cost_usd"] * (sum(sizes) / 1e6 if ref_line["unit"] == "megapixel" else len(refs))
        with self._lock:
            if self.key_limit is not None and self.usage_total + cost > self.key_limit + 1e-12:
                broke = "openrouter_key_limit"
            elif self.usage_total + cost > self.credits_total + 1e-12:
                broke = "openrouter_credits"
            else:
                broke = ""
                self.usage_total += cost
        if broke:
            return error(
                402, "Insufficient credits. Add more using https://openrouter.ai/credits", {"limit_source": broke}
            )
        fmt = {"jpeg": "JPEG", "webp": "WEBP"}.get(str(body.get("output_format") or "png"), "PNG")
        data = [self._image_item(body, rec, i, fmt) for i in range(count)]
        rec.paid, rec.asked, rec.images = True, n, count
        gen_id = f"gen-img-{len(self.requests)}"
        usage = {"prompt_tokens": 0, "completion_tokens": 1290 * count, "total_tokens": 1290 * count, "cost": cost}
        if not self.report_cost:
            del usage["cost"]
        self._generations[gen_id] = {"id": gen_id, "model": model, "total_cost": cost, **usage}
        reply(200, {"created": int(time.time()), "data": data, "usage": usage})

    @staticmethod
    def _reference_pixels(ref: Any) -> int:
        url = ((ref or {}).get("image_url") or {}).get("url", "") if isinstance(ref, dict) else ""
        try:
            with Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))) as im:
                return im.width * im.height
        except Exception:  # an unreadable reference is billed as nothing
            return 0

    def _image_item(self, body: dict[str, Any], rec: RecordedRequest, index: int, fmt: str) -> dict[str, Any]:
        """One ``data[]`` entry: deterministic for a given seed (same question, same images), else fresh.

        Fresh means the next image for that prompt, counted per prompt: a global count handed out in arrival
        order gave concurrent senders other images on every run (and QC other duplicates: a flaky test)."""
        if body.get("seed") is not None:
            basis = {
                k: body.get(k) for k in ("model", "prompt", "seed", "size", "resolution", "aspect_ratio", "quality")
            }
            basis["index"] = index
        else:
            prompt = json.dumps(body.get("prompt"), sort_keys=True)
            with self._lock:
                self._unseeded[prompt] += 1
                basis = {"body": body.get("prompt"), "n": self._unseeded[prompt], "index": index}
        digest = hashlib.sha256(json.dumps(basis, sort_keys=True).encode() + str(self.seed).encode()).digest()
        rng = random.Random(int.from_bytes(digest[:8], "big"))
        kinds, weights = zip(*self.image_mix.items(), strict=True)
        kind = rng.choices(kinds, weights=weights, k=1)[0]
        if self.kind_for is not None:
            kind = self.kind_for(body) or kind
        rec.served_kind = kind
        if rec.fault == "bad-image":
            return {"b64_json": "iVBORw0KGgoAAAA", "media_type": "image/png"}
        if rec.fault == "truncated-jpeg":
            b64 = base64.b64encode(self._pool.render(kind, rng, fmt="JPEG")).decode()
            return {"b64_json": b64[: (len(b64) * 2 // 3) // 4 * 4], "media_type": "image/jpeg"}
        if rec.fault == "html-data-url":
            page = b"<!DOCTYPE html><html><head><title>Error</title></head></html>"
            return {"b64_json": base64.b64encode(page).decode(), "media_type": "image/png"}
        payload = self._pool.render(kind, rng, fmt=fmt)
        return {"b64_json": base64.b64encode(payload).decode(), "media_type": _MIME[fmt]}

    def _text_reply(self, body: dict[str, Any]) -> str:
        if self.chat_reply is not None:
            return self.chat_reply(body)
        fmt = body.get("response_format") or {}
        if fmt.get("type") == "json_schema":
            schema = fmt["json_schema"]["schema"]
            return json.dumps(_schema_instance(schema, schema.get("$defs", {})))
        last = body["messages"][-1].get("content")
        text = last if isinstance(last, str) else " ".join(p.get("text", "") for p in last if isinstance(p, dict))
        return f"stub reply to: {text[:80]}"
