"""Identity QC (manual step 4: ``--minsim --minblur``).

Two separate steps, so a streamed run (images checked as they arrive) and a
batch run reach the same verdicts:

1. ``qc.analysis.analyze``: everything measured on one image alone (faces, the
   largest face's embedding, sharpness, detail, perceptual and pixel hashes,
   file compression). Runs in worker processes, each holding its own face engine.
2. ``qc.decision.decide``: a pure function of the reference analyses, the
   candidate analyses and the thresholds (the rule itself is described there).
   It sorts its input, so the verdicts do not depend on the order images
   arrived in.

``qc.report`` holds the rows and ``qc_report.csv``; ``qc.pool`` runs the analyses in worker processes
and caches them; ``qc.stream`` checks images as they arrive. This module runs the whole stage over two
folders (``run_qc``) and publishes its verdicts (``publish``). The user's verdicts (``review``, a level
above) reach QC through one hook, ``overrides`` (a ``qc.report.VerdictOverrides``), which the use case
passes in: QC never imports the review package.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

from ai_influencer.dataset.contact_sheet import Tile, render_contact_sheet
from ai_influencer.dataset.manifest import sidecar_path
from ai_influencer.dataset.workspace import REPORT_NAME
from ai_influencer.imaging import DEFAULT_MAX_PIXELS, list_images
from ai_influencer.io import atomic_write_bytes
from ai_influencer.qc.analysis import Analysis, EngineSpec, ProgressCallback
from ai_influencer.qc.decision import QCThresholds, decide
from ai_influencer.qc.pool import AnalysisCache, analyze_many
from ai_influencer.qc.report import QCRow, VerdictOverrides, mark_automatic, tile_label, write_report
from ai_influencer.vision.faces import FaceEngine, Scorer, scorer_for

SHEET_NAME = "contact_sheet.png"  # in a reports/ subfolder so no stage ever trains on it
REPORTS_DIR = "reports"


@dataclass
class QCResult:
    rows: list[QCRow]
    report: Path
    contact_sheet: Path
    accepted: list[Path] = field(default_factory=list)
    references_used: int = 0

    @property
    def counts(self) -> dict[str, int]:
        out = {"accepted": 0, "rejected": 0, "error": 0}
        for r in self.rows:
            out[r.verdict] += 1
        return out


def run_qc(
    ref_dir: Path,
    cand_dir: Path,
    out_dir: Path,
    *,
    engine: FaceEngine | None = None,
    spec: EngineSpec | None = None,
    thresholds: QCThresholds | None = None,
    workers: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    on_progress: ProgressCallback | None = None,
    cache_dir: Path | None = None,
    legacy: bool = False,
    overrides: VerdictOverrides | None = None,
) -> QCResult:
    """Score, filter and dedupe ``cand_dir`` against ``ref_dir``; copy the approved to ``out_dir``.

    With ``cache_dir`` every analysis is stored by the image's content (``qc.pool.AnalysisCache``):
    images checked before, by this stage or by a streamed QC, are not analysed again. ``overrides``: the
    user's verdicts (``review.overrides``), which win over QC's own. ``legacy``: release 0.1's QC
    (analysis and rules), the baseline of ``bench/qc.py``; nothing else uses it.
    """
    th = thresholds or QCThresholds()  # checked when it was made: a typo like --minsim 34 fails before any work
    if legacy:
        spec = replace(spec or EngineSpec(), legacy=True)
    spec, scorer = engine_parts(engine, spec)
    workers = default_workers() if workers is None else workers
    ref_paths, cand_paths = list_images(ref_dir), list_images(cand_dir)
    cache = None if legacy else analysis_cache(cache_dir, engine, spec, max_pixels)
    # References and candidates go through one pool; the references first, so that the candidates' cheap
    # checks (copies of a reference among them) can spare the descriptor.
    everything = analyze_many(
        ref_paths + cand_paths,
        engine=engine,
        spec=spec,
        workers=workers,
        max_pixels=max_pixels,
        on_progress=on_progress,
        cache=cache,
        references=len(ref_paths),
        gate_for=None if legacy else (lambda refs: th.gate(refs)),
    )
    refs, analyses = everything[: len(ref_paths)], everything[len(ref_paths) :]
    return publish(refs, analyses, cand_dir, out_dir, scorer, th, overrides, legacy=legacy)


def default_workers() -> int:
    """One QC worker per CPU this process may run on (its affinity mask or cgroup CPU set, not the host's
    count: a container limited to 2 of 64 CPUs gets 2)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


def engine_parts(engine: FaceEngine | None, spec: EngineSpec | None) -> tuple[EngineSpec | None, Scorer]:
    """The worker recipe (None when the caller's engine object is used in-process) and the scorer."""
    if engine is not None:
        return None, engine
    spec = spec or EngineSpec()
    # Scoring is pure numpy: the parent needs no loaded models when workers do the detection.
    return spec, scorer_for(spec.resolved_backend())


def analysis_cache(
    cache_dir: Path | None, engine: FaceEngine | None, spec: EngineSpec | None, max_pixels: int
) -> AnalysisCache | None:
    """The store for this face backend; none for an engine object of unknown make (tests' fakes)."""
    if cache_dir is None:
        return None
    if spec is not None and spec.legacy:
        return None
    backend = spec.resolved_backend() if spec is not None else getattr(engine, "name", None)
    return AnalysisCache(cache_dir, backend, max_pixels) if isinstance(backend, str) and backend else None


def publish(
    refs: list[Analysis],
    analyses: list[Analysis],
    cand_dir: Path,
    out_dir: Path,
    scorer: Scorer,
    th: QCThresholds,
    overrides: VerdictOverrides | None = None,
    *,
    legacy: bool = False,
) -> QCResult:
    """Decide over every analysis, then write what QC gives users: the accepted images (and sidecars) in
    ``out_dir``, ``qc_report.csv`` and the contact sheet. Batch and streamed QC both end here."""
    verdicts, n_refs = decide(refs, analyses, scorer, th, legacy=legacy)
    # REVIEW HOOK (issue 28): the user's verdicts win (review.overrides.OverrideStore, passed in by the use case)
    verdicts = mark_automatic(verdicts) if overrides is None else overrides.apply(verdicts, analyses)
    by_name = {a.path.name: a for a in analyses}
    names = sorted(by_name)
    accepted = [cand_dir / n for n in names if verdicts[n].verdict == "accepted"]
    _mirror_accepted(accepted, out_dir)
    ordered = [verdicts[n] for n in names]
    report = write_report(ordered, out_dir / REPORT_NAME)
    tiles = [
        Tile(cand_dir / r.file, tile_label(r), r.verdict == "accepted", by_name[r.file].thumbnail or None)
        for r in ordered
    ]
    sheet = render_contact_sheet(
        [("ACCEPTED", [t for t in tiles if t.ok]), ("REJECTED", [t for t in tiles if not t.ok])],
        out_dir / REPORTS_DIR / SHEET_NAME,
    )
    return QCResult(ordered, report, sheet, [out_dir / p.name for p in accepted], n_refs)


def _mirror_accepted(accepted: list[Path], out_dir: Path) -> None:
    """``out_dir`` holds exactly the accepted images and their sidecars; the sources stay untouched."""
    out_dir.mkdir(parents=True, exist_ok=True)
    keep_names = {p.name for p in accepted} | {sidecar_path(out_dir, p.stem).name for p in accepted}
    for stale in out_dir.iterdir():
        managed = stale.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp", ".json")
        if managed and stale.is_file() and stale.name not in keep_names | {REPORT_NAME}:
            stale.unlink()
    for src in accepted:
        atomic_write_bytes(out_dir / src.name, src.read_bytes())
        side = sidecar_path(src.parent, src.stem)
        if side.is_file():
            atomic_write_bytes(out_dir / side.name, side.read_bytes())
