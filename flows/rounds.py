"""Generate-until-N-accepted: rounds of generation + QC until enough images pass or a cap is hit.

Round r composes prompts with seed ``seed + r`` (new prompt combinations, while a
re-run of the same round finds its images on disk and pays nothing). The budget
is shared by all rounds; each round's generate flow checks it before every paid
call, and the loop stops when it is spent. With ``downweight_failing`` the next
round samples from a copy of the prompt bank in which values that kept failing
QC have half their weight (data/text/prompt_bank.adjusted.yaml).
"""

from __future__ import annotations

from prefect import flow

from ai_influencer.settings import Settings
from flows.generate import generate_flow
from flows.params import GenerateParams, Paths, QCParams
from flows.stages import qc_flow
from tasks.stages import downweight_task


@flow(name="generate-until-accepted", log_prints=True)
def generate_until_flow(
    target: int = 40,
    generate: GenerateParams = GenerateParams(),
    qc: QCParams = QCParams(),
    paths: Paths = Paths(),
    max_rounds: int = 5,
    downweight_failing: bool = False,
) -> dict:
    s = Settings()
    generate, qc, paths = generate.resolve(s), qc.resolve(s), paths.resolve(s)
    ws = paths.workspace()
    rounds: list[dict] = []
    spent = 0.0
    accepted = 0
    bank = paths.prompt_bank
    stopped = "max_rounds"
    for r in range(max_rounds):
        budget = None if generate.budget_usd is None else round(generate.budget_usd - spent, 6)
        if budget is not None and budget <= 0:
            stopped = "budget"
            break
        g = generate_flow(
            generate.model_copy(update={"seed": generate.seed + r, "budget_usd": budget}),
            paths.model_copy(update={"prompt_bank": bank}),
        )
        spent = round(spent + g["spent_usd"], 6)
        q = qc_flow(qc, paths)
        accepted = q["accepted"]
        rounds.append({"round": r + 1, "generated": g["generated"], "spent_usd": g["spent_usd"], "accepted": accepted})
        print(f"round {r + 1}: {g['generated']} new images, {accepted}/{target} accepted, ${spent} spent")
        if accepted >= target:
            stopped = "target"
            break
        if g["stopped_by_budget"]:
            stopped = "budget"
            break
        if downweight_failing and r + 1 < max_rounds:
            adjusted = downweight_task(paths.prompt_bank, str(ws.synth), str(ws.qc_report), str(ws.adjusted_bank))
            bank = adjusted["prompt_bank"]
            for change in adjusted["changes"]:
                print(f"next round: {change}")
    return {"target": target, "accepted": accepted, "rounds": rounds, "spent_usd": spent, "stopped": stopped}
