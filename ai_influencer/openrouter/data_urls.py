"""Images over the wire: reference photos out as data URLs, generated images in, decoded whole.

Why apart from the client: both directions are pure byte work with their own rules (references
re-encoded when large, cached per file; a returned image must decode completely, because a base64
body cut on a 4-character boundary still decodes, to a truncated JPEG), and the VLM captioner sends
references the same way.
"""

from __future__ import annotations

import base64
import binascii
import functools
import io
import re
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from ai_influencer.imaging import IncompleteImageError, verify_image_bytes
from ai_influencer.openrouter.errors import ImageDecodeError
from ai_influencer.openrouter.types import GeneratedImage

_DATA_URL = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?:;[\w-]+=[^;,]*)*(?P<b64>;base64)?,(?P<data>.*)$", re.S)
_FORMAT_MIME = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp", "GIF": "image/gif"}


def image_to_data_url(image: bytes | str | Path) -> str:
    """Encode a reference image as a data URL content part payload.

    A file is encoded once per content (path, size, mtime): every image of a run sends the same
    reference photos, and reading plus base64-encoding megabytes per request cost more CPU than the
    rest of a request's client side (measured with py-spy on a 200-image run). A large non-JPEG file
    is sent as JPEG (see ``REFERENCE_INLINE_MAX_BYTES``); raw bytes are sent as they are.
    """
    if isinstance(image, str | Path):
        path = Path(image).resolve()
        try:
            st = path.stat()
        except OSError as exc:
            raise ValueError(f"reference image {image} cannot be read: {exc}") from exc
        return _file_data_url(path, st.st_size, st.st_mtime_ns)
    return _encode_data_url(image, "<bytes>")


# Reference files above this size that are not JPEG already are sent as JPEG at this quality (same
# pixel size). Why: `prepare` writes lossless 1024 px PNGs of ~1.2 MB; two of them made every image
# request 3.2 MB of base64, 30 MB/s of upload at 10 requests/s, more than most home uplinks carry.
# As JPEG q92 the same references are ~8x smaller, with no visible change for a face reference.
REFERENCE_INLINE_MAX_BYTES = 512 * 1024
REFERENCE_JPEG_QUALITY = 92


@functools.lru_cache(maxsize=8)
def _file_data_url(path: Path, size: int, mtime_ns: int) -> str:
    """Cached by (path, size, mtime): a changed file is read again."""
    data = path.read_bytes()
    if size > REFERENCE_INLINE_MAX_BYTES:
        data = _as_jpeg(data, str(path))
    return _encode_data_url(data, str(path))


def _as_jpeg(data: bytes, label: str) -> bytes:
    """JPEG bytes of a large reference (transparency flattened onto white); JPEG input is kept."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.format == "JPEG":
                return data
            im.load()
            rgba = im.convert("RGBA")
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"reference image {label} is not an image") from exc
    flat = Image.new("RGB", rgba.size, (255, 255, 255))
    flat.paste(rgba, mask=rgba.getchannel("A"))
    buf = io.BytesIO()
    flat.save(buf, format="JPEG", quality=REFERENCE_JPEG_QUALITY)
    return buf.getvalue()


def _encode_data_url(data: bytes, label: str) -> str:
    try:
        with Image.open(io.BytesIO(data)) as im:
            mime = _FORMAT_MIME.get(im.format or "", "image/png")
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"reference image {label} is not an image") from exc
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


# What a reference is re-encoded to once a route answers 413 (payload too large): small enough that a
# handful of them fit any body limit seen, large enough to show a face.
REFERENCE_SHRUNK_SIDE = 768
REFERENCE_SHRUNK_QUALITY = 80


def shrunk_data_url(image: bytes | str | Path) -> str:
    """A reference as a JPEG of at most ``REFERENCE_SHRUNK_SIDE`` px, for a second try after a 413."""
    data = Path(image).read_bytes() if isinstance(image, str | Path) else image
    label = str(image) if isinstance(image, str | Path) else "<bytes>"
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            rgba = im.convert("RGBA")
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"reference image {label} is not an image") from exc
    rgba.thumbnail((REFERENCE_SHRUNK_SIDE, REFERENCE_SHRUNK_SIDE), Image.Resampling.LANCZOS)
    flat = Image.new("RGB", rgba.size, (255, 255, 255))
    flat.paste(rgba, mask=rgba.getchannel("A"))
    buf = io.BytesIO()
    flat.save(buf, format="JPEG", quality=REFERENCE_SHRUNK_QUALITY)
    return f"data:image/jpeg;base64,{base64.b64encode(buf.getvalue()).decode()}"


def decode_b64_image(b64: str, media_type: str | None = None) -> GeneratedImage:
    """One ``data[].b64_json`` of the Image API, checked like a data URL (the bytes must decode whole)."""
    if not isinstance(b64, str) or not b64:
        raise ImageDecodeError("image entry without b64_json")
    return decode_image(f"data:{media_type or ''};base64,{b64}")


def decode_image(url: str) -> GeneratedImage:
    """Decode an image data URL; the bytes must decode to a complete image (see ``verify_image_bytes``)."""
    m = _DATA_URL.match(url.strip())
    if not m:
        raise ImageDecodeError(f"image is not a data URL: {url[:60]!r}")
    try:
        payload = base64.b64decode(m["data"], validate=True) if m["b64"] else m["data"].encode()
    except (binascii.Error, ValueError) as exc:
        raise ImageDecodeError(f"image data URL is not valid base64: {exc}") from None
    try:
        fmt, _ = verify_image_bytes(payload)
    except IncompleteImageError as exc:
        declared = f" (declared {m['mime']})" if m["mime"] else ""
        raise ImageDecodeError(f"returned image{declared} is unusable: {exc}") from None
    return GeneratedImage(data=payload, mime=_FORMAT_MIME.get(fmt, "application/octet-stream"))
