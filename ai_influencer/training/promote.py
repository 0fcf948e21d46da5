"""Promote a newly trained LoRA to the live file only if it keeps the identity better.

The live file (``models/lora/influencer_lora.safetensors``) is what ComfyUI/A1111
users load; replacing it with a worse LoRA silently is the failure mode scheduled
retraining must never have. The candidate wins only with a strictly higher median
identity score (then p10) than the live LoRA *measured in the same evaluation*
(same prompts, same seeds); the previous live file is kept next to it.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from ai_influencer.io import atomic_write

Score = tuple[float | None, float | None]  # (median, p10) identity score


@dataclass
class Promotion:
    promoted: bool
    live: Path
    candidate: Path
    previous: Path | None
    reason: str


def _key(score: Score) -> tuple[float, float]:
    return (score[0] or 0.0, score[1] or 0.0)


def promote_if_better(candidate: Path, candidate_score: Score, live: Path, live_score: Score | None) -> Promotion:
    """``live_score`` must come from the same evaluation run as ``candidate_score`` (None: no live LoRA)."""
    if live.is_file() and live_score is not None and _key(candidate_score) <= _key(live_score):
        return Promotion(
            False,
            live,
            candidate,
            None,
            f"kept the live LoRA: candidate median/p10 {candidate_score} does not beat live {live_score}",
        )
    previous = None
    if live.is_file():
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
        previous = live.with_name(f"{live.stem}.prev-{stamp}{live.suffix}")
        shutil.copy2(live, previous)
    # atomic: readers see the old or the new file, never half of one
    atomic_write(live, lambda tmp: shutil.copyfile(candidate, tmp))
    why = "no live LoRA yet" if live_score is None else f"median/p10 {candidate_score} > {live_score}"
    return Promotion(True, live, candidate, previous, f"promoted {candidate.name}: {why}")
