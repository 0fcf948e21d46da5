"""Use case: generate images through OpenRouter (the manual's openrouter_images.py).

``plan_requests`` (what the run owes, by slot, from the disk alone), ``prepare_route`` (the route,
every parameter checked, the price lines: free calls only) and ``check_budget`` (a budget needs a price)
are shared by the CLI and the Prefect flow (``start_run``: both before the first paid request); both then
run the same engine (``dispatch``): the CLI with this process's slots (``generate``), the flow with slots
shared through the Prefect server (``flows/generate.py``, which reaches the engine through this module
only). ``describe_plan`` is what both show before the first paid request.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from ai_influencer.adaptive_pacing import AdaptiveRate, PacingStats
from ai_influencer.costs import CostEstimate, CostLedger
from ai_influencer.dataset.manifest import rebuild_manifest
from ai_influencer.generation.dispatch import Dispatched, dispatch
from ai_influencer.generation.engine import (
    GenerationOutcome,
    ImageRequest,
    Slot,
    find_existing,
    generate_batch,
    group_requests,
    iter_reference_images,
    plan_slots,
    preflight,
    scan_slots,
    slot_done,
)
from ai_influencer.io import file_sha256
from ai_influencer.openrouter import OpenRouterClient
from ai_influencer.openrouter.capabilities import IMAGE_OPTION_DEFAULTS, ImageOptions, ImageRoute, resolve_route
from ai_influencer.openrouter.types import ImageResult
from ai_influencer.options.generate import GenerateOptions
from ai_influencer.pacing import (
    StopFlag,
    StopRequested,
    drain_on_signals,
    rate_limit_capacity,
)
from ai_influencer.prompt_bank import PromptSpec, compose_prompts, load_prompt_bank


@dataclass
class RequestPlan:
    """A run's slots and the requests still owed. Counts are images; ``todo`` are requests."""

    model: str
    options: ImageOptions
    slots: list[Slot]  # every slot the prompt bank composes for this run
    todo: list[ImageRequest]  # requests for the slots not on disk yet (each asks for its owed slots)
    references: list[Path] = field(default_factory=list)
    kept: int = 0  # slots filled by an image made with another reference set (kept; --regenerate remakes them)
    regenerating: int = 0  # slots whose image from another reference set is being remade (--regenerate)
    left_out: int = 0  # owed slots not asked for in this run (--limit)

    @property
    def images_todo(self) -> int:
        return sum(r.n for r in self.todo)

    @property
    def already_done(self) -> int:
        """Slots with an image on disk (this reference set or, kept, an earlier one)."""
        return len(self.slots) - self.images_todo - self.left_out

    @property
    def requests(self) -> list[ImageRequest]:
        """The requests this run will send (``todo``; kept for older callers)."""
        return self.todo

    def summary(self) -> str:
        """One line: slots, done, owed, requests; never a count of more than there is."""
        kept = f" ({self.kept} made with an earlier reference set, kept)" if self.kept else ""
        redo = f", {self.regenerating} to regenerate with the current references" if self.regenerating else ""
        limit = f", {self.left_out} left for a later run (--limit)" if self.left_out else ""
        return (
            f"{len(self.slots)} images planned, {self.already_done} already done{kept}, {self.images_todo} to "
            f"generate in {len(self.todo)} request(s) of up to {self.options.n}{redo}{limit}"
        )


def plan_requests(
    prompt_bank: Path,
    out_dir: Path,
    stage: GenerateOptions,
    *,
    references: Path | None = None,
    limit: int | None = None,
) -> RequestPlan:
    """The slots of a run and the requests for those still owed, from the disk alone (nothing is sent).

    ``stage``: the generate options (``options.generate``), its model resolved. A slot is done when an
    image of it is on disk, whole (its content hash checked): made with this reference set, or with an
    earlier one (kept, unless ``stage.regenerate``). ``limit`` caps the images asked for in this run.
    """
    if not stage.model:
        raise ValueError("model: no image model given (set it, or the setting image_model)")
    model, per_scene, regenerate, options = stage.model, stage.per_scene, stage.regenerate, stage.image_options()
    refs = list(iter_reference_images(references)) if references is not None else []
    if references is not None and not refs:
        raise ValueError(f"{references}: no reference images found")
    digests = tuple(file_sha256(p) for p in refs)
    bank = load_prompt_bank(prompt_bank)
    specs = compose_prompts(bank, per_scene, options.seed or 0)
    identity = options.identity()
    planned = plan_slots(
        specs, model, options.size, n=options.n, seed=options.seed, options=identity, reference_digests=digests
    )
    on_disk = scan_slots(out_dir) if out_dir.is_dir() else {}
    owed: list[tuple[Slot, PromptSpec]] = []
    kept = regenerating = 0
    for slot, group in planned:
        found = on_disk.get(slot.key, [])
        if any(r.key == slot.file_key for r in found):
            continue  # this reference set's image is on disk
        if find_existing(out_dir, slot.file_key) is not None:
            single = group_requests([(slot, group)], model, options.size, seed=options.seed, options=identity)
            if slot_done(single[0], slot, out_dir) is not None:
                continue  # its image without a sidecar (a kill between the two writes): recovered, not paid again
        others = [r for r in found if r.key != slot.file_key]
        if others and not regenerate:
            kept += 1
            continue
        if others:
            regenerating += 1
            slot = replace(slot, replaces=tuple(r.file for r in others))
        owed.append((slot, group))
    left_out = 0
    if limit is not None and len(owed) > limit:
        left_out, owed = len(owed) - limit, owed[:limit]
    todo = group_requests(owed, model, options.size, seed=options.seed, options=identity, reference_digests=digests)
    return RequestPlan(
        model, options, [s for s, _ in planned], todo, references=refs, kept=kept, regenerating=regenerating,
        left_out=left_out,
    )  # fmt: skip


def prepare_route(
    client: OpenRouterClient, plan: RequestPlan, *, estimate_usd: float | None = None, check_key: bool = True
) -> ImageRoute:
    """The route of the plan's requests with every parameter checked and its price lines: free calls only.

    ``UnsupportedParameterError`` (one line) before anything is paid; see ``generation.preflight``.
    """
    return preflight(
        client, plan.model, plan.options, references=plan.references, estimate_usd=estimate_usd, check_key=check_key
    )


def check_budget(plan: RequestPlan, route: ImageRoute, budget_usd: float | None, estimate_usd: float | None) -> None:
    """A budget needs a price before the first paid request: the endpoint's price lines, the model's listed
    one, or ``estimate_usd`` (per image); otherwise nothing could stop the spend at the budget."""
    if budget_usd is not None and plan.todo and route.per_image_usd is None and not estimate_usd:
        raise ValueError(
            f"a budget needs a price: {plan.model} lists none; give an estimate per image "
            "(--estimate-usd, estimate_usd)"
        )


def start_run(
    client: OpenRouterClient, plan: RequestPlan, *, budget_usd: float | None, estimate_usd: float | None
) -> ImageRoute | None:
    """What every run checks before its first paid request, with free calls only: the route with every
    parameter checked and its price lines (``prepare_route``), and the budget's price (``check_budget``).
    None when the plan owes nothing."""
    if not plan.todo:
        return None
    route = prepare_route(client, plan, estimate_usd=estimate_usd)
    check_budget(plan, route, budget_usd, estimate_usd)
    return route


def check_route(client: OpenRouterClient, model: str, options: ImageOptions, *, references: int = 0) -> ImageRoute:
    """Every option a run would send checked against the image endpoint, before a run pays for anything."""
    return resolve_route(client, model, options, references=references)


def estimate(plan: RequestPlan, route: ImageRoute) -> CostEstimate:
    """What the plan's requests will cost by the route's price lines (the budget's price before answers)."""
    costs = [route.estimate(r.n) for r in plan.todo]
    total = None if any(c is None for c in costs) else round(sum(c for c in costs if c is not None), 6)
    return CostEstimate(len(plan.todo), plan.images_todo, total, route.price_lines)


def describe_plan(plan: RequestPlan, route: ImageRoute) -> list[str]:
    """The plan as the CLI prints it and the flow's artifact shows it, before the first paid request."""
    lines = [plan.summary(), f"route: {route.describe()}"]
    sent = {k: v for k, v in route.params.items()}
    if route.provider:
        sent["provider"] = route.provider
    if route.seed_range is not None and plan.options.seed is not None:
        sent["seed"] = f"per slot from --seed {plan.options.seed}"
    if sent:
        lines.append("sends: " + ", ".join(f"{k}={v}" for k, v in sent.items()))
    if plan.references:
        count = (
            len(plan.references) if route.max_references is None else min(route.max_references, len(plan.references))
        )
        lines.append(f"references: {count} of {len(plan.references)} photos sent with each request")
    lines += [f"note: {n}" for n in route.notes]
    lines.append("cost: " + estimate(plan, route).describe())
    return lines


def plan_markdown(plan: RequestPlan, route: ImageRoute, budget_usd: float | None = None) -> str:
    est = estimate(plan, route)
    rows = [
        "| | |",
        "|---|---|",
        f"| images planned | {len(plan.slots)} |",
        f"| already on disk | {plan.already_done} (kept from an earlier reference set: {plan.kept}) |",
        f"| to generate | {plan.images_todo} images in {len(plan.todo)} requests (n up to {plan.options.n}) |",
        f"| route | {route.describe()} |",
        f"| parameters sent | {', '.join(f'`{k}={v}`' for k, v in route.params.items()) or 'none'} |",
        f"| price lines | {'<br>'.join(route.price_lines) or 'none listed'} |",
        f"| estimate | {'n/a' if est.total_usd is None else f'${est.total_usd:.4f}'} |",
        f"| budget | {'none' if budget_usd is None else f'${budget_usd:.4f}'} |",
    ]
    notes = [f"- {n}" for n in route.notes]
    return "\n".join(["# Generation plan", "", *rows, "", *notes]).rstrip() + "\n"


@dataclass
class GenerateOutcome:
    outcomes: list[GenerationOutcome]
    money: dict[str, object]
    pacing: PacingStats
    estimate: CostEstimate | None = None

    def count(self, status: str) -> int:
        return sum(o.status == status for o in self.outcomes)

    def images(self, status: str = "generated") -> int:
        """Images of the requests with ``status``: paid now for "generated", owed for the others."""
        if status == "generated":
            return sum(o.new for o in self.outcomes if o.status == status)
        return sum(o.request.n for o in self.outcomes if o.status == status)

    @property
    def short(self) -> int:
        return sum(o.short for o in self.outcomes)

    @property
    def estimated_paid_usd(self) -> float | None:
        """What the price lines said the images paid for in this run would cost (beside the spend)."""
        values = [r.estimate_usd for o in self.outcomes for r in o.records if r.file in o.fresh]
        if not values or any(v is None for v in values):
            return None
        return round(sum(v for v in values if v is not None), 6)


def generate(
    client: OpenRouterClient,
    plan: RequestPlan,
    out_dir: Path,
    *,
    rate_per_s: float | None,
    concurrency: int = 4,
    budget_usd: float | None = None,
    estimate_usd: float | None = None,
    stop: StopFlag | None = None,
    on_done: Callable[[GenerationOutcome], None] | None = None,
    ledger: CostLedger | None = None,
    route: ImageRoute | None = None,
) -> GenerateOutcome:
    """Generate the plan's missing images in this process: free preflight, budget, adaptive pacing.

    ``rate_per_s`` is the ceiling (None: no ceiling, adaptive only), in requests. A budget needs a
    price: the endpoint's price lines, the model's listed one, or ``estimate_usd`` (per image).
    ``route``: from ``prepare_route`` (resolved here when None).
    """
    if route is None:
        route = start_run(client, plan, budget_usd=budget_usd, estimate_usd=estimate_usd)
    elif plan.todo:
        check_budget(plan, route, budget_usd, estimate_usd)
    ledger = ledger or CostLedger(budget_usd=budget_usd, estimate_usd=estimate_usd)
    pacer = AdaptiveRate(rate_per_s, stop=stop)
    outcomes = generate_batch(
        client,
        plan.todo,
        out_dir,
        route=route,
        references=plan.references,
        concurrency=concurrency,
        pacer=pacer,
        ledger=ledger,
        stop=stop,
        on_done=on_done,
    )
    return GenerateOutcome(outcomes, ledger.summary(), pacer.finish(), estimate(plan, route) if route else None)


def make_images(
    client: OpenRouterClient,
    model: str,
    prompt: str,
    *,
    options: ImageOptions = IMAGE_OPTION_DEFAULTS,
    negative_prompt: str | None = None,
) -> tuple[ImageResult, ImageRoute]:
    """One request outside a run (the hub's /api/generate/image): the same route choice and checks."""
    route = resolve_route(client, model, options)
    if route.kind == "images":
        result = client.generate_images(
            model, prompt, n=options.n, negative_prompt=negative_prompt, params=route.params,
            seed=route.seed_for(options.seed), provider=route.provider or None,
        )  # fmt: skip
    else:
        result = client.generate_image(
            model, prompt, negative_prompt=negative_prompt, aspect_ratio=route.params.get("aspect_ratio")
        )
    return result, route


# The use case, and what the flow runs the engine with (flows reach the domain through the use cases).
__all__ = [
    "AdaptiveRate",
    "CostLedger",
    "Dispatched",
    "GenerateOutcome",
    "ImageRequest",
    "ImageRoute",
    "PacingStats",
    "RequestPlan",
    "StopRequested",
    "check_budget",
    "check_route",
    "describe_plan",
    "dispatch",
    "drain_on_signals",
    "estimate",
    "generate",
    "iter_reference_images",
    "make_images",
    "plan_markdown",
    "plan_requests",
    "prepare_route",
    "rate_limit_capacity",
    "rebuild_manifest",
    "slot_done",
    "start_run",
]
