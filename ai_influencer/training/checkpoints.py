"""A training run's checkpoints on disk: which are complete, which to resume, which to keep.

Layout of one run (``models/lora/checkpoints/<name>/<run key>/``)::

    config.json                      the run's full configuration and data (written at each start)
    tensorboard/                     loss, learning rate, it/s (accelerate's TensorBoard tracker)
    step-000250/<name>.safetensors   the LoRA at that step (kohya format, what evaluation scores)
    step-000250/state/               accelerate save_state: LoRA weights (fp32), optimizer, scheduler,
                                     RNG of Python, NumPy, torch CPU and every CUDA device, step

``state/`` is written under a temporary name and renamed last, so its presence marks a
complete checkpoint: a run killed while saving leaves a folder without it, which is
neither resumed nor evaluated. Folders from before accelerate states (``state.pt``)
still count as complete LoRA files for evaluation but are not resumed.
"""

from __future__ import annotations

import logging
import re
import shutil
from collections.abc import Callable
from pathlib import Path

from ai_influencer.io import publish_dir

log = logging.getLogger(__name__)

STEP_DIR = re.compile(r"^step-(\d+)$")
STATE_DIR = "state"
LEGACY_STATE = "state.pt"


def step_folder(run: Path, step: int) -> Path:
    return run / f"step-{step:06d}"


def _steps(run: Path) -> list[tuple[int, Path]]:
    if not run.is_dir():
        return []
    return sorted((int(m.group(1)), p) for p in run.iterdir() if p.is_dir() and (m := STEP_DIR.match(p.name)))


def resumable(folder: Path) -> bool:
    return (folder / STATE_DIR).is_dir()


def complete(folder: Path) -> bool:
    return resumable(folder) or (folder / LEGACY_STATE).is_file()


def checkpoint_files(run: Path) -> list[Path]:
    """The LoRA file of every complete checkpoint in a run folder, oldest first."""
    return [f for _, p in _steps(run) if complete(p) for f in sorted(p.glob("*.safetensors"))]


def latest_checkpoint(run: Path) -> Path | None:
    """The newest checkpoint a run can continue from."""
    done = [p for _, p in _steps(run) if resumable(p)]
    return done[-1] if done else None


def write_state(folder: Path, save: Callable[[Path], object]) -> Path:
    """Run ``save(tmp_dir)`` (accelerate's save_state), then rename the folder to ``state``: the commit point."""
    final = folder / STATE_DIR
    tmp = folder / f".{STATE_DIR}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    save(tmp)
    return publish_dir(tmp, final)  # fsynced, then renamed; replaces a state of the same step saved again


def prune_checkpoints(run: Path, keep: int) -> list[Path]:
    """Delete all but the newest ``keep`` complete checkpoints, and unfinished ones older than those.

    A half-written folder newer than every complete one is left alone: it may belong to a
    save in progress.
    """
    steps = _steps(run)
    done = [p for _, p in steps if complete(p)]
    kept = set(done[-keep:]) if keep > 0 else set(done)
    newest = max((s for s, p in steps if p in kept), default=-1)
    removed = []
    for step, p in steps:
        if p in kept or (not complete(p) and step > newest):
            continue
        shutil.rmtree(p, ignore_errors=True)
        removed.append(p)
        log.info("removed old checkpoint %s (keeping the newest %d)", p, keep)
    return removed
