"""Review and calibrate (issue 28): the user's verdicts on QC's images, and thresholds learned from them.

The public API the review page, the CLI and the flow call (docs/review.md):

* ``review_items`` / ``filter_items``: the latest QC's images, scores, verdicts, reasons, scene, borderline first;
* ``set_verdict`` / ``undo_verdict``: store or take back the user's verdict on one image;
* ``suggest`` / ``apply``: the calibration (current vs suggested ``minsim`` / ``minblur``) and storing it;
* ``effective_thresholds``: which thresholds a QC run uses (explicit > persona calibration > default).

QC itself calls only ``overrides.apply_overrides`` (its one hook). Nothing here imports ``vision.qc``, which
imports this package for that hook.
"""

from ai_influencer.review.calibration import Calibration, Fit, Label, Operating, apply, calibrate, suggest
from ai_influencer.review.listing import ReviewItem, filter_items, review_items
from ai_influencer.review.overrides import (
    CAUSES,
    REASON_KINDS,
    Judgement,
    OverrideError,
    OverrideStore,
    OverrideStoreError,
    apply_overrides,
    set_verdict,
    undo_verdict,
)
from ai_influencer.review.persona import EffectiveThresholds, PersonaSettingsError, Threshold, effective_thresholds

__all__ = [
    "CAUSES",
    "REASON_KINDS",
    "Calibration",
    "EffectiveThresholds",
    "Fit",
    "Judgement",
    "Label",
    "Operating",
    "OverrideError",
    "OverrideStore",
    "OverrideStoreError",
    "PersonaSettingsError",
    "ReviewItem",
    "Threshold",
    "apply",
    "apply_overrides",
    "calibrate",
    "effective_thresholds",
    "filter_items",
    "review_items",
    "set_verdict",
    "suggest",
    "undo_verdict",
]
