"""Every stage's options: each default, bound and help text written once (docs/architecture.md).

One pydantic model per stage, at the bottom of the domain (it imports only pydantic and the settings), so
every layer can read it cheaply: the domain's functions take their defaults from it, the use cases take the
model, the Prefect parameter models (``flows/params.py``) subclass it, and the CLI, the GUI and the hub build
their options, fields and forms from its fields (``options.fields``). ``tests/test_contracts.py`` fails when a
default is written out anywhere else.
"""

from __future__ import annotations

from ai_influencer.options.augment import AugmentOptions
from ai_influencer.options.evaluate import EvaluateOptions, SampleOptions
from ai_influencer.options.generate import GenerateOptions
from ai_influencer.options.images import ImageOptions, ProviderRouting
from ai_influencer.options.plan import PlanOptions
from ai_influencer.options.prepare import PrepareOptions
from ai_influencer.options.qc import QCOptions
from ai_influencer.options.train import TrainOptions
from ai_influencer.options.video import VideoOptions

# stage -> its options model, in pipeline order (the hub's /api/options serves these)
STAGE_OPTIONS = {
    "prepare": PrepareOptions,
    "plan": PlanOptions,
    "generate": GenerateOptions,
    "qc": QCOptions,
    "augment": AugmentOptions,
    "train": TrainOptions,
    "evaluate": EvaluateOptions,
    "video": VideoOptions,
}

__all__ = [
    "STAGE_OPTIONS",
    "AugmentOptions",
    "EvaluateOptions",
    "GenerateOptions",
    "ImageOptions",
    "PlanOptions",
    "PrepareOptions",
    "ProviderRouting",
    "QCOptions",
    "SampleOptions",
    "TrainOptions",
    "VideoOptions",
]
