"""QC speed, memory and decisions: today's QC path (release 0.1, ``legacy``) vs the current one, same run.

    .venv/bin/python -m bench.qc [--images 60] [--sizes 1024,512] [--workers N] [--memory 100,1000]

1. Speed: ``--images`` candidates per size rendered like the stub's generations (real photos: the persona,
   other people, blurred; 60/20/20), two reference photos. Each path runs in its own warm worker pool
   (models loaded, as in a streamed run or a long batch), and the clock covers analysing every candidate,
   deciding and publishing (report, contact sheet, accepted copies): seconds per image. The paths
   alternate, twice each; the faster of each path's two runs counts. Goal: current >= 3x faster.
2. Memory: peak resident memory of the whole process tree (this process and its QC workers, sampled every
   50 ms) while ``run_qc`` checks N images at the first size, for each N of ``--memory``: bounded if the
   peak does not grow with N. The N images are hard links to 100 rendered ones (no disk cost; each is still
   decoded and analysed, and they form duplicate groups that ``decide`` must resolve).
3. Decisions on real photos: the calibration set (tests/assets/faces-calibration) and the test photos, each
   reference pair below against every other photo, both paths. Counted: identity verdict flips, faces the
   current path loses, the largest identity-score difference where both paths measured one, and, apart, the
   rows the current path rejects by design (a copy of a reference) or judges without a descriptor (a
   cheaper check already rejects them: no score to compare).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from ai_influencer.imaging import DEFAULT_MAX_PIXELS, list_images
from ai_influencer.qc.analysis import EngineSpec
from ai_influencer.qc.decision import QCThresholds
from ai_influencer.qc.pool import AnalysisPool
from ai_influencer.qc.report import QCRow
from ai_influencer.qc.stage import default_workers, publish, run_qc
from ai_influencer.vision.faces import scorer_for
from tests.support.assets import face, faces_dir
from tests.support.openrouter_stub import _PhotoPool

ROOT = Path(__file__).resolve().parents[1]
CALIBRATION = ROOT / "tests" / "assets" / "faces-calibration" / "photos"
REFERENCE_SETS = {  # distinct photographs of one person each (faces.csv: not one picture resized)
    "obama": (face("obama.jpg"), face("obama3.jpg")),
    "kit_harington": (CALIBRATION / "kit_harington_1.jpg", CALIBRATION / "kit_harington_2.jpg"),
    "lennon": (CALIBRATION / "lennon_1.jpg", CALIBRATION / "lennon_2.jpg"),
}


def render(folder: Path, n: int, size: int, seed: int) -> None:
    folder.mkdir(parents=True)
    pool, rng = _PhotoPool(size), random.Random(seed)
    kinds = ["persona"] * 6 + ["other"] * 2 + ["blurred"] * 2
    for i in range(n):
        (folder / f"{i:04d}.png").write_bytes(pool.render(rng.choice(kinds), rng))


def cpu_seconds() -> float:
    """CPU time (user + system) of this process and all its live children: QC's workers."""
    me = psutil.Process()
    total = 0.0
    for p in [me, *me.children(recursive=True)]:
        try:
            t = p.cpu_times()
        except psutil.Error:
            continue
        total += t.user + t.system
    return total


def timed_qc(
    refs: Path, cand: Path, out: Path, workers: int, legacy: bool
) -> tuple[tuple[float, float, float], list[QCRow]]:
    """(wall seconds, CPU seconds, publishing wall seconds) to analyse, decide and publish every candidate, in a
    pool whose workers are already up. Publishing (report, contact sheet, copies) is the same work on both paths.
    CPU seconds barely move when other programs share the cores; wall seconds do."""
    th = QCThresholds()
    spec = EngineSpec("dlib", legacy=legacy)
    ref_paths, cand_paths = list_images(refs), list_images(cand)
    with AnalysisPool(spec=spec, workers=workers, max_pixels=DEFAULT_MAX_PIXELS) as pool:
        ref_analyses = [f.result() for f in [pool.submit(p) for p in ref_paths]]  # also starts the workers
        warm = [pool.submit(p) for p in cand_paths[:workers]]  # every worker has decoded and described once
        [f.result() for f in warm]
        start, cpu = time.perf_counter(), cpu_seconds()
        gate = None if legacy else th.gate(ref_analyses)
        analyses = [f.result() for f in [pool.submit(p, gate) for p in cand_paths]]
        published = time.perf_counter()
        result = publish(ref_analyses, analyses, cand, out, scorer_for("dlib"), th, legacy=legacy)
        end = time.perf_counter()
        return (end - start, cpu_seconds() - cpu, end - published), result.rows


class PeakRSS:
    """Peak of the summed resident memory of this process and all its children, sampled every 50 ms."""

    def __enter__(self) -> PeakRSS:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            total = 0
            for p in [me, *me.children(recursive=True)]:
                try:
                    total += p.memory_info().rss
                except psutil.Error:
                    continue
            self.peak = max(self.peak, total)
            self._stop.wait(0.05)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@dataclass
class Comparison:
    rows: int = 0
    flips: int = 0
    copies: int = 0
    faces_lost: int = 0
    no_descriptor: int = 0
    compared: int = 0
    max_delta: float = 0.0
    details: list[str] | None = None

    def add(self, old: QCRow, new: QCRow) -> None:
        self.details = self.details or []
        self.rows += 1
        copy = "copy of reference" in new.reason
        if copy:
            self.copies += 1
            self.details.append(f"{new.file}: {new.reason}")
        elif old.verdict != new.verdict:
            self.flips += 1
            self.details.append(f"FLIP {new.file}: {old.verdict} ({old.reason}) -> {new.verdict} ({new.reason})")
        if new.faces < old.faces:
            self.faces_lost += old.faces - new.faces
            self.details.append(f"LOST {new.file}: {old.faces} faces -> {new.faces}")
        if old.score is not None and new.score is not None:
            self.compared += 1
            self.max_delta = max(self.max_delta, abs(old.score - new.score))
        elif old.score is not None and not copy:
            self.no_descriptor += 1


def compare(tmp: Path, name: str, refs: tuple[Path, ...], candidates: list[Path], workers: int) -> Comparison:
    ref_dir, cand_dir = tmp / f"cmp-{name}" / "refs", tmp / f"cmp-{name}" / "cand"
    ref_dir.mkdir(parents=True)
    cand_dir.mkdir()
    for p in refs:
        shutil.copy(p, ref_dir / p.name)
    for p in candidates:
        if p.name not in {r.name for r in refs}:
            shutil.copy(p, cand_dir / p.name)
    old = {r.file: r for r in run_qc(ref_dir, cand_dir, tmp / f"cmp-{name}" / "old", legacy=True, workers=workers).rows}
    new = {r.file: r for r in run_qc(ref_dir, cand_dir, tmp / f"cmp-{name}" / "new", workers=workers).rows}
    c = Comparison()
    for file in sorted(old):
        c.add(old[file], new[file])
    return c


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=60)
    ap.add_argument("--sizes", default="1024,512")
    ap.add_argument("--workers", type=int, default=default_workers())
    ap.add_argument("--memory", default="100,1000", help="image counts for the peak-memory runs ('' to skip)")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    load_before = os.getloadavg()
    tmp = Path(tempfile.mkdtemp(prefix="bench-qc-"))
    try:
        refs = tmp / "refs"
        refs.mkdir()
        for p in REFERENCE_SETS["obama"]:
            shutil.copy(p, refs / p.name)

        speed = []
        render_cmp = Comparison()
        for size in sizes:
            cand = tmp / f"cand{size}"
            render(cand, args.images, size, seed=size)
            runs: dict[bool, list[tuple[float, float, float]]] = {True: [], False: []}
            rows: dict[bool, list[QCRow]] = {}
            for i in range(2):
                for legacy in (True, False):
                    times, rows[legacy] = timed_qc(refs, cand, tmp / f"out{size}-{legacy}-{i}", args.workers, legacy)
                    runs[legacy].append(times)
                    print(f"  {size} px {'today' if legacy else 'current'} run {i + 1}: {times[0]:.1f} s, "
                          f"{times[1]:.1f} CPU s, load {os.getloadavg()[0]:.1f}", flush=True)  # fmt: skip
            for old, new in zip(rows[True], rows[False], strict=True):
                render_cmp.add(old, new)
            best = {legacy: [min(r[k] for r in runs[legacy]) / args.images for k in range(3)] for legacy in runs}
            speed.append((size, best[True], best[False]))

        memory = []
        for n in [int(x) for x in args.memory.split(",") if x]:
            src, cand = tmp / "mem-src", tmp / f"mem{n}"
            if not src.exists():
                render(src, 100, sizes[0], seed=7)
            cand.mkdir()
            originals = sorted(src.iterdir())
            for i in range(n):
                os.link(originals[i % len(originals)], cand / f"{i:05d}.png")
            with PeakRSS() as peak:
                start = time.perf_counter()
                run_qc(refs, cand, tmp / f"mem-out{n}", spec=EngineSpec("dlib"), workers=args.workers)
                seconds = time.perf_counter() - start
            memory.append((n, peak.peak, seconds))
            print(f"  memory run {n} images: {seconds:.1f} s, peak {peak.peak / 2**20:.0f} MiB", flush=True)

        photos = sorted(CALIBRATION.iterdir()) + [face(n) for n in sorted(os.listdir(faces_dir()))]
        cmps = {name: compare(tmp, name, pair, photos, args.workers) for name, pair in REFERENCE_SETS.items()}
        load_after = os.getloadavg()

        print(
            f"\nQC benchmark: dlib, {args.workers} workers, {os.cpu_count()} CPUs, "
            f"load average {load_before[0]:.2f} before / {load_after[0]:.2f} after"
        )
        print(f"{'size':>5} | {'wall s/img today':>16} | {'current':>7} | {'speed-up':>8} | {'CPU s/img today':>15} | "
              f"{'current':>7} | {'speed-up':>8} | {'publish s/img':>13}")  # fmt: skip
        print("-" * 104)
        for size, old, new in speed:
            print(f"{size:>5} | {old[0]:>16.3f} | {new[0]:>7.3f} | {old[0] / new[0]:>7.2f}x | {old[1]:>15.3f} | "
                  f"{new[1]:>7.3f} | {old[1] / new[1]:>7.2f}x | {old[2]:>6.3f}/{new[2]:.3f}")  # fmt: skip
        print(
            f"(goal: current >= 3x faster; {args.images} candidates per size, {args.workers} warm workers, each "
            "number the best of two runs; CPU: QC process and workers together; publish: today/current)"
        )
        if memory:
            print(f"\n{'images':>6} | {'peak RSS, QC process + workers':>30} | {'wall s':>7}")
            print("-" * 50)
            for n, peak, seconds in memory:
                print(f"{n:>6} | {peak / 2**20:>26.0f} MiB | {seconds:>7.1f}")
        print(f"\n{'decisions, today vs current':<28} | {'rows':>4} | {'verdict flips':>13} | {'faces lost':>10} | "
              f"{'scores compared':>15} | {'max |d score|':>13} | {'no descriptor':>13} | "
              f"{'reference copies':>16}")  # fmt: skip
        print("-" * 132)
        for label, c in [(f"renders ({'/'.join(map(str, sizes))} px)", render_cmp)] + [
            (f"photos, refs {name}", c) for name, c in cmps.items()
        ]:
            print(f"{label:<28} | {c.rows:>4} | {c.flips:>13} | {c.faces_lost:>10} | {c.compared:>15} | "
                  f"{c.max_delta:>13.4f} | {c.no_descriptor:>13} | {c.copies:>16}")  # fmt: skip
        print("(goal: no flips, no face lost, |d score| <= 0.01; 'no descriptor': a cheaper check rejected it)")
        for label, c in [("renders", render_cmp), *cmps.items()]:
            for line in c.details or []:
                print(f"  {label}: {line}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
