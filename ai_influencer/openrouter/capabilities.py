"""Which route a model's images take, what each request may send, and what it will cost: before paying.

Why here, in one place: the Image API publishes, per endpoint (provider), the definitive parameters it
accepts (typed descriptors: enum, range, boolean; an absent key means "not supported") and its price
lines. Checking every parameter a run would send against the endpoint(s) that may serve it turns a
run of 400s (each after a wait in the queue) into one line before the first paid request, and the
price lines give an estimate a budget can trust before any response reports a cost.

A model the Image API does not list but that outputs images through chat completions keeps working
through the chat route (one image per call, no seed), chosen automatically.

The options themselves (``ImageOptions``: defaults, bounds, help) are in ``ai_influencer.options.images``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from ai_influencer.openrouter.errors import OpenRouterError, UnsupportedParameterError
from ai_influencer.openrouter.types import Capability, ImageEndpoint, PriceLine
from ai_influencer.options.images import (
    DEFAULT_SIZE,
    IMAGE_OPTION_DEFAULTS,
    MAX_SIDE,
    MIN_SIDE,
    N_MAX,
    TIERS,
    ImageOptions,
    ProviderRouting,
    aspect_ratio,
    megapixels,
    option_help,
    output_megapixels,
    parse_size,
    tier_for,
)

if TYPE_CHECKING:
    from ai_influencer.openrouter.client import OpenRouterClient

__all__ = [  # the option names are re-exported: callers of the route need them together
    "DEFAULT_SIZE",
    "IMAGE_OPTION_DEFAULTS",
    "MAX_SIDE",
    "MIN_SIDE",
    "N_MAX",
    "ImageOptions",
    "ImageRoute",
    "ProviderRouting",
    "aspect_ratio",
    "chat_route",
    "option_help",
    "parse_size",
    "resolve_route",
    "tier_for",
]

# ---- the route -----------------------------------------------------------------------------------
SEED_MAX = 2**31 - 1


@dataclass(frozen=True)
class ImageRoute:
    """How every image request of a run is sent, checked against the endpoint(s) that may serve it.

    ``params`` are sent as they are (Image API fields, or the chat route's aspect ratio);
    ``seed_range`` is None where the endpoint takes no seed (none is sent); ``max_references`` None
    means no known limit. Prices: a request for k images is estimated at
    ``per_request_usd + k * per_image_usd`` (None: the endpoint lists no usable price).
    """

    kind: Literal["images", "chat"]
    model: str
    params: dict[str, Any] = field(default_factory=dict, hash=False)
    provider: dict[str, Any] = field(default_factory=dict, hash=False)
    seed_range: tuple[int, int] | None = None
    max_references: int | None = None
    max_n: int = 1
    per_image_usd: float | None = None
    per_request_usd: float = 0.0
    price_lines: tuple[str, ...] = ()
    endpoints: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()

    def seed_for(self, seed: int | None) -> int | None:
        """The seed to send for a slot's seed (mapped into the endpoint's range), None where none is sent."""
        if seed is None or self.seed_range is None:
            return None
        low, high = self.seed_range
        return low + seed % (high - low + 1)

    def estimate(self, images: int) -> float | None:
        if self.per_image_usd is None:
            return None
        return self.per_request_usd + images * self.per_image_usd

    def with_price(self, per_image_usd: float | None, source: str) -> ImageRoute:
        """The same route priced by the caller (``--estimate-usd``) where the endpoint lists no price."""
        from dataclasses import replace

        if per_image_usd is None:
            return self
        line = f"{source} ${per_image_usd:g}/image"
        return replace(self, per_image_usd=per_image_usd, price_lines=(*self.price_lines, line))

    def describe(self) -> str:
        where = f" via {', '.join(self.endpoints)}" if self.endpoints else ""
        api = "Image API (POST /images)" if self.kind == "images" else "chat route (POST /chat/completions)"
        return f"{self.model} on the {api}{where}"


def chat_route(model: str, size: str = DEFAULT_SIZE, per_image_usd: float | None = None) -> ImageRoute:
    """The older route: one image per call through chat completions, the size sent as an aspect ratio."""
    lines = (f"image ${per_image_usd:g}/image (model list)",) if per_image_usd is not None else ()
    return ImageRoute(
        kind="chat", model=model, params={"aspect_ratio": aspect_ratio(size)}, per_image_usd=per_image_usd,
        price_lines=lines,
    )  # fmt: skip


def _eligible(endpoints: Sequence[ImageEndpoint], routing: ProviderRouting | None) -> list[ImageEndpoint]:
    """The endpoints that may serve a request under ``routing`` (each must accept what is sent)."""

    def named(e: ImageEndpoint, names: Sequence[str]) -> bool:
        return bool({e.provider_slug, e.provider_tag or "", e.provider_name} & set(names))

    found = list(endpoints)
    if routing is not None and routing.only:
        found = [e for e in found if named(e, routing.only)]
    if routing is not None and routing.ignore:
        found = [e for e in found if not named(e, routing.ignore)]
    if routing is not None and routing.order and routing.allow_fallbacks is False:
        first = next((e for name in routing.order for e in found if named(e, [name])), None)
        found = [first] if first is not None else []
    return found


class _Checker:
    """Checks one parameter against every eligible endpoint; the error names model, value and what is accepted."""

    def __init__(self, model: str, endpoints: Sequence[ImageEndpoint]) -> None:
        self.model = model
        self.endpoints = list(endpoints)

    def where(self, e: ImageEndpoint) -> str:
        return f" on {e.name}" if len(self.endpoints) > 1 else ""

    def all_have(self, name: str) -> bool:
        return all(name in e.supported_parameters for e in self.endpoints)

    def require(self, flag: str, name: str, value: Any, *, default_accepted: str | None = None) -> None:
        for e in self.endpoints:
            cap = e.supported_parameters.get(name)
            if cap is None:
                accepted = default_accepted or f"no {name}"
                raise UnsupportedParameterError(f"{flag} {value}: {self.model} accepts {accepted}{self.where(e)}")
            if not cap.accepts(value):
                raise UnsupportedParameterError(
                    f"{flag} {value}: {self.model} accepts {cap.accepted(name)}{self.where(e)}"
                )


def _size_params(check: _Checker, size: str, notes: list[str]) -> dict[str, Any]:
    """``--size WxH`` as the endpoints take it: ``size`` itself, else aspect ratio (+ resolution tier)."""
    endpoints = check.endpoints
    sizes = [e.supported_parameters.get("size") for e in endpoints]
    if all(c is not None and c.accepts(size) for c in sizes):
        return {"size": size}
    ratio, tier = aspect_ratio(size), tier_for(size)
    if check.all_have("aspect_ratio"):
        for e in endpoints:
            cap = e.supported_parameters["aspect_ratio"]
            if not cap.accepts(ratio):
                also = sizes[endpoints.index(e)]
                extra = f"; or {also.accepted('size')}" if also is not None and also.type == "enum" else ""
                raise UnsupportedParameterError(
                    f"--size {size}: {check.model} accepts {cap.accepted('aspect_ratio')}{extra}{check.where(e)}"
                )
        params: dict[str, Any] = {"aspect_ratio": ratio}
        if check.all_have("resolution"):
            caps = [e.supported_parameters["resolution"] for e in endpoints]
            chosen = next((t for t in TIERS[TIERS.index(tier) :] if all(c.accepts(t) for c in caps)), None)
            if chosen is None:
                chosen = next((t for t in reversed(TIERS) if all(c.accepts(t) for c in caps)), None)
            if chosen is not None:
                params["resolution"] = chosen
                if chosen != tier:
                    notes.append(f"resolution {chosen} (the nearest tier the endpoint offers for {size})")
        return params
    enum = next((c for c in sizes if c is not None and c.type == "enum"), None)
    if enum is not None:
        raise UnsupportedParameterError(f"--size {size}: {check.model} accepts {enum.accepted('size')}")
    if ratio == "1:1":
        notes.append(f"{check.model} takes no size, aspect_ratio or resolution: the provider's default size")
        return {}
    raise UnsupportedParameterError(
        f"--size {size}: {check.model} takes no size, aspect_ratio or resolution (only its default, square, size)"
    )


def _pick_line(lines: list[PriceLine], tier: str) -> PriceLine | None:
    """The price line for the request's resolution tier: its variant, else the line without variant."""
    if not lines:
        return None
    exact = [p for p in lines if p.variant and p.variant.lower() == tier.lower()]
    plain = [p for p in lines if not p.variant]
    chosen = exact or plain or sorted(lines, key=lambda p: p.cost_usd)[-1:]
    return chosen[0]


def _endpoint_price(
    e: ImageEndpoint, output_mp: float, tier: str, reference_megapixels: Sequence[float]
) -> tuple[float | None, float, list[str]]:
    """(per image, per request, lines used) from one endpoint's price lines.

    ``output_image`` is paid per returned image (per ``image``, or per ``megapixel`` of the size);
    ``input_reference``/``input_image`` per reference sent, per request. Token-priced lines cannot be
    known before the answer: an output priced only in tokens gives no estimate (None).
    """
    used: list[str] = []
    out = _pick_line([p for p in e.pricing if p.billable == "output_image"], tier)
    per_image: float | None = None
    if out is not None and out.unit in ("image", "megapixel"):
        per_image = out.cost_usd * (output_mp if out.unit == "megapixel" else 1.0)
        used.append(out.describe())
    per_request = 0.0
    for billable in ("input_reference", "input_image"):
        line = _pick_line([p for p in e.pricing if p.billable == billable], tier)
        if line is None or not reference_megapixels or line.unit not in ("image", "megapixel"):
            continue
        per_request += line.cost_usd * (
            sum(reference_megapixels) if line.unit == "megapixel" else len(reference_megapixels)
        )
        used.append(f"{line.describe()} x {len(reference_megapixels)} reference(s)")
        break  # one line per reference: input_reference, or input_image where no input_reference is listed
    return per_image, per_request, used


def _most_n(cap: Capability | None) -> int:
    """The most images one request may ask of an endpoint (absent ``n``: single-image)."""
    if cap is None:
        return 1
    if cap.type == "range" and cap.max is not None:
        return int(cap.max)
    if cap.type == "enum":
        return max((int(v) for v in cap.values or [] if v.isdigit()), default=1)
    return 10


def image_model_ids(client: OpenRouterClient) -> set[str]:
    """The models the Image API lists; empty where the API has no Image API (404: an older look-alike)."""
    try:
        return {m.id for m in client.list_image_models()}
    except OpenRouterError as exc:
        if exc.status == 404:
            return set()
        raise


def resolve_route(
    client: OpenRouterClient,
    model: str,
    options: ImageOptions = IMAGE_OPTION_DEFAULTS,
    *,
    references: int = 0,
    reference_megapixels: Sequence[float] = (),
) -> ImageRoute:
    """The route for ``model`` with every parameter checked; free calls only (listings), nothing is paid.

    Raises ``UnsupportedParameterError`` (one line: model, parameter, what it accepts) and
    ``BadRequestError`` for a model that does not exist or does not output images.
    """
    from ai_influencer.openrouter.errors import BadRequestError

    if model in image_model_ids(client):
        return _images_route(client, model, options, references, reference_megapixels)
    known = {m.id: m for m in client.list_models()}
    if model not in known:
        raise BadRequestError(f"unknown OpenRouter model {model!r}; see `influencer models -m image`")
    if "image" not in known[model].output_modalities:
        raise BadRequestError(f"model {model!r} does not output images")
    where = " (chat route: not in the Image API's /images/models)"
    if options.n != 1:
        raise UnsupportedParameterError(f"--n {options.n}: {model} accepts n = 1{where}")
    for flag, value in (("--quality", options.quality), ("--format", options.output_format)):
        if value is not None:
            raise UnsupportedParameterError(f"{flag} {value}: {model} takes no {flag[2:]}{where}")
    if options.provider is not None:
        raise UnsupportedParameterError(f"--provider: {model} is served through chat, where this run sets no routing")
    price = known[model].pricing.get("image")
    try:
        per_image = float(price) if price not in (None, "", "0") else None
    except (TypeError, ValueError):
        per_image = None
    route = chat_route(model, options.size, per_image)
    notes = ["chat route: one image per call"]
    if options.seed is not None:
        notes.append("the chat route takes no seed: prompts are seeded, requests are not")
    from dataclasses import replace

    return replace(route, notes=tuple(notes))


def _images_route(
    client: OpenRouterClient,
    model: str,
    options: ImageOptions,
    references: int,
    reference_megapixels: Sequence[float],
) -> ImageRoute:
    from ai_influencer.openrouter.errors import BadRequestError

    endpoints = client.image_endpoints(model)
    eligible = _eligible(endpoints, options.provider)
    if not eligible:
        names = ", ".join(e.name for e in endpoints) or "none"
        raise BadRequestError(f"no endpoint of {model} matches the provider routing (endpoints: {names})")
    check = _Checker(model, eligible)
    notes: list[str] = []
    if options.n != 1:
        check.require("--n", "n", options.n, default_accepted="n = 1")
    params = _size_params(check, options.size, notes)
    wanted = (("--quality", "quality", options.quality), ("--format", "output_format", options.output_format))
    for flag, name, value in wanted:
        if value is not None:
            check.require(flag, name, value)
            params[name] = value
    max_refs: int | None = None
    if references:
        for e in eligible:
            if "input_references" not in e.supported_parameters:
                raise UnsupportedParameterError(
                    f"--ref ({references} photos): {model} takes no reference images (input_references){check.where(e)}"
                )
        limits = [e.supported_parameters["input_references"] for e in eligible]
        maxima = [int(c.max) for c in limits if c.type == "range" and c.max is not None]
        max_refs = min(maxima) if maxima else None
        if max_refs is not None and max_refs < references:
            notes.append(f"references: the first {max_refs} of {references} are sent (the endpoint's limit)")
    seed_range: tuple[int, int] | None = None
    if options.seed is not None:
        caps: list[Capability | None] = [e.supported_parameters.get("seed") for e in eligible]
        if all(c is not None for c in caps):
            low = max(int(c.min) if c is not None and c.type == "range" and c.min is not None else 0 for c in caps)
            high = min(
                int(c.max) if c is not None and c.type == "range" and c.max is not None else SEED_MAX for c in caps
            )
            seed_range = (low, high)
        else:
            notes.append(f"{model} takes no seed: prompts are seeded, requests are not")
    max_n = min(_most_n(e.supported_parameters.get("n")) for e in eligible)
    sent = min(references, max_refs) if max_refs is not None else references
    ref_mp = list(reference_megapixels)[:sent] if reference_megapixels else [megapixels(options.size)] * sent
    tier = str(params.get("resolution") or tier_for(options.size))
    out_mp = output_megapixels(params, options.size)
    prices = [_endpoint_price(e, out_mp, tier, ref_mp) for e in eligible]
    per_image: float | None = None
    if all(p[0] is not None for p in prices):
        per_image = max(p[0] for p in prices if p[0] is not None)
    per_request = max(p[1] for p in prices)
    if len(prices) == 1:
        lines = prices[0][2]
    else:
        lines = [f"{e.name}: {'; '.join(p[2])}" for e, p in zip(eligible, prices, strict=True)]
    if per_image is None:
        notes.append(f"{model} lists no per-image or per-megapixel output price: no estimate before the answers")
    return ImageRoute(
        kind="images",
        model=model,
        params=params,
        provider=options.provider.body() if options.provider else {},
        seed_range=seed_range,
        max_references=max_refs,
        max_n=max_n,
        per_image_usd=per_image,
        per_request_usd=per_request,
        price_lines=tuple(lines),
        endpoints=tuple(e.name for e in eligible),
        notes=tuple(notes),
    )
