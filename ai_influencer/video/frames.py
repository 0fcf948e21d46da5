"""Reading clips: verify an MP4 decodes whole, and sample its frames at a fixed rate (PyAV).

Why PyAV: its wheels bundle FFmpeg (H.264, HEVC, AV1, VP9 decoders; libx264 for writing, which the test
stub uses), it gives each frame's presentation time, so sampling "two frames per second" means seconds of
the clip and not every n-th frame of an unknown rate, and it reports audio streams. OpenCV's VideoCapture
decodes H.264 too, but cannot write it and hides timestamps and audio.

A clip is kept only after every video frame decoded (``probe_video``), the way an image is kept only
after it decoded fully: a provider's truncated file must not pass for a finished, paid clip.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

from ai_influencer.options.video import VIDEO_DEFAULTS

SAMPLE_FPS = VIDEO_DEFAULTS.sample_fps  # frames per second checked for identity (options.video)
MAX_SAMPLED_FRAMES = 600  # a 5-minute clip at 2 fps; bounds memory for a mislabelled long file
MISSING_FRAMES_TOLERANCE = 0.1  # decoding fewer than 90 % of the frames the container announces: cut file


class BadVideoError(ValueError):
    """A clip cannot be used; the message names the file and the reason in one line."""

    def __init__(self, path: Path | str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = Path(path)
        self.reason = reason


@dataclass(frozen=True)
class VideoProbe:
    width: int
    height: int
    fps: float
    duration_s: float
    frames: int  # decoded
    codec: str
    has_audio: bool
    audio_codec: str | None = None

    def describe(self) -> str:
        audio = f", audio {self.audio_codec}" if self.has_audio else ", no audio"
        return f"{self.width}x{self.height} {self.codec} {self.fps:g} fps {self.duration_s:.1f} s{audio}"


@dataclass(frozen=True)
class SampledFrame:
    t: float  # seconds from the start
    rgb: np.ndarray  # HxWx3 uint8


def _open(path: Path) -> av.container.InputContainer:
    try:
        return av.open(str(path), mode="r")
    except (av.error.FFmpegError, OSError) as exc:  # not a media file, truncated before its index, missing
        raise BadVideoError(path, f"not a readable video ({_reason(exc)})") from None


def _reason(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200] or type(exc).__name__


def probe_video(path: Path | str) -> VideoProbe:
    """Decode every video frame of ``path``; raise ``BadVideoError`` unless the whole clip decodes."""
    p = Path(path)
    with _open(p) as container:
        if not container.streams.video:
            raise BadVideoError(p, "has no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        announced = stream.frames or 0
        decoded = 0
        last_t = 0.0
        try:
            for frame in container.decode(stream):
                decoded += 1
                if frame.time is not None:
                    last_t = max(last_t, float(frame.time))
        except (av.error.FFmpegError, OSError) as exc:
            raise BadVideoError(p, f"stops decoding after {decoded} frames ({_reason(exc)})") from None
        if decoded == 0:
            raise BadVideoError(p, "has no decodable frame")
        if announced and decoded < announced * (1 - MISSING_FRAMES_TOLERANCE):
            raise BadVideoError(p, f"only {decoded} of {announced} frames decode (cut off?)")
        rate = float(stream.average_rate or stream.guessed_rate or 0) or (decoded / max(last_t, 1e-6))
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        else:
            duration = last_t + 1.0 / rate
        audio = container.streams.audio[0] if container.streams.audio else None
        return VideoProbe(
            width=stream.codec_context.width,
            height=stream.codec_context.height,
            fps=round(rate, 3),
            duration_s=round(duration, 3),
            frames=decoded,
            codec=stream.codec_context.name,
            has_audio=audio is not None,
            audio_codec=audio.codec_context.name if audio is not None else None,
        )


def sample_frames(
    path: Path | str, fps: float = SAMPLE_FPS, *, max_frames: int = MAX_SAMPLED_FRAMES
) -> list[SampledFrame]:
    """The first frame at or after every ``1/fps`` seconds (0, 0.5, 1.0 ... for 2 fps), as RGB arrays.

    Only the chosen frames are converted to RGB; the others are decoded and dropped.
    """
    if not fps > 0:
        raise ValueError(f"sample fps must be > 0, got {fps}")
    p = Path(path)
    step = 1.0 / fps
    out: list[SampledFrame] = []
    with _open(p) as container:
        if not container.streams.video:
            raise BadVideoError(p, "has no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        rate = float(stream.average_rate or stream.guessed_rate or 0) or 25.0
        next_t = 0.0
        try:
            for i, frame in enumerate(container.decode(stream)):
                t = float(frame.time) if frame.time is not None else i / rate
                reached = t + 0.5 / rate  # within half a frame of a target counts as on it
                if reached < next_t:
                    continue
                out.append(SampledFrame(round(t, 3), frame.to_ndarray(format="rgb24")))
                if len(out) >= max_frames:
                    break
                next_t = (math.floor(reached / step) + 1) * step
        except (av.error.FFmpegError, OSError) as exc:
            raise BadVideoError(p, f"stops decoding after {len(out)} sampled frames ({_reason(exc)})") from None
    if not out:
        raise BadVideoError(p, "has no decodable frame")
    return out
