"""What a training run returns; filled in by the session (checkpoints, samples) and the trainer's loop."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class TrainResult:
    output: Path
    steps: int
    resumed_from: int
    run_dir: Path | None = None
    losses: list[float] = field(default_factory=list)
    checkpoints: list[Path] = field(default_factory=list)
    samples: list[Path] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0
