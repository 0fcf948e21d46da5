"""Where QC's per-image analyses come from: a pool of workers, and a store on disk so no image is checked twice.

Why: face detection and embedding are most of QC's cost (about 0.18 s of a core per 1024 px image here), and
everything ``qc.analysis.analyze`` measures depends on the image alone. Keyed by the file's SHA-256,
the face backend, the pixel cap and ``ANALYSIS_VERSION``, a stored analysis is valid for any copy of
the same bytes: a QC run killed half-way resumes with the images it had checked, a streamed run and
a later batch run share their work, and a changed ``--minsim`` re-decides without re-analysing. A
regenerated or edited file has another digest and is analysed afresh.

Entries are small JSON files (the embedding, the measurements, a 160 px thumbnail), written
atomically; an unreadable entry counts as missing.

``AnalysisPool`` serves batch QC (``analyze_many``) and streamed QC (``qc.stream``) alike, so both
measure every image the same way.
"""

from __future__ import annotations

import base64
import contextlib
import json
import multiprocessing
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from ai_influencer.imaging import DEFAULT_MAX_PIXELS
from ai_influencer.io import atomic_write_json, file_sha256
from ai_influencer.qc.analysis import (
    Analysis,
    EngineSpec,
    Gate,
    ProgressCallback,
    analyze,
    analyze_in_worker,
    init_worker,
    skip_reason,
)
from ai_influencer.vision.faces import FaceEngine

# Bump when analyze() measures anything differently: older entries are then ignored.
# 2: phash_mirror, and the descriptor skipped for images a cheaper check rejects (``skipped``).
ANALYSIS_VERSION = 2

_PLAIN = (
    "faces",
    "sharpness",
    "phash",
    "error",
    "face_px",
    "detail",
    "pixel_hash",
    "compression",
    "fmt",
    "nbytes",
    "phash_mirror",
    "skipped",
)


def analysis_to_json(a: Analysis) -> dict[str, Any]:
    """Everything but the path (the same bytes may live under several names)."""
    out: dict[str, Any] = {k: getattr(a, k) for k in _PLAIN}
    out["box"] = list(a.box) if a.box is not None else None
    out["thumbnail"] = base64.b64encode(a.thumbnail).decode("ascii")
    if a.embedding is not None:
        # float() of a float32/float64 and JSON's repr round-trip exactly: a cached analysis decides
        # exactly like a fresh one.
        out["embedding"] = {"dtype": str(a.embedding.dtype), "values": [float(x) for x in a.embedding.ravel()]}
    return out


def analysis_from_json(path: Path, data: dict[str, Any]) -> Analysis:
    emb = data.get("embedding")
    box = data.get("box")
    return Analysis(
        path,
        embedding=np.asarray(emb["values"], dtype=emb["dtype"]) if emb else None,
        thumbnail=base64.b64decode(data.get("thumbnail") or ""),
        box=(int(box[0]), int(box[1]), int(box[2]), int(box[3])) if box else None,
        **{k: data[k] for k in _PLAIN},
    )


class AnalysisCache:
    """``load`` / ``store`` analyses of one face backend and pixel cap under ``folder``."""

    def __init__(self, folder: Path, backend: str, max_pixels: int) -> None:
        self.folder = Path(folder)
        self.backend = backend
        self.max_pixels = max_pixels

    def _entry(self, digest: str) -> Path:
        return self.folder / f"{digest}.{self.backend}.json"

    def digest(self, path: Path) -> str:
        return file_sha256(path)

    def load(self, path: Path, digest: str) -> Analysis | None:
        """The stored analysis of these bytes, as an analysis of ``path``; None when there is none."""
        entry = self._entry(digest)
        try:
            data = json.loads(entry.read_text(encoding="utf-8"))
            if (data.get("version"), data.get("max_pixels")) != (ANALYSIS_VERSION, self.max_pixels):
                return None
            return analysis_from_json(path, data["analysis"])
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError):  # damaged or foreign: analysed again and rewritten
            return None

    def store(self, digest: str, a: Analysis) -> None:
        payload = {"version": ANALYSIS_VERSION, "max_pixels": self.max_pixels, "analysis": analysis_to_json(a)}
        atomic_write_json(self._entry(digest), payload)


class AnalysisPool:
    """Analyses on demand: in worker processes (each with its own face engine), or in one thread of this
    process when the caller hands over an engine object; stored analyses come back without any work.

    Why spawned workers: a streamed QC starts them while generation threads are busy in the same
    process, and a fork copies the locks those threads hold (logging, HTTP pools) into a child where
    nothing will ever release them. A spawned worker starts clean, about 1 s slower (measured here:
    2.5 s vs 1.5 s for two dlib workers). Workers start on the first image that is not stored, so a
    run whose images are all stored starts none.
    """

    def __init__(
        self,
        *,
        engine: FaceEngine | None = None,
        spec: EngineSpec | None = None,
        workers: int = 1,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        cache: AnalysisCache | None = None,
        expected: int | None = None,
    ) -> None:
        self.engine = engine
        self.spec = spec if engine is None else None
        # Few images: worker start-up would cost more than it saves.
        small = expected is not None and expected < 4
        self.workers = 1 if (self.spec is None or small) else max(1, min(workers, expected or workers))
        self.max_pixels = max_pixels
        self.cache = cache
        self.from_cache = 0  # analyses served by the store
        self.analysed = 0  # analyses computed by this pool
        self._executor: Executor | None = None
        self._lock = threading.Lock()

    def __enter__(self) -> AnalysisPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown(cancel=exc[0] is not None)

    def shutdown(self, *, cancel: bool = False) -> None:
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=cancel)

    def _start(self) -> Executor:
        with self._lock:
            if self._executor is None:
                if self.workers > 1 and self.spec is not None:
                    self._executor = ProcessPoolExecutor(
                        max_workers=self.workers,
                        mp_context=multiprocessing.get_context("spawn"),
                        initializer=init_worker,
                        initargs=(self.spec,),
                    )
                else:
                    self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="qc-analysis")
            return self._executor

    def _analyze_here(self, path: Path, gate: Gate | None) -> Analysis:
        if self.engine is None:  # built in the analysing thread, on first use
            self.engine = (self.spec or EngineSpec()).build()
        return analyze(self.engine, path, self.max_pixels, gate)

    def submit(self, path: Path, gate: Gate | None = None) -> Future[Analysis]:
        """The analysis of ``path``: already done if stored, else computed (and then stored).

        ``gate``: the checks that let the descriptor be skipped (``qc.analysis.Gate``). A stored analysis
        without a descriptor that this gate needs is computed again."""
        digest = self.cache.digest(path) if self.cache is not None else ""
        if self.cache is not None:
            stored = self.cache.load(path, digest)
            if stored is not None and stored.skipped and not skip_reason(stored, gate):
                stored = None  # skipped under an earlier gate (other references or thresholds): needed now
            if stored is not None:
                done: Future[Analysis] = Future()
                done.set_result(stored)
                with self._lock:
                    self.from_cache += 1
                return done
        executor = self._start()
        if isinstance(executor, ProcessPoolExecutor):
            future = executor.submit(analyze_in_worker, (path, self.max_pixels, gate))
        else:
            future = executor.submit(self._analyze_here, path, gate)
        future.add_done_callback(lambda f: self._computed(f, digest))
        return future

    def _computed(self, future: Future[Analysis], digest: str) -> None:
        if future.cancelled() or future.exception() is not None:
            return
        with self._lock:
            self.analysed += 1
        if self.cache is not None:
            with contextlib.suppress(OSError):  # the store is an accelerator: a failed write means work again later
                self.cache.store(digest, future.result())


def analyze_many(
    paths: list[Path],
    *,
    engine: FaceEngine | None,
    spec: EngineSpec | None,
    workers: int,
    max_pixels: int,
    on_progress: ProgressCallback | None = None,
    cache: AnalysisCache | None = None,
    references: int = 0,
    gate_for: Callable[[list[Analysis]], Gate | None] | None = None,
) -> list[Analysis]:
    """Analyses in ``paths`` order; ``on_progress`` after each one (in the calling process).

    With ``gate_for``, the first ``references`` paths are analysed first and the rest under
    ``gate_for(their analyses)``: an image that copies a reference, or fails another cheap check,
    then skips the descriptor. The references are few, so the workers wait for them only briefly."""
    with AnalysisPool(
        engine=engine, spec=spec, workers=workers, max_pixels=max_pixels, cache=cache, expected=len(paths)
    ) as pool:
        futures = [pool.submit(p) for p in paths[:references]] if gate_for is not None else []
        gate = gate_for([f.result() for f in futures]) if gate_for is not None else None
        futures += [pool.submit(p, gate) for p in paths[len(futures) :]]
        out = []
        for i, (path, future) in enumerate(zip(paths, futures, strict=True), start=1):
            out.append(future.result())
            if on_progress is not None:
                on_progress(i, len(paths), path.name)
        return out
