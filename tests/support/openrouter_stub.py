"""A stub OpenRouter server for tests and benchmarks.

A real HTTP server on 127.0.0.1 (random port) speaking OpenRouter's wire
format: ``POST /chat/completions`` (text, ``json_schema`` structured output,
``modalities: ["image","text"]`` image generation), ``GET /models``, ``/key``,
``/credits``, ``/generation``. It adds what the real service does to a client
under load: latency, a requests-per-second limit answered with 429 +
Retry-After, injected faults of every class, and a credit balance that ends in
402. Generated "images" are real photos (the persona, other people, blurred
persona) so downstream identity QC can be tested end to end. Every request is
recorded, so tests can count paid calls and requests per second.

It lives with the tests and is never the product's default endpoint.
"""

from __future__ import annotations

import base64
import collections
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
)

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
    authorization_ok: bool = False
    headers: dict[str, str] = field(default_factory=dict)


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
        # An upstream provider that is busy, whatever our rate: this share of chat requests is answered
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

    def max_requests_in_window(self, window: float = 1.0, *, paths: tuple[str, ...] = ("/chat/completions",)) -> int:
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

        if not rec.authorization_ok and path != "/api/v1/models":
            return error(401, "No auth credentials found" if not auth else "User not found.")
        if now < self._limited_until or self._rate_limited(now):
            return error(429, "Rate limit exceeded", **self._own_limit_headers(now))
        if self.upstream_429 and path.endswith("/chat/completions") and self._upstream_busy():
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
        if fault == "200-error":
            reply(200, {"error": {"code": 502, "message": "provider returned error"}})
            return True
        if fault == "empty-choices":
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
        return False  # no-image / bad-image are applied inside the image response

    def _chat(self, body: dict[str, Any], rec: RecordedRequest, reply: Any, error: Any) -> None:
        model = body.get("model")
        if not model or not isinstance(body.get("messages"), list) or not body["messages"]:
            return error(400, "model and messages are required")
        if model not in {m["id"] for m in self.models}:
            return error(400, f"{model} is not a valid model ID")
        is_image = "image" in (body.get("modalities") or [])
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
