"""/api/options: every stage's options as forms show them (default, bounds, help), from the options models.

The hub's pages fill their form fields from here, so no page writes a default or a bound of its own. Open like
the pages themselves: the defaults and help texts are the code's, not this machine's configuration.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from ai_influencer.options import STAGE_OPTIONS
from ai_influencer.options.fields import form

router = APIRouter(tags=["hub"])
OPTIONS_PATH = "/api/options"


@router.get(OPTIONS_PATH)
def options() -> dict[str, dict[str, dict[str, Any]]]:
    """stage -> option -> {default, minimum, maximum, help}."""
    return {stage: form(model) for stage, model in STAGE_OPTIONS.items()}
