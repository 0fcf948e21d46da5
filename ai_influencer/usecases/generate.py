"""Use case: generate images through OpenRouter (the manual's openrouter_images.py).

``plan_requests`` is shared by the CLI and the Prefect flow; both then run the same engine
(``ai_influencer.dispatch.dispatch``): the CLI with this process's slots (``generate``), the
flow with slots shared through the Prefect server (``flows/generate.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ai_influencer.adaptive_pacing import AdaptiveRate, PacingStats
from ai_influencer.costs import CostLedger
from ai_influencer.generation import (
    GenerationOutcome,
    ImageRequest,
    already_done,
    build_requests,
    generate_batch,
    iter_reference_images,
    preflight,
)
from ai_influencer.openrouter import OpenRouterClient
from ai_influencer.pacing import StopFlag
from ai_influencer.prompt_bank import compose_prompts, load_prompt_bank


@dataclass
class RequestPlan:
    requests: list[ImageRequest]  # every image the prompt bank composes for this run
    todo: list[ImageRequest]  # the ones not on disk yet
    references: list[Path] = field(default_factory=list)

    @property
    def already_done(self) -> int:
        return len(self.requests) - len(self.todo)


def plan_requests(
    prompt_bank: Path,
    out_dir: Path,
    *,
    model: str,
    per_scene: int,
    size: str = "1024x1024",
    seed: int = 0,
    references: Path | None = None,
    limit: int | None = None,
) -> RequestPlan:
    """The requests of a run and which of them still need paying for (content-addressed files)."""
    refs = list(iter_reference_images(references)) if references is not None else []
    if references is not None and not refs:
        raise ValueError(f"{references}: no reference images found")
    bank = load_prompt_bank(prompt_bank)
    requests = build_requests(compose_prompts(bank, per_scene, seed), model, size, refs)
    todo = [r for r in requests if already_done(r, out_dir) is None]
    return RequestPlan(requests, todo if limit is None else todo[:limit], refs)


@dataclass
class GenerateOutcome:
    outcomes: list[GenerationOutcome]
    money: dict[str, object]
    pacing: PacingStats

    def count(self, status: str) -> int:
        return sum(o.status == status for o in self.outcomes)


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
) -> GenerateOutcome:
    """Generate the plan's missing images in this process: free preflight, budget, adaptive pacing.

    ``rate_per_s`` is the ceiling (None: no ceiling, adaptive only). A budget needs a price: the
    model's listed one or ``estimate_usd``.
    """
    estimate = preflight(client, plan.requests[0].model, estimate_usd) if plan.todo else estimate_usd
    if budget_usd is not None and estimate is None and plan.todo:
        raise ValueError(f"a budget needs a price: {plan.requests[0].model} lists none; give an estimate per image")
    ledger = ledger or CostLedger(budget_usd=budget_usd, estimate_usd=estimate)
    pacer = AdaptiveRate(rate_per_s, stop=stop)
    outcomes = generate_batch(
        client,
        plan.todo,
        out_dir,
        references=plan.references,
        concurrency=concurrency,
        pacer=pacer,
        ledger=ledger,
        stop=stop,
        on_done=on_done,
    )
    return GenerateOutcome(outcomes, ledger.summary(), pacer.finish())
