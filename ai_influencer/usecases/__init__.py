"""The use cases: one function per stage, what the CLI, the Prefect tasks, the hub and the GUI call.

Each composes domain functions with the rules every entry point must share (two references at
least, which face engine, how VLM captions are made, which trainer, evaluation into the identity
history) so that no interface and no task spells a rule of its own. No Prefect here: tasks add
retries, caching, limits and artifacts around these calls.

The stages are imported on first use (PEP 562): augment pulls in albumentations and PyTorch, qc
OpenCV and dlib, and importing them all made every ``influencer`` command, ``--help`` included,
take 2.5-4.9 s. ``usecases.prepare`` is the function, as before, even once the module of the
same name is imported (the import system would bind the module over it; ``_Package`` prevents that).
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ai_influencer.usecases.augment import AugmentOutcome, augment
    from ai_influencer.usecases.evaluate import EvaluationOutcome, evaluate
    from ai_influencer.usecases.generate import (
        GenerateOutcome,
        RequestPlan,
        check_budget,
        check_route,
        describe_plan,
        estimate,
        generate,
        make_images,
        plan_markdown,
        plan_requests,
        prepare_route,
        start_run,
    )
    from ai_influencer.usecases.plan import plan, write_plan
    from ai_influencer.usecases.prepare import (
        MIN_REFERENCES,
        NotEnoughReferencesError,
        PrepareOutcome,
        check_references,
        prepare,
    )
    from ai_influencer.usecases.qc import QCJob, qc, qc_stream
    from ai_influencer.usecases.report import Report, downweight, report
    from ai_influencer.usecases.train import train, train_config

# exported name -> the stage module that defines it
_EXPORTS: dict[str, str] = {
    "AugmentOutcome": "augment",
    "augment": "augment",
    "EvaluationOutcome": "evaluate",
    "evaluate": "evaluate",
    "GenerateOutcome": "generate",
    "RequestPlan": "generate",
    "generate": "generate",
    "plan_requests": "generate",
    "check_route": "generate",
    "describe_plan": "generate",
    "estimate": "generate",
    "make_images": "generate",
    "plan_markdown": "generate",
    "prepare_route": "generate",
    "check_budget": "generate",
    "start_run": "generate",
    "plan": "plan",
    "write_plan": "plan",
    "MIN_REFERENCES": "prepare",
    "NotEnoughReferencesError": "prepare",
    "PrepareOutcome": "prepare",
    "prepare": "prepare",
    "check_references": "prepare",
    "QCJob": "qc",
    "qc": "qc",
    "qc_stream": "qc",
    "Report": "report",
    "downweight": "report",
    "report": "report",
    "train": "train",
    "train_config": "train",
}

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
    "check_budget",
    "check_references",
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
    "start_run",
    "train",
    "train_config",
    "write_plan",
]


class _Package(types.ModuleType):
    """This package, with names resolved on first use and its functions never shadowed by their modules."""

    def __getattr__(self, name: str) -> Any:
        stage = _EXPORTS.get(name)
        if stage is None:
            raise AttributeError(f"module {self.__name__!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{self.__name__}.{stage}"), name)
        super().__setattr__(name, value)
        return value

    def __setattr__(self, name: str, value: Any) -> None:
        # The import system binds a loaded submodule on its package; here the package's name for
        # ``prepare`` is the function ``prepare``, not the module (as when everything was eager).
        if isinstance(value, types.ModuleType) and value.__name__ == f"{self.__name__}.{name}" and name in _EXPORTS:
            value = getattr(value, name)
        super().__setattr__(name, value)

    def __dir__(self) -> list[str]:
        return sorted({*super().__dir__(), *_EXPORTS})


sys.modules[__name__].__class__ = _Package
