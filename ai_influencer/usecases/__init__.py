"""The use cases: one function per stage, what the CLI, the Prefect tasks, the hub and the GUI call.

Each composes domain functions with the rules every entry point must share (two references at
least, which face engine, how VLM captions are made, which trainer, evaluation into the identity
history) so that no interface and no task spells a rule of its own. No Prefect here: tasks add
retries, caching, limits and artifacts around these calls.
"""

from ai_influencer.usecases.augment import AugmentOutcome, augment
from ai_influencer.usecases.evaluate import EvaluationOutcome, evaluate
from ai_influencer.usecases.generate import (
    GenerateOutcome,
    RequestPlan,
    check_route,
    describe_plan,
    estimate,
    generate,
    make_images,
    plan_markdown,
    plan_requests,
    prepare_route,
)
from ai_influencer.usecases.plan import plan, write_plan
from ai_influencer.usecases.prepare import MIN_REFERENCES, NotEnoughReferencesError, PrepareOutcome, prepare
from ai_influencer.usecases.qc import QCJob, qc, qc_stream
from ai_influencer.usecases.report import Report, downweight, report
from ai_influencer.usecases.train import train, train_config

__all__ = [
    "MIN_REFERENCES",
    "AugmentOutcome",
    "EvaluationOutcome",
    "GenerateOutcome",
    "NotEnoughReferencesError",
    "PrepareOutcome",
    "QCJob",
    "Report",
    "RequestPlan",
    "augment",
    "check_route",
    "describe_plan",
    "downweight",
    "estimate",
    "evaluate",
    "generate",
    "make_images",
    "plan",
    "plan_markdown",
    "plan_requests",
    "prepare",
    "prepare_route",
    "qc",
    "qc_stream",
    "report",
    "train",
    "train_config",
    "write_plan",
]
