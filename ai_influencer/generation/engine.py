"""Image generation (manual step 3): planned by slot, several slots per request, resumable, cost-tracked.

Slots. A run asks for ``per_scene`` images of every scene: slot (scene, index). A slot's identity, its
*slot key*, is everything that defines the image except the reference photos: model, prompt, negative
prompt, size, the options that change an image (quality, format), the plan's seed, scene and index.
A slot is done when an image whose sidecar names that slot key is on disk, whole: adding or removing
a reference photo therefore keeps every paid image in its slot (it used to change every request hash,
and the whole batch was paid for again). ``--regenerate`` makes the slots whose image was made with
another reference set owed again; the older image is set aside in ``.superseded/`` once the new one
has landed (never lost). Every sidecar records the references its request sent.

Requests. With ``n`` images per request, a scene's slots form groups of ``n`` (slots g*n .. g*n+n-1)
that share one prompt: the prompt composed for the group's first slot. One request asks for the
slots of a group still owed; each returned image is its own file named by its slot (its slot key and
the run's reference set: *content addressing* by what was asked) with a sidecar naming the request
(``request_key``) and the image's place in the answer. A short answer (fewer images than asked) is
recorded as such; the slots it did not fill stay owed and a later run asks only for those. With a
plan seed, each slot has a deterministic seed and a request sends the seed of its first owed slot, so
the same plan asks the same question, and a resumed group does not ask for the images it already has.

Write order is image first, sidecar second, both atomic. A kill between the two leaves an image
without sidecar; the next run finds it by its slot's file name and rebuilds the sidecar instead of
paying again (``recovered``, cost unknown). A sidecar records the image's content hash: a file whose
bytes no longer match (damaged on disk, even at the same size) is moved to ``.quarantine/`` and its slot
is generated again; a file no sidecar vouches for is decoded whole before it counts as done.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ai_influencer.costs import BudgetExceededError, CostLedger, RunHaltedError
from ai_influencer.dataset.manifest import (
    IMAGE_SUFFIXES,
    ImageRecord,
    read_sidecars,
    rebuild_manifest,
    sidecar_path,
    write_sidecar,
)
from ai_influencer.generation.dispatch import LocalSlots, dispatch
from ai_influencer.imaging import IncompleteImageError, verify_image_file
from ai_influencer.io import atomic_write_bytes, file_sha256, quarantine
from ai_influencer.openrouter import OpenRouterClient, OpenRouterError
from ai_influencer.openrouter.capabilities import (
    DEFAULT_SIZE,
    SEED_MAX,
    ImageOptions,
    ImageRoute,
    aspect_ratio,
    chat_route,
    parse_size,
    resolve_route,
)
from ai_influencer.openrouter.errors import UnsupportedParameterError
from ai_influencer.options.images import IMAGE_OPTION_DEFAULTS
from ai_influencer.pacing import Pacer, StopFlag, StopRequested
from ai_influencer.prompt_bank import PromptSpec

__all__ = ["aspect_ratio", "parse_size"]  # re-exported: the size rules live with the routes' capabilities

SUPERSEDED_DIR = ".superseded"


def _digest(payload: object) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:24]


def slot_key(
    *,
    model: str,
    prompt: str,
    negative_prompt: str,
    size: str,
    seed: int | None,
    scene: str | None,
    index: int,
    options: dict[str, Any] | None = None,
) -> str:
    """A slot's identity: what defines its image, the reference photos excepted (see the module doc)."""
    payload: dict[str, Any] = {
        "model": model,
        "prompt": prompt,
        "negative_prompt": negative_prompt,
        "size": size,
        "scene": scene,
        "index": index,
    }
    if seed is not None:
        payload["seed"] = seed
    if options:
        payload["options"] = dict(sorted(options.items()))
    return _digest(payload)


def record_slot_key(record: ImageRecord) -> str:
    """The slot an image on disk fills, from its sidecar (older sidecars have no seed and no options)."""
    return slot_key(
        model=record.model, prompt=record.prompt, negative_prompt=record.negative_prompt, size=record.size,
        seed=record.seed, scene=record.scene, index=record.variant, options=record.options,
    )  # fmt: skip


def slot_seed(seed: int, scene: str, index: int) -> int:
    """A slot's deterministic request seed, from the plan seed (0 .. 2^31-1)."""
    raw = hashlib.sha256(f"{seed}:{scene}:{index}".encode()).digest()
    return int.from_bytes(raw[:4], "big") & SEED_MAX


def reference_set(digests: Sequence[str]) -> str:
    """One digest for a run's reference photos ("" for none): the part of an image's file name that
    tells two reference sets apart."""
    return hashlib.sha256(",".join(sorted(digests)).encode()).hexdigest()[:16] if digests else ""


def file_key(slot: str, refs: str) -> str:
    return slot if not refs else hashlib.sha256(f"{slot}:{refs}".encode()).hexdigest()[:24]


@dataclass(frozen=True)
class Slot:
    """One image a plan asks for: (scene, index), its identity, file name stem and request seed."""

    scene: str
    index: int
    key: str  # slot key (no references)
    file_key: str  # the image's file stem for this run's reference set
    seed: int | None = None  # the slot's request seed (None: the plan has no seed)
    replaces: tuple[str, ...] = ()  # this slot's images from another reference set (--regenerate sets them aside)


@dataclass(frozen=True)
class ImageRequest:
    """One paid call: the prompt of a group of slots and the slots it still owes (``n`` = their number)."""

    model: str
    prompt: str
    negative_prompt: str = ""
    size: str = DEFAULT_SIZE
    variant: int = 0  # the index of the group's first slot (the prompt's own index)
    reference_digests: tuple[str, ...] = ()
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    slots: tuple[Slot, ...] = ()
    seed: int | None = None  # the plan's seed
    options: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def n(self) -> int:
        return max(1, len(self.slots))

    @property
    def request_seed(self) -> int | None:
        """The seed of its first owed slot: a resumed group asks a new question, not the answered one."""
        return self.slots[0].seed if self.slots else None

    @property
    def reference_set(self) -> str:
        return reference_set(self.reference_digests)

    @property
    def key(self) -> str:
        """What this call asks: its slots (each with the model, prompt, size, ...), n, seed and references."""
        return _digest(
            {"slots": [s.key for s in self.slots], "n": self.n, "seed": self.request_seed, "refs": self.reference_set}
        )

    def narrowed(self, slots: Sequence[Slot]) -> ImageRequest:
        return replace(self, slots=tuple(slots))


def _slot(
    spec: PromptSpec, group: PromptSpec, model: str, size: str, seed: int | None, options: dict, refs: str
) -> Slot:
    key = slot_key(
        model=model, prompt=group.prompt, negative_prompt=group.negative_prompt, size=size, seed=seed,
        scene=spec.scene, index=spec.index, options=options,
    )  # fmt: skip
    return Slot(
        scene=spec.scene,
        index=spec.index,
        key=key,
        file_key=file_key(key, refs),
        seed=None if seed is None else slot_seed(seed, spec.scene, spec.index),
    )


def plan_slots(
    specs: Sequence[PromptSpec],
    model: str,
    size: str,
    *,
    n: int = IMAGE_OPTION_DEFAULTS.n,
    seed: int | None = None,
    options: dict[str, Any] | None = None,
    reference_digests: Sequence[str] = (),
) -> list[tuple[Slot, PromptSpec]]:
    """Every slot with the spec of its group (the prompt it shares with the other slots of its request)."""
    parse_size(size)
    refs = reference_set(reference_digests)
    by_scene: dict[str, dict[int, PromptSpec]] = {}
    for s in specs:
        by_scene.setdefault(s.scene, {})[s.index] = s
    out = []
    for s in specs:
        group = by_scene[s.scene].get(s.index // n * n, s)
        out.append((_slot(s, group, model, size, seed, dict(options or {}), refs), group))
    return out


def group_requests(
    owed: Sequence[tuple[Slot, PromptSpec]],
    model: str,
    size: str,
    *,
    seed: int | None = None,
    options: dict[str, Any] | None = None,
    reference_digests: Sequence[str] = (),
) -> list[ImageRequest]:
    """One request per group of owed slots (slots that share their group's prompt), in plan order."""
    groups: dict[tuple[str, int], list[Slot]] = {}
    specs: dict[tuple[str, int], PromptSpec] = {}
    for slot, group in owed:
        groups.setdefault((group.scene, group.index), []).append(slot)
        specs[(group.scene, group.index)] = group
    return [
        ImageRequest(
            model=model,
            prompt=specs[g].prompt,
            negative_prompt=specs[g].negative_prompt,
            size=size,
            variant=specs[g].index,
            reference_digests=tuple(reference_digests),
            meta=specs[g].metadata(),
            slots=tuple(slots),
            seed=seed,
            options=dict(options or {}),
        )
        for g, slots in groups.items()
    ]


def build_requests(
    specs: Sequence[PromptSpec],
    model: str,
    size: str,
    references: Sequence[Path] = (),
    *,
    n: int = IMAGE_OPTION_DEFAULTS.n,
    seed: int | None = None,
    options: dict[str, Any] | None = None,
) -> list[ImageRequest]:
    """Every request of a plan, ignoring what is on disk (``generate_one`` skips slots already done)."""
    digests = tuple(file_sha256(p) for p in references)
    slots = plan_slots(specs, model, size, n=n, seed=seed, options=options, reference_digests=digests)
    return group_requests(slots, model, size, seed=seed, options=options, reference_digests=digests)


def find_existing(out_dir: Path, key: str) -> Path | None:
    for suffix in IMAGE_SUFFIXES:
        candidate = out_dir / f"{key}{suffix}"
        if candidate.is_file():
            return candidate
    return None


def vouched(out_dir: Path, record: ImageRecord) -> ImageRecord | None:
    """The record if its image on disk is the one it describes; else None, the image and sidecar moved
    to ``.quarantine/`` (a damaged file is never kept as done, a paid one never deleted).

    The sidecar's content hash decides (a same-size corruption used to pass a size check); an older
    sidecar without a hash vouches once the image decodes whole, and gets the hash written into it.
    """
    image = out_dir / record.file
    side = sidecar_path(out_dir, record.key)
    if not image.is_file():
        return None
    digest = file_sha256(image)
    if record.sha256 is not None:
        if digest == record.sha256:
            return record
        reason = f"content hash {digest[:12]} is not the {record.sha256[:12]} recorded when it was paid for"
    else:
        try:
            verify_image_file(image)
        except IncompleteImageError as exc:
            reason = str(exc)
        else:
            upgraded = record.model_copy(update={"sha256": digest, "bytes": image.stat().st_size})
            write_sidecar(out_dir, upgraded)
            return upgraded
    quarantine(image, reason)
    if side.is_file():
        quarantine(side, reason)
    return None


def scan_slots(out_dir: Path) -> dict[str, list[ImageRecord]]:
    """Every image on disk that its sidecar vouches for, by the slot it fills."""
    records, _ = read_sidecars(out_dir)
    found: dict[str, list[ImageRecord]] = {}
    for record in records:
        good = vouched(out_dir, record)
        if good is not None:
            found.setdefault(good.slot_key or record_slot_key(good), []).append(good)
    return found


def _record(request: ImageRequest, slot: Slot, file: str, **kw: Any) -> ImageRecord:
    return ImageRecord(
        key=slot.file_key,
        file=file,
        model=request.model,
        prompt=request.prompt,
        negative_prompt=request.negative_prompt,
        size=request.size,
        variant=slot.index,
        scene=request.meta.get("scene", slot.scene),
        lighting=request.meta.get("lighting"),
        pose=request.meta.get("pose"),
        outfit=request.meta.get("outfit"),
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        slot_key=slot.key,
        seed=request.seed,
        options=dict(request.options),
        reference_set=request.reference_set or None,
        **kw,
    )


def slot_done(request: ImageRequest, slot: Slot, out_dir: Path) -> tuple[ImageRecord, bool] | None:
    """(record, recovered) when this run's image of the slot is on disk, whole; None when it is owed.

    An image without a sidecar (killed between the two writes) is decoded whole and gets its sidecar
    rebuilt from the request (``recovered``, cost unknown); a damaged one is quarantined.
    """
    existing = find_existing(out_dir, slot.file_key)
    if existing is None:
        return None
    side = sidecar_path(out_dir, slot.file_key)
    if side.is_file():
        try:
            record = ImageRecord.model_validate_json(side.read_text(encoding="utf-8"))
        except ValueError:
            record = None  # an unreadable sidecar is rebuilt below
        if record is not None and record.file == existing.name:
            good = vouched(out_dir, record)
            return None if good is None else (good, False)
    try:
        verify_image_file(existing)
    except IncompleteImageError as exc:
        quarantine(existing, str(exc))
        side.unlink(missing_ok=True)
        return None
    record = _record(
        request, slot, existing.name, recovered=True, bytes=existing.stat().st_size, sha256=file_sha256(existing),
        route=None,
    )  # fmt: skip
    write_sidecar(out_dir, record)
    return record, True


@dataclass
class GenerationOutcome:
    """What became of one request: the images of its slots on disk (new or earlier), and its status."""

    request: ImageRequest
    records: list[ImageRecord] = field(default_factory=list)
    status: str = "skipped"  # "generated" | "skipped" | "recovered" | "failed" | "budget" | "stopped"
    error: str | None = None
    new: int = 0  # images paid for by this call
    asked: int = 0  # images it asked for (0: nothing was sent)
    fresh: set[str] = field(default_factory=set)  # files written by this call

    @property
    def paid(self) -> bool:
        return self.status == "generated"

    @property
    def short(self) -> bool:
        return self.paid and self.new < self.asked

    @property
    def record(self) -> ImageRecord | None:
        return self.records[0] if self.records else None

    @property
    def images(self) -> list[tuple[str, bool]]:
        """(file, paid now) of every image of its slots on disk."""
        return [(r.file, r.file in self.fresh) for r in self.records]


def _send(
    client: OpenRouterClient, request: ImageRequest, route: ImageRoute, references: Sequence[Path], pacer: Pacer | None
) -> Any:
    if route.kind == "images":
        return client.generate_images(
            request.model, request.prompt, n=request.n, negative_prompt=request.negative_prompt or None,
            reference_images=list(references), params=route.params, seed=route.seed_for(request.request_seed),
            provider=route.provider or None, pacer=pacer,
        )  # fmt: skip
    if request.n != 1:
        raise UnsupportedParameterError(f"--n {request.n}: {request.model} accepts n = 1 (chat route)")
    return client.generate_image(
        request.model, request.prompt, negative_prompt=request.negative_prompt or None,
        reference_images=list(references), aspect_ratio=route.params.get("aspect_ratio"), pacer=pacer,
    )  # fmt: skip


def _supersede(out_dir: Path, slot: Slot, new_file: str) -> None:
    for old in slot.replaces:
        image = out_dir / old
        if old == new_file or not image.is_file():
            continue
        why = f"slot {slot.scene}#{slot.index} regenerated with the current reference photos as {new_file}"
        quarantine(image, why, into=SUPERSEDED_DIR)
        side = image.with_suffix(".json")
        if side.is_file():
            quarantine(side, why, into=SUPERSEDED_DIR)


def generate_one(
    client: OpenRouterClient,
    request: ImageRequest,
    out_dir: Path,
    *,
    route: ImageRoute | None = None,
    references: Sequence[Path] = (),
    gate: Callable[[], AbstractContextManager[Any]] | None = None,
    ledger: CostLedger | None = None,
    run_id: str | None = None,
    pacer: Pacer | None = None,
) -> GenerationOutcome:
    """Make the images a request still owes: one paid call for its slots not on disk yet.

    ``route`` says how it is sent (default: the chat route, one image, for older callers); ``gate``
    wraps only the paid call (e.g. an in-flight slot); ``pacer`` sees every attempt of it, the client's
    own retries included (a rate limit counts every request), and may refuse to send it
    (``StopRequested``, when the run drains); ``ledger`` reserves the call's expected cost (the route's
    price lines for the images asked) before it and raises ``BudgetExceededError`` instead of sending a
    request that could cross the budget.
    """
    route = route or chat_route(request.model, request.size)
    done: dict[int, tuple[ImageRecord, bool]] = {}
    for i, slot in enumerate(request.slots):
        state = slot_done(request, slot, out_dir)
        if state is not None:
            done[i] = state
    owed = [s for i, s in enumerate(request.slots) if i not in done]
    earlier = [done[i][0] for i in sorted(done)]
    if not owed:
        recovered = any(rec for _, rec in done.values())
        return GenerationOutcome(request, earlier, "recovered" if recovered else "skipped")
    ask = request.narrowed(owed)
    refs = list(references)[: route.max_references] if route.max_references is not None else list(references)
    # The ledger is checked *inside* the gate: a call that waited for a rate-limit slot while the budget
    # ran out, or while another call hit 401/402, is refused at the last moment before it is sent.
    with (
        (gate or nullcontext)(),
        ledger.reserve(ask.model, images=ask.n, expected=route.estimate(ask.n)) if ledger else nullcontext() as bill,
    ):
        result = _send(client, ask, route, refs, pacer)
        images = result.images[: ask.n]  # never count an answer as more than was asked
        if bill is not None:
            bill.images = len(images)
            bill.fallback_usd = route.estimate(len(images))
            bill.append(result.usage.cost)
    cost = result.usage.cost
    estimate = route.estimate(len(images))
    common = {
        "mime": "",
        "usage": result.usage.model_dump(),
        "generation_id": result.id,
        "elapsed_s": round(result.elapsed_s, 3),
        "run_id": run_id,
        "route": route.kind,
        "params": dict(route.params),
        "request_seed": route.seed_for(ask.request_seed),
        "request_key": ask.key,
        "asked": ask.n,
        "returned": len(images),
        "references": [Path(r).name for r in refs],
        "cost_usd": None if cost is None else round(cost / len(images), 8),
        "estimate_usd": None if estimate is None else round(estimate / len(images), 8),
    }
    fresh: list[ImageRecord] = []
    for i, (slot, image) in enumerate(zip(owed, images, strict=False)):
        name = f"{slot.file_key}{image.extension}"
        atomic_write_bytes(out_dir / name, image.data)
        record = _record(
            ask, slot, name, **{**common, "mime": image.mime}, answer_index=i, bytes=len(image.data),
            sha256=hashlib.sha256(image.data).hexdigest(),
        )  # fmt: skip
        write_sidecar(out_dir, record)
        _supersede(out_dir, slot, name)
        fresh.append(record)
    return GenerationOutcome(
        request,
        earlier + fresh,
        "generated",
        error=None if len(images) == ask.n else f"short answer: {len(images)} of {ask.n} images",
        new=len(fresh),
        asked=ask.n,
        fresh={r.file for r in fresh},
    )


def generate_batch(
    client: OpenRouterClient,
    requests: Sequence[ImageRequest],
    out_dir: Path,
    *,
    route: ImageRoute | None = None,
    references: Sequence[Path] = (),
    concurrency: int = 4,
    gate: Callable[[], AbstractContextManager[Any]] | None = None,
    pacer: Pacer | None = None,
    ledger: CostLedger | None = None,
    stop: StopFlag | None = None,
    run_id: str | None = None,
    on_done: Callable[[GenerationOutcome], None] | None = None,
) -> list[GenerationOutcome]:
    """Generate many requests in this process (``dispatch`` with ``LocalSlots``); one failed request
    never stops the others.

    ``route`` None: resolved from the first request (free listing calls). An error that applies to
    every request (bad key, no credits) or a refused budget ends the run: nothing more is sent.
    ``gate``, ``pacer`` and ``ledger`` mean what they mean for :func:`generate_one`. Once ``stop`` is
    set (a signal, see ``pacing.drain_on_signals``) no new request is sent; requests already sent
    finish and are saved, and the others come back as ``stopped``.
    """
    from ai_influencer.openrouter import AuthError, InsufficientCreditsError

    out_dir.mkdir(parents=True, exist_ok=True)
    ledger = ledger or CostLedger()
    if route is None and requests:
        first = requests[0]
        options = ImageOptions(size=first.size, n=max(r.n for r in requests), seed=first.seed)
        route = resolve_route(client, first.model, options, references=len(references))
    ended: list[tuple[str, str]] = []  # (status, reason) of what ended the run early

    def work(req: ImageRequest) -> GenerationOutcome:
        try:
            return generate_one(
                client, req, out_dir, route=route, references=references, gate=gate, ledger=ledger, pacer=pacer,
                run_id=run_id,
            )  # fmt: skip
        except StopRequested as exc:
            return GenerationOutcome(req, [], "stopped", str(exc))
        except BudgetExceededError as exc:
            ended.append(("budget", str(exc)))
            return GenerationOutcome(req, [], "budget", str(exc))
        except RunHaltedError as exc:
            return GenerationOutcome(req, [], "failed", f"not sent: {exc}")
        except (AuthError, InsufficientCreditsError) as exc:
            ledger.halt(str(exc))
            ended.append(("failed", str(exc)))
            return GenerationOutcome(req, [], "failed", str(exc))
        except OpenRouterError as exc:
            return GenerationOutcome(req, [], "failed", str(exc))

    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        done = dispatch(
            requests,
            submit=lambda req, _send_at: pool.submit(work, req),
            slots=LocalSlots(concurrency, stop),
            stop=stop,
            keep_going=lambda: not ended,
            on_done=(lambda f, _request: on_done(f.result())) if on_done else None,
        )
    outcomes: list[GenerationOutcome] = done.results
    for req in done.not_sent:
        if stop is not None and stop.is_set():
            outcome = GenerationOutcome(req, [], "stopped", f"not sent: {stop.reason}")
        else:
            status, reason = ended[0] if ended else ("failed", "run ended")
            outcome = GenerationOutcome(req, [], status, f"not sent: {reason}")
        outcomes.append(outcome)
        if on_done:
            on_done(outcome)
    rebuild_manifest(out_dir)
    return outcomes


def iter_reference_images(folder: Path) -> Iterator[Path]:
    if not folder.is_dir():
        return iter(())
    return (p for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES)


def reference_megapixels(references: Sequence[Path]) -> list[float]:
    """Each reference's size in megapixels (for per-megapixel input prices), from the file header only."""
    from PIL import Image

    sizes = []
    for path in references:
        try:
            with Image.open(path) as im:
                sizes.append(im.width * im.height / 1_000_000)
        except OSError:
            sizes.append(0.0)
    return sizes


def preflight(
    client: OpenRouterClient,
    model: str,
    options: ImageOptions,
    *,
    references: Sequence[Path] = (),
    estimate_usd: float | None = None,
    check_key: bool = True,
) -> ImageRoute:
    """Free checks before any paid call: the key works (GET /key), the model makes images, and every
    parameter the run would send is accepted by the endpoint that would serve it.

    Returns the route, priced by the endpoint's price lines; ``estimate_usd`` (per image) prices a
    route whose endpoint lists no usable price. A bad or exhausted key fails here, with zero paid
    requests, and so does an unsupported parameter (``UnsupportedParameterError``, one line).
    """
    from ai_influencer.openrouter import InsufficientCreditsError

    if check_key:
        info = client.key_info()
        if info.limit_remaining is not None and info.limit_remaining <= 0:
            raise InsufficientCreditsError("the OpenRouter key has no credit left (GET /key limit_remaining <= 0)")
    route = resolve_route(
        client, model, options, references=len(references), reference_megapixels=reference_megapixels(references)
    )
    if estimate_usd is not None and (route.per_image_usd is None or route.kind == "chat"):
        route = route.with_price(estimate_usd, "--estimate-usd")
    return route
