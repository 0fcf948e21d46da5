"""Image generation (manual step 3): content-addressed, resumable, cost-tracked.

Why content addressing: the file name is a hash of everything that defines the
request (model, prompt, negative prompt, size, variant, reference images). A
re-run computes the same names, sees the finished files and pays nothing; a
changed prompt gets a new name and never overwrites an older image.

Write order is image first, sidecar second, both atomic. A kill between the
two leaves an image without sidecar; the next run rebuilds that sidecar from
the request instead of paying again (``recovered=True``, cost unknown).

Only complete images are saved (the client decodes every image fully), and the
sidecar records the image's byte count. A file on disk that no sidecar vouches
for is decoded before it counts as done; one that does not decode (saved by an
older version, or damaged on disk) is moved to ``.quarantine/`` and generated
again instead of being skipped forever.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ai_influencer.costs import BudgetExceededError, CostLedger, RunHaltedError
from ai_influencer.dataset.manifest import (
    IMAGE_SUFFIXES,
    ImageRecord,
    rebuild_manifest,
    sidecar_path,
    write_sidecar,
)
from ai_influencer.dispatch import LocalSlots, dispatch
from ai_influencer.io import atomic_write_bytes, file_sha256, quarantine
from ai_influencer.openrouter import OpenRouterClient, OpenRouterError
from ai_influencer.pacing import Pacer, StopFlag, StopRequested
from ai_influencer.prompt_bank import PromptSpec
from ai_influencer.vision.image_io import IncompleteImageError, verify_image_file

_SIZE = re.compile(r"^(\d+)x(\d+)$")
SIDE_PX = (16, 16384)  # the sides a size may have, in pixels


def parse_size(size: str) -> tuple[int, int]:
    """``WxH`` as two ints; an error names the side that is out of range (``99x0``: the height)."""
    m = _SIZE.match(size.strip().lower())
    if not m:
        raise ValueError(f"size must look like WxH, e.g. 1024x1024, got {size!r}")
    for side, value in (("width", int(m[1])), ("height", int(m[2]))):
        if not SIDE_PX[0] <= value <= SIDE_PX[1]:
            raise ValueError(f"size {size.strip()}: {side} {value} is out of range ({SIDE_PX[0]}-{SIDE_PX[1]} px)")
    return int(m[1]), int(m[2])


def aspect_ratio(size: str) -> str:
    """OpenRouter ``image_config.aspect_ratio`` for a WxH size (reduced fraction)."""
    from math import gcd

    w, h = parse_size(size)
    g = gcd(w, h)
    return f"{w // g}:{h // g}"


@dataclass(frozen=True)
class ImageRequest:
    model: str
    prompt: str
    negative_prompt: str = ""
    size: str = "1024x1024"
    variant: int = 0
    reference_digests: tuple[str, ...] = ()
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def key(self) -> str:
        payload = {
            "model": self.model,
            "prompt": self.prompt,
            "negative_prompt": self.negative_prompt,
            "size": self.size,
            "variant": self.variant,
            "refs": list(self.reference_digests),
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:24]


def build_requests(
    specs: Sequence[PromptSpec], model: str, size: str, references: Sequence[Path] = ()
) -> list[ImageRequest]:
    parse_size(size)
    digests = tuple(file_sha256(p) for p in references)
    return [
        ImageRequest(
            model=model,
            prompt=s.prompt,
            negative_prompt=s.negative_prompt,
            size=size,
            variant=s.index,
            reference_digests=digests,
            meta=s.metadata(),
        )
        for s in specs
    ]


def find_existing(out_dir: Path, key: str) -> Path | None:
    for suffix in IMAGE_SUFFIXES:
        candidate = out_dir / f"{key}{suffix}"
        if candidate.is_file():
            return candidate
    return None


def _record(request: ImageRequest, file: str, **kw: Any) -> ImageRecord:
    return ImageRecord(
        key=request.key,
        file=file,
        model=request.model,
        prompt=request.prompt,
        negative_prompt=request.negative_prompt,
        size=request.size,
        variant=request.variant,
        scene=request.meta.get("scene"),
        lighting=request.meta.get("lighting"),
        pose=request.meta.get("pose"),
        outfit=request.meta.get("outfit"),
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        **kw,
    )


@dataclass
class GenerationOutcome:
    request: ImageRequest
    record: ImageRecord | None
    status: str  # "generated" | "skipped" | "recovered" | "failed" | "budget" | "stopped"
    error: str | None = None

    @property
    def paid(self) -> bool:
        return self.status == "generated"


def _vouched(record: ImageRecord, image: Path) -> bool:
    """A sidecar written after a fully decoded image records its size; a matching file is that image."""
    return record.bytes is not None and record.file == image.name and image.stat().st_size == record.bytes


def already_done(request: ImageRequest, out_dir: Path) -> GenerationOutcome | None:
    """Finished (image + sidecar), or recoverable (image only), without any paid call.

    An image no sidecar vouches for is decoded first; an undecodable one is quarantined and the
    request counts as not done (it will be generated, and paid, again: the old file was unusable).
    """
    existing = find_existing(out_dir, request.key)
    if existing is None:
        return None
    side = sidecar_path(out_dir, request.key)
    record = None
    if side.is_file():
        try:
            record = ImageRecord.model_validate_json(side.read_text(encoding="utf-8"))
        except ValueError:
            record = None  # an unreadable sidecar is rebuilt below
        if record is not None and _vouched(record, existing):
            return GenerationOutcome(request, record, "skipped")
    try:
        verify_image_file(existing)
    except IncompleteImageError as exc:
        quarantine(existing, str(exc))
        side.unlink(missing_ok=True)
        return None
    size = existing.stat().st_size
    if record is not None:
        record = record.model_copy(update={"file": existing.name, "bytes": size})
        write_sidecar(out_dir, record)
        return GenerationOutcome(request, record, "skipped")
    record = _record(request, existing.name, recovered=True, bytes=size)
    write_sidecar(out_dir, record)
    return GenerationOutcome(request, record, "recovered")


def generate_one(
    client: OpenRouterClient,
    request: ImageRequest,
    out_dir: Path,
    *,
    references: Sequence[Path] = (),
    gate: Callable[[], AbstractContextManager[Any]] | None = None,
    ledger: CostLedger | None = None,
    run_id: str | None = None,
    pacer: Pacer | None = None,
) -> GenerationOutcome:
    """Produce one image unless it already exists.

    ``gate`` wraps only the paid call (e.g. an in-flight slot); ``pacer`` sees every attempt of
    it, the client's own retries included (a rate limit counts every request), and may refuse to
    send it (``StopRequested``, when the run drains); ``ledger`` reserves the expected cost before
    it and raises ``BudgetExceededError`` instead of sending a request that could cross the budget.
    """
    done = already_done(request, out_dir)
    if done is not None:
        return done
    # The ledger is checked *inside* the gate: a call that waited for a rate-limit slot while the budget
    # ran out, or while another call hit 401/402, is refused at the last moment before it is sent.
    with (gate or nullcontext)(), ledger.reserve(request.model) if ledger else nullcontext([]) as actual:
        result = client.generate_image(
            request.model,
            request.prompt,
            negative_prompt=request.negative_prompt or None,
            reference_images=list(references),
            aspect_ratio=aspect_ratio(request.size),
            pacer=pacer,
        )
        actual.append(result.usage.cost)
    image = result.images[0]
    name = f"{request.key}{image.extension}"
    atomic_write_bytes(out_dir / name, image.data)
    record = _record(
        request,
        name,
        bytes=len(image.data),
        mime=image.mime,
        cost_usd=result.usage.cost,
        usage=result.usage.model_dump(),
        generation_id=result.id,
        elapsed_s=round(result.elapsed_s, 3),
        run_id=run_id,
    )
    write_sidecar(out_dir, record)
    return GenerationOutcome(request, record, "generated")


def generate_batch(
    client: OpenRouterClient,
    requests: Sequence[ImageRequest],
    out_dir: Path,
    *,
    references: Sequence[Path] = (),
    concurrency: int = 4,
    gate: Callable[[], AbstractContextManager[Any]] | None = None,
    pacer: Pacer | None = None,
    ledger: CostLedger | None = None,
    stop: StopFlag | None = None,
    run_id: str | None = None,
    on_done: Callable[[GenerationOutcome], None] | None = None,
) -> list[GenerationOutcome]:
    """Generate many images in this process (``dispatch`` with ``LocalSlots``); one failed image never
    stops the others.

    An error that applies to every request (bad key, no credits) or a refused budget ends the run:
    nothing more is sent. ``gate``, ``pacer`` and ``ledger`` mean what they mean for
    :func:`generate_one`. Once ``stop`` is set (a signal, see ``pacing.drain_on_signals``) no new
    request is sent; requests already sent finish and are saved, and the others come back as
    ``stopped``.
    """
    from ai_influencer.openrouter import AuthError, InsufficientCreditsError

    out_dir.mkdir(parents=True, exist_ok=True)
    ledger = ledger or CostLedger()
    ended: list[tuple[str, str]] = []  # (status, reason) of what ended the run early

    def work(req: ImageRequest) -> GenerationOutcome:
        try:
            return generate_one(
                client, req, out_dir, references=references, gate=gate, ledger=ledger, pacer=pacer, run_id=run_id
            )
        except StopRequested as exc:
            return GenerationOutcome(req, None, "stopped", str(exc))
        except BudgetExceededError as exc:
            ended.append(("budget", str(exc)))
            return GenerationOutcome(req, None, "budget", str(exc))
        except RunHaltedError as exc:
            return GenerationOutcome(req, None, "failed", f"not sent: {exc}")
        except (AuthError, InsufficientCreditsError) as exc:
            ledger.halt(str(exc))
            ended.append(("failed", str(exc)))
            return GenerationOutcome(req, None, "failed", str(exc))
        except OpenRouterError as exc:
            return GenerationOutcome(req, None, "failed", str(exc))

    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        done = dispatch(
            requests,
            submit=lambda req, _send_at: pool.submit(work, req),
            slots=LocalSlots(concurrency, stop),
            stop=stop,
            keep_going=lambda: not ended,
            on_done=(lambda f: on_done(f.result())) if on_done else None,
        )
    outcomes: list[GenerationOutcome] = done.results
    for req in done.not_sent:
        if stop is not None and stop.is_set():
            outcome = GenerationOutcome(req, None, "stopped", f"not sent: {stop.reason}")
        else:
            status, reason = ended[0] if ended else ("failed", "run ended")
            outcome = GenerationOutcome(req, None, status, f"not sent: {reason}")
        outcomes.append(outcome)
        if on_done:
            on_done(outcome)
    rebuild_manifest(out_dir)
    return outcomes


def iter_reference_images(folder: Path) -> Iterator[Path]:
    if not folder.is_dir():
        return iter(())
    return (p for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES)


def preflight(client: OpenRouterClient, model: str, estimate_usd: float | None) -> float | None:
    """Free checks before any paid call: the key works (GET /key), the model exists and makes images.

    Returns the price estimate per image: the caller's, else the model's listed image price. A bad
    or exhausted key fails here, with zero paid requests.
    """
    from ai_influencer.openrouter import BadRequestError, InsufficientCreditsError

    info = client.key_info()
    if info.limit_remaining is not None and info.limit_remaining <= 0:
        raise InsufficientCreditsError("the OpenRouter key has no credit left (GET /key limit_remaining <= 0)")
    models = {m.id: m for m in client.list_models()}
    if model not in models:
        raise BadRequestError(f"unknown OpenRouter model {model!r}; see `influencer models -m image`")
    if "image" not in models[model].output_modalities:
        raise BadRequestError(f"model {model!r} does not output images")
    if estimate_usd is not None:
        return estimate_usd
    price = models[model].pricing.get("image")
    try:
        return float(price) if price not in (None, "", "0") else None
    except (TypeError, ValueError):
        return None
