"""The QC stage's options (manual step 4: ``--minsim --minblur``).

``minsim`` 0.34 is the manual's default and the point the calibrated identity score is built around: the
same person on every face backend (``vision.faces``, docs/identity-calibration.md). The decision's own object
is ``qc.decision.QCThresholds``; ``QCThresholds.from_options`` packs these options into it, once.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from ai_influencer.options.fields import BACKEND_HELP


class QCOptions(BaseModel):
    minsim: float = Field(
        default=0.34,
        ge=0,
        le=1,
        description="Minimum identity score, 0..1; 0.34 = same person on either backend "
        "(docs/identity-calibration.md).",
    )
    minblur: float = Field(
        default=80.0, ge=0, description="Minimum face sharpness, >= 0; 80 = the sharp/blurred line at any resolution."
    )
    max_faces: int = Field(default=1, ge=1, description="Reject images with more faces.")
    backend: str | None = Field(default=None, description=BACKEND_HELP)


QC_DEFAULTS = QCOptions()
