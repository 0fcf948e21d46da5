"""Generate-until-N-accepted: generation + QC until enough images pass or a cap is hit.

Streamed (the default), QC checks each image as it arrives and dispatch stops the moment ``target``
images pass (``qc.stream.UntilAccepted``): at most the in-flight window is paid beyond the target, and
a round ends early instead of paying for the rest of its prompts. A new round starts only when a
round's prompts ran out before the target was met. Unstreamed, each round generates everything, then
runs QC over the folder, then decides.

Round r composes prompts with seed ``seed + r`` (new prompt combinations, while a re-run of the same
round finds its images on disk and pays nothing). The budget is shared by all rounds; each round's
generate flow checks it before every paid call, and the loop stops when it is spent. With
``downweight_failing`` the next round samples from a copy of the prompt bank in which values that
kept failing QC have half their weight (data/text/prompt_bank.adjusted.yaml).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from prefect import flow

from ai_influencer.dataset.workspace import Workspace
from ai_influencer.settings import Settings
from flows.generate import generate_flow
from flows.params import GenerateParams, Paths, QCParams
from flows.results import RoundRow, RoundsSummary
from flows.stages import qc_flow
from flows.streaming import Streamed, streamed_qc
from tasks.stages import downweight_task


@flow(name="generate-until-accepted", log_prints=True)
def generate_until_flow(
    target: int = 40,
    generate: GenerateParams = GenerateParams(),
    qc: QCParams = QCParams(),
    paths: Paths = Paths(),
    max_rounds: int = 5,
    downweight_failing: bool = False,
    streaming: bool = True,
) -> RoundsSummary:
    s = Settings()
    generate, qc, paths = generate.resolve(s), qc.resolve(s), paths.resolve(s)
    rounds = _Rounds(
        target=target, generate=generate, paths=paths, max_rounds=max_rounds, downweight=downweight_failing
    )
    if not streaming:
        return rounds.run(lambda: qc_flow(qc, paths).accepted)
    with streamed_qc(qc, paths, s, target=target) as box:
        summary = rounds.run(_round_count(box, downweight_failing))
    assert box.qc is not None
    summary.accepted, summary.qc = box.qc.accepted, box.qc  # the final verdicts, over the whole folder
    return summary


def _round_count(box: Streamed, write_report: bool) -> Callable[[], int]:
    """After a round: its images all checked, the images accepted so far."""

    def count() -> int:
        box.stream.wait_idle()
        if write_report:  # the down-weighting reads this round's verdicts
            box.stream.write_report()
        return box.stream.accepted()

    return count


@dataclass(frozen=True, kw_only=True)
class _Rounds:
    """The rounds of one run: each a generate subflow with its own seed and what is left of the budget."""

    target: int
    generate: GenerateParams
    paths: Paths
    max_rounds: int
    downweight: bool  # the next round samples from a bank whose failing values weigh half

    def run(self, accepted_after_round: Callable[[], int]) -> RoundsSummary:
        generate, paths, target = self.generate, self.paths, self.target
        ws: Workspace = paths.workspace()
        rounds: list[RoundRow] = []
        spent = 0.0
        accepted = 0
        bank = paths.prompt_bank
        stopped = "max_rounds"
        for r in range(self.max_rounds):
            budget = None if generate.budget_usd is None else round(generate.budget_usd - spent, 6)
            if budget is not None and budget <= 0:
                stopped = "budget"
                break
            g = generate_flow(
                generate.model_copy(update={"seed": _round_seed(generate.seed, r), "budget_usd": budget}),
                paths.model_copy(update={"prompt_bank": bank}),
            )
            spent = round(spent + g.spent_usd, 6)
            accepted = accepted_after_round()
            row = RoundRow(round=r + 1, generated=g.generated, spent_usd=g.spent_usd, accepted=accepted)
            if g.overshoot is not None:
                row.overshoot, row.not_sent_after_target = g.overshoot, g.not_sent_after_target
            rounds.append(row)
            print(f"round {r + 1}: {g.generated} new images, {accepted}/{target} accepted, ${spent} spent")
            if accepted >= target:
                stopped = "target"
                break
            if g.stopped_by_budget:
                stopped = "budget"
                break
            if self.downweight and r + 1 < self.max_rounds:
                adjusted = downweight_task(paths.prompt_bank, str(ws.synth), str(ws.qc_report), str(ws.adjusted_bank))
                bank = adjusted.prompt_bank
                for change in adjusted.changes:
                    print(f"next round: {change}")
        overshoot = sum(r.overshoot or 0 for r in rounds)
        return RoundsSummary(
            target=target, accepted=accepted, rounds=rounds, spent_usd=spent, stopped=stopped, overshoot=overshoot
        )


def _round_seed(seed: int | None, r: int) -> int | None:
    """Round r's seed: new prompt combinations each round; round 0 keeps the run's own (None: no request seeds)."""
    return seed if r == 0 else (seed or 0) + r
