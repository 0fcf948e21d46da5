"""Identity evaluation of a LoRA: render K prompts of the prompt bank, score faces against the references.

The score is the same calibrated identity score QC uses (same engine, same
reference centroid), so "median 0.52" means the same thing in the QC report and
here. Images without a detectable face count as failures (score 0 in the p10 /
median), because a LoRA that stops drawing faces has not kept the identity.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ai_influencer.dataset.contact_sheet import Tile, render_contact_sheet
from ai_influencer.imaging import list_images
from ai_influencer.io import atomic_write_bytes, atomic_write_json
from ai_influencer.options.evaluate import EVALUATE_DEFAULTS
from ai_influencer.prompt_bank import PromptBank, compose_prompts
from ai_influencer.qc.analysis import analyze
from ai_influencer.qc.decision import reference_centroid
from ai_influencer.vision.faces import FaceEngine


@dataclass
class ScoredImage:
    file: str
    prompt: str
    faces: int
    score: float | None


@dataclass
class Evaluation:
    lora: str
    images: list[ScoredImage] = field(default_factory=list)
    references: int = 0

    @property
    def scores(self) -> list[float]:
        """Per-image scores with no-face images as 0.0 (see module doc)."""
        return [i.score if i.score is not None else 0.0 for i in self.images]

    @property
    def median(self) -> float | None:
        return float(np.median(self.scores)) if self.images else None

    @property
    def p10(self) -> float | None:
        return float(np.percentile(self.scores, 10)) if self.images else None

    @property
    def face_rate(self) -> float:
        return sum(i.faces > 0 for i in self.images) / len(self.images) if self.images else 0.0

    def summary(self) -> dict:
        return {
            "lora": self.lora,
            "n": len(self.images),
            "references": self.references,
            "median": self.median,
            "p10": self.p10,
            "face_rate": self.face_rate,
            "images": [asdict(i) for i in self.images],
        }


def eval_prompts(bank: PromptBank, k: int, seed: int = 7) -> list[str]:
    """K prompts from the bank, spread over its scenes (the same ones for every checkpoint)."""
    per_scene = max(1, -(-k // len(bank.scenes)))
    specs = compose_prompts(bank, per_scene, seed)
    # round-robin over scenes so a small K still covers them
    by_scene: dict[str, list[str]] = {}
    for s in specs:
        by_scene.setdefault(s.scene, []).append(s.prompt)
    ordered = [p for group in zip(*by_scene.values(), strict=False) for p in group]
    return ordered[:k]


def score_images(
    engine: FaceEngine, references: Sequence[Path], images: Sequence[Path], prompts: Sequence[str], lora: str
) -> Evaluation:
    refs = [analyze(engine, p) for p in references]
    centroid, n_refs = reference_centroid(engine, refs)
    ev = Evaluation(lora=lora, references=n_refs)
    for path, prompt in zip(images, prompts, strict=True):
        a = analyze(engine, path)
        score = engine.identity_score(a.embedding, centroid) if a.embedding is not None else None
        ev.images.append(ScoredImage(path.name, prompt, a.faces, None if score is None else round(score, 4)))
    return ev


def write_report(ev: Evaluation, out_dir: Path, image_dir: Path) -> dict[str, Path]:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["file", "faces", "score", "prompt"])
    for i in ev.images:
        w.writerow([i.file, i.faces, "" if i.score is None else f"{i.score:.4f}", i.prompt])
    report = atomic_write_bytes(out_dir / "identity_report.csv", buf.getvalue().encode())
    summary = atomic_write_json(out_dir / "identity_summary.json", ev.summary())
    tiles = [
        Tile(image_dir / i.file, f"{i.score:.2f}" if i.score is not None else "no face", (i.score or 0) >= 0.34)
        for i in ev.images
    ]
    med = "n/a" if ev.median is None else f"{ev.median:.3f}"
    sheet = render_contact_sheet([(f"{ev.lora}: median {med}", tiles)], out_dir / "contact_sheet.png")
    return {"report": report, "summary": summary, "contact_sheet": sheet}


def reference_images(folder: Path) -> list[Path]:
    refs = list_images(folder)
    if not refs:
        raise ValueError(f"no reference photos in {folder} (run the prepare stage first)")
    return refs


def report_dir(out_dir: Path, lora: Path) -> Path:
    """Where one LoRA's evaluation goes: named by its checkpoint step, or by the file for a final LoRA."""
    return out_dir / (lora.parent.name if lora.parent.name.startswith("step-") else lora.stem)


@dataclass
class CheckpointChoice:
    best: Path
    evaluations: list[tuple[Path, Evaluation]]

    def rows(self) -> list[dict]:
        """One summary row per evaluated LoRA (for tables, artifacts and checkpoints.json)."""
        return [
            {"lora": str(c), "median": e.median, "p10": e.p10, "face_rate": e.face_rate, "best": c == self.best}
            for c, e in self.evaluations
        ]


def ranking(row: dict) -> tuple[float, float, float]:
    """The one "which LoRA is best" rule: highest median identity, then p10, then face rate.

    Takes a ``CheckpointChoice.rows()`` row, so flows that only have the rows (retraining picks
    among a subset of what was evaluated) rank exactly like ``pick_best``.
    """
    return (row.get("median") or 0.0, row.get("p10") or 0.0, row.get("face_rate") or 0.0)


def pick_best(
    candidates: Sequence[Path], evaluate_one: Callable[[Path], Evaluation], out_dir: Path
) -> CheckpointChoice:
    """Evaluate every candidate LoRA file; the best by ``ranking``."""
    if not candidates:
        raise ValueError("no LoRA files to evaluate")
    results = [(c, evaluate_one(c)) for c in candidates]
    best = max(results, key=lambda r: ranking({"median": r[1].median, "p10": r[1].p10, "face_rate": r[1].face_rate}))[0]
    choice = CheckpointChoice(best, results)
    atomic_write_json(out_dir / "checkpoints.json", {"best": str(best), "candidates": choice.rows()})
    return choice


def evaluate_loras(
    loras: Sequence[Path],
    *,
    base: Path,
    config_dir: Path | None,
    bank: PromptBank,
    refs_dir: Path,
    out_dir: Path,
    engine: FaceEngine,
    k: int = 8,
    params: object | None = None,
    device: str | None = None,
) -> CheckpointChoice:
    """Render K bank prompts with each LoRA on the local SDXL, score them, write a report per LoRA."""
    from ai_influencer.training.inference import LocalGenerator, LocalGenParams, save_images

    gp = params if isinstance(params, LocalGenParams) else LocalGenParams()
    refs = reference_images(refs_dir)
    prompts = eval_prompts(bank, k)
    gen = LocalGenerator(base, config_dir, device=device)

    def one(lora: Path) -> Evaluation:
        folder = report_dir(out_dir, lora)
        gen.use_lora(lora, gp.strength)
        images = save_images(gen.generate(prompts, gp), folder / "images", "sample")
        ev = score_images(engine, refs, images, prompts, str(lora))
        write_report(ev, folder, folder / "images")
        return ev

    return pick_best(list(loras), one, out_dir)


def default_candidates(
    lora_dir: Path, name: str = "influencer_lora", checkpoints: bool = EVALUATE_DEFAULTS.checkpoints
) -> list[Path]:
    """The final LoRA plus (optionally) every checkpoint of its newest training run."""
    from ai_influencer.training.checkpoints import checkpoint_files

    final = lora_dir / f"{name}.safetensors"
    if not final.is_file():
        raise FileNotFoundError(f"{final} not found: train a LoRA first (influencer train)")
    found = [final]
    if checkpoints:
        runs = sorted(
            (d for d in (lora_dir / "checkpoints" / name).glob("*") if d.is_dir()), key=lambda d: d.stat().st_mtime
        )
        if runs:
            found = checkpoint_files(runs[-1]) + found
    return found
