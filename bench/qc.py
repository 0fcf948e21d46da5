"""QC throughput on 1024 px images: the full pipeline vs bare model calls, same run.

    .venv/bin/python bench/qc.py [--images 40]

"bare" = decoding each file plus the dlib detector + 5-point aligner +
descriptor for the references and the candidates, with models already loaded
(the floor any QC implementation pays). "pipeline" = ``run_qc``:
decode from disk, detect, embed, sharpness, perceptual hash, verdicts,
dedupe, copies, CSV and contact sheet. Goal: pipeline within 1.2x of bare at
the same number of processes, with both cores used.
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ai_influencer.vision.faces import DlibEngine
from ai_influencer.vision.qc import EngineSpec, run_qc
from tests.support.assets import face
from tests.support.openrouter_stub import _PhotoPool

_engine: DlibEngine | None = None


def _init() -> None:
    global _engine
    _engine = DlibEngine()


def _bare(path: str) -> int:
    assert _engine is not None
    return len(_engine.detect(np.asarray(Image.open(path).convert("RGB"))))


def bare_models(paths: list[Path], procs: int) -> float:
    """Seconds for decode + detector + aligner + descriptor: what any QC must pay per image."""
    if procs == 1:
        engine = DlibEngine()
        start = time.perf_counter()
        for p in paths:
            engine.detect(np.asarray(Image.open(p).convert("RGB")))
        return time.perf_counter() - start
    with ProcessPoolExecutor(procs, initializer=_init) as pool:
        list(pool.map(_bare, [str(paths[0])] * procs))  # warm up: models loaded in every worker
        start = time.perf_counter()
        list(pool.map(_bare, [str(p) for p in paths], chunksize=2))
        return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=60)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-qc-"))
    try:
        refs, cand = tmp / "refs", tmp / "cand"
        refs.mkdir()
        cand.mkdir()
        for n in ("obama.jpg", "obama3.jpg"):
            shutil.copy(face(n), refs / n)
        pool, rng = _PhotoPool(1024), random.Random(0)
        kinds = ["persona"] * 6 + ["other"] * 2 + ["blurred"] * 2
        for i in range(args.images):
            (cand / f"{i:03d}.png").write_bytes(pool.render(rng.choice(kinds), rng))
        paths = sorted(cand.iterdir())

        rows = []
        ref_paths = sorted(refs.iterdir())
        for procs in (1, 2):
            bare = bare_models(ref_paths + paths, procs)
            start = time.perf_counter()
            run_qc(refs, cand, tmp / f"out{procs}", spec=EngineSpec("dlib"), workers=procs)
            pipe = time.perf_counter() - start
            rows.append((procs, bare, pipe))
        print(f"QC benchmark: {args.images} candidate images, 1024x1024, dlib backend")
        print(f"{'procs':>5} | {'bare img/s':>10} | {'pipeline img/s':>14} | {'pipeline/bare time':>18}")
        print("-" * 58)
        for procs, bare, pipe in rows:
            n = args.images
            print(f"{procs:>5} | {n / bare:>10.2f} | {n / pipe:>14.2f} | {pipe / bare:>17.2f}x")
        speedup = rows[0][2] / rows[1][2]
        print(f"pipeline speed-up from 1 to 2 processes: {speedup:.2f}x (goal: pipeline/bare <= 1.20x)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
