"""A stub of OpenRouter's Video API for tests: a real HTTP server on 127.0.0.1 with real MP4s.

It speaks the wire format of OpenRouter's docs (guides/overview/multimodal/video-generation.mdx,
openapi.yaml ``/videos``): ``GET /videos/models`` (no key needed) with ``pricing_skus``, supported
resolutions, aspect ratios, durations and frame types; ``POST /videos`` -> 202 ``{id, polling_url,
status: pending}`` after checking the body against the model (400 otherwise); ``GET /videos/{id}``
moving ``pending`` -> ``in_progress`` -> ``completed`` over time (or ``failed``, ``cancelled``,
``expired`` on demand) with ``usage.cost`` and ``unsigned_urls`` once completed; ``GET
/videos/{id}/content?index=0`` -> an H.264 MP4 (with an AAC track when audio was asked for).

The clips are made of real photos, so identity checks on their frames are real: the request's
``frame_images`` or ``input_references`` (the persona, as the product sends them), with a slow zoom so
frames differ; or, on demand (``subject``), another person's photo, or the persona first and another
person after half the clip. A text-only request gives frames without a face.

Terminal jobs are announced by webhooks (as OpenRouter's workspace default callback, ``webhook_url``, or
the request's ``callback_url``), signed with ``webhook_secret`` and delivered ``webhook_repeats`` times
with the same ``X-OpenRouter-Idempotency-Key``. Faults for every step can be injected; every request is
recorded, so tests count paid submits and polls per job.

Standalone (``with StubVideoAPI() as stub``) or mounted on the chat/image stub
(``StubOpenRouterWithVideo``), so one base URL serves a whole hybrid run.
"""

from __future__ import annotations

import base64
import collections
import io
import json
import math
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import av
import httpx
import numpy as np
from PIL import Image, ImageOps

from ai_influencer.video.webhooks import IDEMPOTENCY_HEADER, SIGNATURE_HEADER, signature
from tests.support.assets import faces_dir
from tests.support.openrouter_stub import StubOpenRouter

VIDEO_FAULTS = (
    "401",
    "submit-429",  # answered 429 + Retry-After: nothing created
    "submit-500",  # answered 500: nothing created
    "submit-502",
    "submit-402",  # no credits left: nothing created
    "submit-lost",  # the job IS created and billed, then the connection closes without an answer
    "submit-cut",  # the job IS created; the 202 body stops half-way
    "poll-500",
    "poll-429",
    "content-truncated",  # Content-Length announces the whole clip, the connection closes after half
    "content-corrupt",  # a 200 video/mp4 of the right length that is not a video
    "content-html",  # a 200 text/html error page
    "content-drip",  # the clip trickles in over ``drip_seconds``
)
SUBJECTS = ("inputs", "persona", "other", "mixed", "none")

DEFAULT_VIDEO_MODELS: list[dict[str, Any]] = [
    {
        "id": "google/veo-3.1-fast",
        "canonical_slug": "google/veo-3.1-fast",
        "name": "Google: Veo 3.1 Fast",
        "created": 1760000000,
        "description": "image-to-video with audio",
        "supported_resolutions": ["720p", "1080p"],
        "supported_aspect_ratios": ["16:9", "9:16"],
        "supported_sizes": None,
        "supported_durations": [4, 6, 8],
        "supported_frame_images": ["first_frame", "last_frame"],
        "generate_audio": True,
        "seed": True,
        "pricing_skus": {"per-video-second": "0.10", "per-video-second-1080p": "0.15"},
        "allowed_passthrough_parameters": ["output_config"],
    },
    {
        "id": "bytedance/seedance-2.0-fast",
        "canonical_slug": "bytedance/seedance-2.0-fast",
        "name": "ByteDance: Seedance 2.0 Fast",
        "created": 1760000000,
        "description": "silent, first frame only",
        "supported_resolutions": ["480p", "720p", "1080p"],
        "supported_aspect_ratios": ["16:9", "9:16", "1:1"],
        "supported_sizes": ["480x854", "720x1280", "1080x1920"],
        "supported_durations": [5, 10],
        "supported_frame_images": ["first_frame"],
        "generate_audio": False,
        "seed": True,
        "pricing_skus": {
            "per-video-second-480p": "0.02",
            "per-video-second-720p": "0.05",
            "per-video-second-1080p": "0.08",
        },
        "allowed_passthrough_parameters": [],
    },
    {
        "id": "minimax/hailuo-2.3",
        "canonical_slug": "minimax/hailuo-2.3",
        "name": "MiniMax: Hailuo 2.3",
        "created": 1760000000,
        "description": "text-to-video, landscape only, flat price",
        "supported_resolutions": ["768p", "1080p"],
        "supported_aspect_ratios": ["16:9"],
        "supported_sizes": None,
        "supported_durations": [6, 10],
        "supported_frame_images": None,
        "generate_audio": None,
        "seed": None,
        "pricing_skus": {"generate": "0.28"},
        "allowed_passthrough_parameters": [],
    },
    {
        "id": "acme/token-video",
        "canonical_slug": "acme/token-video",
        "name": "Acme: priced per token",
        "created": 1760000000,
        "description": "a price this client cannot read",
        "supported_resolutions": ["720p"],
        "supported_aspect_ratios": ["9:16"],
        "supported_sizes": None,
        "supported_durations": [5],
        "supported_frame_images": ["first_frame"],
        "generate_audio": False,
        "seed": None,
        "pricing_skus": {"video-tokens": "0.0000012"},
        "allowed_passthrough_parameters": [],
    },
]


@dataclass
class VideoRequestRecord:
    t: float
    method: str
    path: str
    status: int = 0
    body: Any = None
    fault: str | None = None
    job_id: str | None = None
    authorization_ok: bool = False


@dataclass
class Delivery:
    job_id: str
    status: str
    idempotency_key: str
    http_status: int | None
    error: str | None = None


@dataclass
class StubJob:
    id: str
    model: dict[str, Any]
    body: dict[str, Any]
    created: float
    outcome: str  # completed | failed | cancelled | expired
    pending_s: float
    running_s: float
    subject: str
    cost: float | None
    error: str | None = None
    content: bytes | None = None
    announced: bool = False
    generation_id: str = field(default_factory=lambda: f"gen-{secrets.token_hex(8)}")

    def status(self, now: float) -> str:
        elapsed = now - self.created
        if elapsed < self.pending_s:
            return "pending"
        if elapsed < self.pending_s + self.running_s:
            return "in_progress"
        return self.outcome


# Face boxes (left, top, right, bottom) found by dlib's HOG detector on the shipped photos.
PERSONA_PHOTOS: dict[str, tuple[int, int, int, int]] = {
    "obama.jpg": (349, 142, 617, 409),
    "obama2.jpg": (171, 290, 438, 558),
    "obama3.jpg": (633, 277, 954, 598),
}
OTHER_PHOTOS: dict[str, tuple[int, int, int, int]] = {"biden.jpg": (419, 241, 740, 562)}
_DATA_URL = re.compile(r"^data:[\w.+-]+/[\w.+-]+;base64,(?P<data>.*)$", re.S)


def face_crop(name: str, box: tuple[int, int, int, int]) -> Image.Image:
    """A portrait crop around a known face, as a generator would frame a persona (face ~40 % of the width)."""
    image = Image.open(faces_dir() / name).convert("RGB")
    left, top, right, bottom = box
    side = int((right - left) * 2.4)
    cx, cy = (left + right) / 2, (top + bottom) / 2 + (bottom - top) * 0.35
    x0 = int(max(0, min(image.width - side, cx - side / 2)))
    y0 = int(max(0, min(image.height - side, cy - side / 2)))
    return image.crop((x0, y0, x0 + side, y0 + side))


def cover(image: Image.Image, size: tuple[int, int], zoom: float, pan: float) -> Image.Image:
    """``image`` filling ``size`` (centre crop), zoomed in by ``zoom`` and panned by ``pan`` of the slack."""
    w, h = size
    scale = max(w / image.width, h / image.height) * zoom
    resized = image.resize((max(w, round(image.width * scale)), max(h, round(image.height * scale))))
    slack_x, slack_y = resized.width - w, resized.height - h
    x0 = int(slack_x / 2 + pan * slack_x / 2)
    return resized.crop((x0, slack_y // 2, x0 + w, slack_y // 2 + h))


def encode_mp4(frames: list[Image.Image], fps: int, *, audio_seconds: float | None = None) -> bytes:
    """H.264 (libx264, yuv420p) MP4 of ``frames``; with ``audio_seconds``, an AAC tone track too."""
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = frames[0].size
        stream.pix_fmt = "yuv420p"
        stream.options = {"preset": "ultrafast", "crf": "20"}
        astream = None
        if audio_seconds:
            astream = container.add_stream("aac", rate=16000)
            astream.layout = "mono"
        for image in frames:
            frame = av.VideoFrame.from_ndarray(np.asarray(image.convert("RGB")), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
        if astream is not None and audio_seconds:
            t = np.arange(int(audio_seconds * 16000)) / 16000
            samples = (0.1 * np.sin(2 * math.pi * 220 * t)).astype(np.float32).reshape(1, -1)
            aframe = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
            aframe.sample_rate = 16000
            for packet in astream.encode(aframe):
                container.mux(packet)
            for packet in astream.encode():
                container.mux(packet)
    return buf.getvalue()


class StubVideoAPI:
    """Start with ``with StubVideoAPI() as stub:``; point an ``OpenRouterClient`` at ``stub.base_url``."""

    ASPECTS: ClassVar[dict[str, tuple[int, int]]] = {
        "9:16": (9, 16),
        "16:9": (16, 9),
        "1:1": (1, 1),
        "4:3": (4, 3),
        "3:4": (3, 4),
        "3:2": (3, 2),
        "2:3": (2, 3),
        "21:9": (21, 9),
        "9:21": (9, 21),
    }

    def __init__(
        self,
        *,
        valid_keys: Iterable[str] = ("sk-or-test-key",),
        models: list[dict[str, Any]] | None = None,
        pending_s: float = 0.2,
        running_s: float = 0.3,
        frame_height: int = 480,
        fps: int = 6,
        max_clip_seconds: float | None = 3.0,
        webhook_url: str | None = None,
        webhook_secret: str | None = None,
        webhook_repeats: int = 1,
        retry_after: str = "0",
        drip_seconds: float = 5.0,
        report_cost: bool = True,
    ) -> None:
        self.valid_keys = set(valid_keys)
        self.models = models if models is not None else DEFAULT_VIDEO_MODELS
        self.pending_s, self.running_s = pending_s, running_s
        self.frame_height, self.fps = frame_height, fps
        self.max_clip_seconds = max_clip_seconds  # clips are rendered at most this long (keeps tests fast)
        self.webhook_url = webhook_url  # the workspace's default callback URL
        self.webhook_secret = webhook_secret
        self.webhook_repeats = webhook_repeats
        self.webhook_time_offset = 0.0  # seconds added to the signature timestamp (stale deliveries)
        self.retry_after = retry_after
        self.drip_seconds = drip_seconds
        self.report_cost = report_cost
        self.subject = "inputs"  # what the clips show, see SUBJECTS
        self.subject_for: Callable[[dict[str, Any]], str | None] | None = None  # per request, wins over subject
        self.requests: list[VideoRequestRecord] = []
        self.jobs: dict[str, StubJob] = {}
        self.deliveries: list[Delivery] = []
        self._outcomes: collections.deque[tuple[str, str | None]] = collections.deque()
        self._faults: collections.deque[tuple[str, str | None]] = collections.deque()
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._ticker: threading.Thread | None = None
        self._running = threading.Event()
        self._http = httpx.Client(timeout=5.0)
        self._base_url: str | None = None

    # ---- lifecycle -------------------------------------------------------------------------------------
    def start(self) -> StubVideoAPI:
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                stub.serve(self, "GET")

            def do_POST(self) -> None:
                stub.serve(self, "POST")

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="stub-video", daemon=True
        ).start()
        self._base_url = f"http://127.0.0.1:{self._server.server_address[1]}/api/v1"
        return self.start_ticker()

    def start_ticker(self, base_url: str | None = None) -> StubVideoAPI:
        """The background clock that finishes jobs and sends their webhooks (also when mounted)."""
        if base_url is not None:
            self._base_url = base_url
        self._running.set()
        self._ticker = threading.Thread(target=self._tick_forever, name="stub-video-ticker", daemon=True)
        self._ticker.start()
        return self

    def stop(self) -> None:
        self._running.clear()
        if self._ticker is not None:
            self._ticker.join(timeout=5)
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        self._http.close()

    def __enter__(self) -> StubVideoAPI:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        assert self._base_url is not None, "stub not started"
        return self._base_url

    # ---- test controls -----------------------------------------------------------------------------------
    def inject(self, *faults: str, path: str | None = None) -> None:
        """Queue faults; each applies to one upcoming request (optionally only to paths containing ``path``)."""
        for fault in faults:
            if fault not in VIDEO_FAULTS:
                raise ValueError(f"unknown fault {fault!r}; known: {VIDEO_FAULTS}")
            self._faults.append((fault, path))

    def end_next(self, outcome: str, error: str | None = None) -> None:
        """The next submitted job ends ``failed``, ``cancelled`` or ``expired`` (default: completed)."""
        if outcome not in ("completed", "failed", "cancelled", "expired"):
            raise ValueError(f"unknown outcome {outcome!r}")
        self._outcomes.append((outcome, error))

    @property
    def submits(self) -> list[VideoRequestRecord]:
        """``POST /videos`` that created a job (each one is paid)."""
        with self._lock:
            return [r for r in self.requests if r.method == "POST" and r.job_id is not None]

    def polls(self, job_id: str | None = None) -> list[VideoRequestRecord]:
        with self._lock:
            return [
                r
                for r in self.requests
                if r.method == "GET" and r.job_id is not None and "/content" not in r.path
                and (job_id is None or r.job_id == job_id)
            ]  # fmt: skip

    def downloads(self, job_id: str | None = None) -> list[VideoRequestRecord]:
        with self._lock:
            return [r for r in self.requests if "/content" in r.path and (job_id is None or r.job_id == job_id)]

    # ---- serving -------------------------------------------------------------------------------------
    def serve(self, h: BaseHTTPRequestHandler, method: str) -> None:
        now = time.monotonic()
        path, _, query = h.path.partition("?")
        length = int(h.headers.get("Content-Length") or 0)
        raw = h.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        auth = h.headers.get("Authorization", "").removeprefix("Bearer ")
        rec = VideoRequestRecord(now, method, h.path, body=body, authorization_ok=auth in self.valid_keys)
        with self._lock:
            self.requests.append(rec)

        def reply(status: int, payload: Any, *, ctype: str = "application/json", headers: dict[str, str] | None = None):
            rec.status = status
            data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
            h.send_response(status)
            h.send_header("Content-Type", ctype)
            h.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                h.send_header(k, v)
            h.end_headers()
            try:
                h.wfile.write(data)
                h.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                rec.status = -status

        def error(status: int, message: str, **headers: str) -> None:
            reply(status, {"error": {"code": status, "message": message}}, headers=headers)

        route = path.removeprefix("/api/v1")
        if method == "GET" and route == "/videos/models":
            return reply(200, {"data": self.models})
        m = re.match(r"^/videos/([^/]+)(/content)?$", route) if method == "GET" else None
        kind = (
            "submit"
            if method == "POST" and route == "/videos"
            else ("content" if m and m[2] else "poll" if m else None)
        )
        fault = self._take_fault(kind, h.path)
        rec.fault = fault
        if not rec.authorization_ok or fault == "401":
            return error(401, "No auth credentials found" if not auth else "User not found.")
        if kind == "submit":
            return self._submit(h, rec, body, fault, reply, error)
        if m:
            rec.job_id = m[1]
            job = self.jobs.get(m[1])
            if job is None:
                return error(404, f"video job {m[1]} not found")
            if m[2]:
                return self._content(h, rec, job, query, fault, reply, error)
            if fault in ("poll-500", "poll-429"):
                return error(int(fault[-3:]), f"injected {fault}", Retry_After=self.retry_after)
            return reply(200, self._job_json(job, now))
        return error(404 if method == "GET" else 400, f"unknown endpoint {method} {path}")

    def _take_fault(self, kind: str | None, path: str) -> str | None:
        """The first queued fault for this kind of request (``submit``, ``poll``, ``content``; ``401``: any)."""
        with self._lock:
            for i, (fault, only) in enumerate(self._faults):
                if (fault == "401" or fault.split("-")[0] == kind) and (only is None or only in path):
                    del self._faults[i]
                    return fault
        return None

    def _model(self, model_id: Any) -> dict[str, Any] | None:
        return next((m for m in self.models if m["id"] == model_id), None)

    @staticmethod
    def _invalid(model: dict[str, Any], body: dict[str, Any]) -> str | None:
        """What OpenRouter would answer 400 for (a subset of its checks, enough for the client's own)."""
        checks = (
            ("resolution", "supported_resolutions"),
            ("aspect_ratio", "supported_aspect_ratios"),
            ("size", "supported_sizes"),
            ("duration", "supported_durations"),
        )
        for param, listing in checks:
            if param in body and model.get(listing) and body[param] not in model[listing]:
                return f"{param} {body[param]!r} is not supported by {model['id']}"
        for frame in body.get("frame_images") or []:
            if frame.get("frame_type") not in (model.get("supported_frame_images") or []):
                return f"frame_images {frame.get('frame_type')!r} is not supported by {model['id']}"
        if not body.get("prompt") and not body.get("frame_images"):
            return "prompt is required"
        return None

    def _price(self, model: dict[str, Any], body: dict[str, Any]) -> float | None:
        skus = model.get("pricing_skus") or {}
        seconds = body.get("duration") or min(model.get("supported_durations") or [5])
        resolution = body.get("resolution") or (model.get("supported_resolutions") or ["720p"])[0]
        for key in (f"per-video-second-{resolution}", "per-video-second"):
            if key in skus:
                return round(float(skus[key]) * seconds, 6)
        return float(skus["generate"]) if "generate" in skus else 0.5

    def _submit(self, h: BaseHTTPRequestHandler, rec: VideoRequestRecord, body: Any, fault: str | None, reply, error):
        if fault in ("submit-429", "submit-500", "submit-502", "submit-402"):
            return error(int(fault[-3:]), f"injected {fault}", Retry_After=self.retry_after)
        if not isinstance(body, dict) or not body.get("model"):
            return error(400, "model is required")
        model = self._model(body["model"])
        if model is None:
            return error(400, f"{body['model']} is not a valid model ID")
        if problem := self._invalid(model, body):
            return error(400, problem)
        outcome, why = self._outcomes.popleft() if self._outcomes else ("completed", None)
        default_why = {
            "failed": "Content policy violation",
            "cancelled": "Job was cancelled",
            "expired": "Job exceeded maximum time to live",
        }
        subject = (self.subject_for(body) if self.subject_for else None) or self.subject
        job = StubJob(
            id=f"vid-{secrets.token_hex(6)}",
            model=model,
            body=body,
            created=time.monotonic(),
            outcome=outcome,
            pending_s=self.pending_s,
            running_s=self.running_s,
            subject=subject,
            cost=self._price(model, body) if outcome == "completed" else None,
            error=why or default_why.get(outcome),
        )
        with self._lock:
            self.jobs[job.id] = job
        rec.job_id = job.id
        answer = {"id": job.id, "polling_url": f"{self.base_url}/videos/{job.id}", "status": "pending"}
        if fault == "submit-lost":
            rec.status = -202
            h.close_connection = True
            h.connection.close()
            return None
        if fault == "submit-cut":
            data = json.dumps(answer).encode()
            rec.status = 202
            h.send_response(202)
            h.send_header("Content-Type", "application/json")
            h.send_header("Connection", "close")
            h.end_headers()
            h.wfile.write(data[: len(data) // 2])
            h.wfile.flush()
            h.close_connection = True
            return None
        return reply(202, answer)

    def _job_json(self, job: StubJob, now: float) -> dict[str, Any]:
        status = job.status(now)
        out: dict[str, Any] = {"id": job.id, "polling_url": f"{self.base_url}/videos/{job.id}", "status": status}
        if status != "pending":
            out["generation_id"] = job.generation_id
        if status == "completed":
            out["unsigned_urls"] = [f"{self.base_url}/videos/{job.id}/content?index=0"]
            out["usage"] = {"cost": job.cost if self.report_cost else None, "is_byok": False}
        elif status in ("failed", "cancelled", "expired"):
            out["error"] = job.error
        return out

    def _content(self, h, rec, job: StubJob, query: str, fault: str | None, reply, error) -> None:
        if job.status(time.monotonic()) != "completed":
            return error(404, f"video job {job.id} has no content (status {job.status(time.monotonic())})")
        if query and query not in ("index=0",):
            return error(400, f"index out of range ({query})")
        data = self.render(job)
        if fault == "content-html":
            return reply(200, b"<!DOCTYPE html><html><title>Error</title></html>", ctype="text/html")
        if fault == "content-corrupt":
            return reply(200, secrets.token_bytes(len(data)), ctype="video/mp4")
        rec.status = 200
        h.send_response(200)
        h.send_header("Content-Type", "video/mp4")
        h.send_header("Content-Length", str(len(data)))
        if fault == "content-truncated":
            h.send_header("Connection", "close")
        h.end_headers()
        try:
            if fault == "content-truncated":
                h.wfile.write(data[: len(data) // 2])
                h.wfile.flush()
                h.close_connection = True
                h.connection.close()
            elif fault == "content-drip":
                pieces = 40
                step = max(1, -(-len(data) // pieces))
                for i in range(0, len(data), step):
                    h.wfile.write(data[i : i + step])
                    h.wfile.flush()
                    time.sleep(self.drip_seconds / pieces)
            else:
                h.wfile.write(data)
                h.wfile.flush()
        except (BrokenPipeError, ConnectionResetError, OSError):
            rec.status = -200

    # ---- the clips -------------------------------------------------------------------------------------
    def _frame_size(self, job: StubJob) -> tuple[int, int]:
        if job.body.get("size"):
            w, h = (int(v) for v in job.body["size"].split("x"))
            ratio = (w, h)
        else:
            ratio = self.ASPECTS.get(job.body.get("aspect_ratio") or "16:9", (16, 9))
        height = self.frame_height
        width = round(height * ratio[0] / ratio[1] / 2) * 2
        return width, height

    @staticmethod
    def _input_images(body: dict[str, Any]) -> list[Image.Image]:
        items = [f for f in body.get("frame_images") or [] if f.get("frame_type") == "first_frame"]
        items = items or list(body.get("input_references") or [])
        out = []
        for item in items:
            m = _DATA_URL.match(((item.get("image_url") or {}).get("url")) or "")
            if m:
                out.append(ImageOps.exif_transpose(Image.open(io.BytesIO(base64.b64decode(m["data"])))).convert("RGB"))
        return out

    def render(self, job: StubJob) -> bytes:
        """The job's MP4 (made once): frames from its inputs or the chosen subject, a slow zoom across them."""
        with self._lock:
            if job.content is not None:
                return job.content
        seconds = float(job.body.get("duration") or min(job.model.get("supported_durations") or [5]))
        if self.max_clip_seconds is not None:
            seconds = min(seconds, self.max_clip_seconds)
        count = max(2, round(seconds * self.fps))
        persona = self._input_images(job.body) if job.subject in ("inputs", "mixed") else []
        if job.subject == "persona" or (job.subject == "mixed" and not persona):
            persona = [face_crop(n, b) for n, b in PERSONA_PHOTOS.items()]
        other = [face_crop(n, b) for n, b in OTHER_PHOTOS.items()]
        size = self._frame_size(job)
        frames = []
        for i in range(count):
            progress = i / max(1, count - 1)
            if job.subject == "other":
                source = other[0]
            elif job.subject == "mixed":
                source = persona[0] if progress < 0.5 else other[0]
            elif persona:
                source = persona[min(len(persona) - 1, int(progress * len(persona)))]
            else:
                source = None
            if source is None:  # text-to-video: a moving gradient, no face
                x = np.linspace(0, 1, size[0])[None, :, None]
                y = np.linspace(0, 1, size[1])[:, None, None]
                rgb = (np.concatenate([x + 0 * y, y + 0 * x, (x + y + progress) % 1], axis=2) * 255).astype(np.uint8)
                frames.append(Image.fromarray(rgb))
            else:
                frames.append(cover(source, size, 1.0 + 0.08 * progress, 0.2 * math.sin(progress * math.pi)))
        audio = job.body.get("generate_audio", job.model.get("generate_audio") is True)
        data = encode_mp4(frames, self.fps, audio_seconds=seconds if audio else None)
        with self._lock:
            job.content = data
        return data

    # ---- time and webhooks --------------------------------------------------------------------------------
    def _tick_forever(self) -> None:
        while self._running.is_set():
            now = time.monotonic()
            for job in list(self.jobs.values()):
                status = job.status(now)
                if status in ("completed", "failed", "cancelled", "expired") and not job.announced:
                    job.announced = True
                    if status == "completed":
                        self.render(job)
                    self._announce(job, status)
            time.sleep(0.02)

    def event_body(self, job: StubJob, status: str) -> bytes:
        data: dict[str, Any] = {
            "id": job.id,
            "status": status,
            "generation_id": job.generation_id,
            "model": job.model["id"],
        }
        if status == "completed":
            data["unsigned_urls"] = [f"{self.base_url}/videos/{job.id}/content?index=0"]
            data["usage"] = {"cost": job.cost, "is_byok": False}
        else:
            data["error"] = job.error
        envelope = {
            "type": f"video.generation.{status}",
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()),
            "data": data,
        }
        return json.dumps(envelope, separators=(",", ":")).encode()

    def _announce(self, job: StubJob, status: str) -> None:
        url = job.body.get("callback_url") or self.webhook_url
        if not url:
            return
        raw = self.event_body(job, status)
        key = f"{job.id}-{status}"
        for _ in range(max(1, self.webhook_repeats)):
            headers = {"Content-Type": "application/json", IDEMPOTENCY_HEADER: key}
            if self.webhook_secret:
                headers[SIGNATURE_HEADER] = signature(
                    self.webhook_secret, raw, int(time.time() + self.webhook_time_offset)
                )
            try:
                answer = self._http.post(url, content=raw, headers=headers)
                self.deliveries.append(Delivery(job.id, status, key, answer.status_code))
            except httpx.HTTPError as exc:
                self.deliveries.append(Delivery(job.id, status, key, None, str(exc)))


class StubOpenRouterWithVideo(StubOpenRouter):
    """The chat/image stub with the Video API mounted under the same base URL (``.video``)."""

    def __init__(self, *, video: StubVideoAPI | None = None, **kw: Any) -> None:
        super().__init__(**kw)
        self.video = video or StubVideoAPI(valid_keys=kw.get("valid_keys", ("sk-or-test-key",)))

    def start(self) -> StubOpenRouterWithVideo:
        super().start()
        stub = self
        server = self._server
        assert server is not None
        handler = server.RequestHandlerClass

        class Routed(handler):  # type: ignore[misc, valid-type]
            def do_GET(self) -> None:
                if self.path.startswith("/api/v1/videos"):
                    return stub.video.serve(self, "GET")
                return super().do_GET()

            def do_POST(self) -> None:
                if self.path.startswith("/api/v1/videos"):
                    return stub.video.serve(self, "POST")
                return super().do_POST()

        server.RequestHandlerClass = Routed
        self.video.start_ticker(self.base_url)
        return self

    def stop(self) -> None:
        self.video.stop()
        super().stop()
