"""QC that checks each image the moment it is complete, with the verdicts batch QC would give.

Why: generation at the provider's limit and QC on the CPU run at similar speeds (measured: 9.3 vs
3.8 images/s on two cores); one after the other they take the sum of both, overlapped about the
longer one. And generate-until-N can stop paying the moment N images pass, instead of after a whole
round.

The verdicts stay batch verdicts. ``qc.analysis.analyze`` measures one image alone and
``qc.decision.decide`` is a pure, order-independent function of all analyses, so ``result()``, which
decides once over every image in the folder, equals ``run_qc`` on the same folders. ``accepted()``
during the run is the same decision over the images checked so far: provisional, since a later
image can still be the better copy of an accepted one, or a look-alike that fails it.

How images arrive: ``feed(path)`` from the generation's outcomes in this process, and a watcher that
looks in the candidate folder every ``poll_s`` for image files it has not seen yet, for a generator
in another process. A file there is complete (every write is a rename of a finished temporary
file), so the watcher needs no sidecar to trust it. Analyses are stored by content
(``qc.pool.AnalysisCache``): a stream killed half-way resumes with what it had checked.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path

from ai_influencer.dataset.workspace import REPORT_NAME
from ai_influencer.imaging import DEFAULT_MAX_PIXELS, list_images
from ai_influencer.pacing import StopFlag
from ai_influencer.qc.analysis import Analysis, EngineSpec, Gate
from ai_influencer.qc.decision import QCThresholds, decide, reference_centroid
from ai_influencer.qc.pool import AnalysisPool
from ai_influencer.qc.report import QCRow, VerdictOverrides, mark_automatic, write_report
from ai_influencer.qc.stage import QCResult, analysis_cache, default_workers, engine_parts, publish
from ai_influencer.vision.faces import FaceEngine

OVERSHOOT_WAIT_S = 300.0  # how long ``UntilAccepted.overshoot`` waits for the images still being checked


class QCStreamError(RuntimeError):
    """The analysis itself failed (a worker process died): the images checked so far are stored."""


class StreamingQC:
    """Use as a context manager; ``close()`` once no more images will come, then ``result()``."""

    def __init__(
        self,
        ref_dir: Path,
        cand_dir: Path,
        out_dir: Path,
        *,
        thresholds: QCThresholds,
        engine: FaceEngine | None = None,
        spec: EngineSpec | None = None,
        workers: int | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        cache_dir: Path | None = None,
        poll_s: float = 0.5,
        overrides: VerdictOverrides | None = None,
    ) -> None:
        self.ref_dir, self.cand_dir, self.out_dir = Path(ref_dir), Path(cand_dir), Path(out_dir)
        self.th = thresholds
        spec, self.scorer = engine_parts(engine, spec)
        self.pool = AnalysisPool(
            engine=engine,
            spec=spec,
            workers=default_workers() if workers is None else workers,
            max_pixels=max_pixels,
            cache=analysis_cache(cache_dir, engine, spec, max_pixels),
        )
        self.poll_s = poll_s
        self.overrides = overrides  # the user's verdicts win here too (review.overrides)
        self.refs: list[Analysis] = []
        self.gate: Gate | None = None  # built from the references: what spares a candidate the descriptor
        self._cond = threading.Condition()
        self._seen: set[str] = set()
        self._done: dict[str, Analysis] = {}
        self._waiting: dict[str, list[Callable[[], None]]] = {}
        self._notifying = 0  # analyses whose callbacks are still running (outside the lock)
        self._failure: BaseException | None = None
        self._closed = False
        self._decided: tuple[int, int] = (-1, 0)  # (analyses decided over, accepted among them)
        self._halt = threading.Event()
        self._watcher = threading.Thread(target=self._watch, name="qc-stream-watch", daemon=True)
        self.started = time.monotonic()

    # ---- lifecycle -------------------------------------------------------------------------------
    def __enter__(self) -> StreamingQC:
        """Check the references first: a persona without a usable reference face fails before anything
        is generated, let alone paid for."""
        self.pool.__enter__()
        try:
            refs = [self.pool.submit(p) for p in list_images(self.ref_dir)]
            self.refs = [f.result() for f in refs]
            reference_centroid(self.scorer, self.refs)
            self.gate = self.th.gate(self.refs)
            if self.overrides is not None:  # REVIEW HOOK (issue 28): an unreadable store fails before any payment
                self.overrides.current()
            self.scan()
        except BaseException:
            self.pool.shutdown(cancel=True)
            raise
        self._watcher.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
        self._halt.set()
        if self._watcher.is_alive():
            self._watcher.join()
        self.pool.shutdown(cancel=exc[0] is not None)

    def close(self) -> None:
        """No more images will come: ``result()`` may finish."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    # ---- arrivals --------------------------------------------------------------------------------
    def feed(self, path: Path, on_checked: Callable[[], None] | None = None) -> None:
        """Check ``path`` (an image in the candidate folder) unless it is already checked or under way;
        ``on_checked`` runs once its analysis is in (at once if it already is)."""
        name = Path(path).name
        with self._cond:
            known = name in self._seen
            ready = name in self._done
            if not ready and on_checked is not None:
                self._waiting.setdefault(name, []).append(on_checked)
            self._seen.add(name)
        if ready and on_checked is not None:
            on_checked()
        if known:
            return
        try:
            future = self.pool.submit(self.cand_dir / name, self.gate)
        except BaseException as exc:  # e.g. the pool is already shut down
            self._arrived(name, None, exc)
            return
        future.add_done_callback(lambda f: self._arrived(name, f, None))

    def _arrived(self, name: str, future: Future[Analysis] | None, failure: BaseException | None) -> None:
        if future is not None and not future.cancelled():
            failure = future.exception()
        analysis = future.result() if future is not None and failure is None and not future.cancelled() else None
        with self._cond:
            if analysis is not None:
                self._done[name] = analysis
            else:
                self._seen.discard(name)
                if self._failure is None and failure is not None:
                    self._failure = failure
            callbacks = self._waiting.pop(name, [])
            self._notifying += 1
            self._cond.notify_all()
        try:
            for callback in callbacks:  # outside the lock: a callback may ask accepted()
                callback()
        finally:
            with self._cond:
                self._notifying -= 1
                self._cond.notify_all()

    def scan(self) -> None:
        """Feed every image in the candidate folder not seen yet."""
        if not self.cand_dir.is_dir():
            return
        for path in list_images(self.cand_dir):
            with self._cond:
                new = path.name not in self._seen
            if new:
                self.feed(path)

    def _watch(self) -> None:
        while not self._halt.wait(self.poll_s):
            try:
                self.scan()
            except OSError:  # the folder is being rebuilt: look again next time
                continue

    # ---- state -----------------------------------------------------------------------------------
    @property
    def checked(self) -> int:
        with self._cond:
            return len(self._done)

    @property
    def seen(self) -> int:
        with self._cond:
            return len(self._seen)

    def accepted(self) -> int:
        """Images that pass QC among those checked so far (provisional, see the module's docstring)."""
        with self._cond:
            analyses = list(self._done.values())
            decided, count = self._decided
        if len(analyses) == decided:
            return count
        verdicts = self._decide(analyses)
        count = sum(v.verdict == "accepted" for v in verdicts.values())
        with self._cond:
            if len(analyses) > self._decided[0]:
                self._decided = (len(analyses), count)
        return count

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Until every image seen so far is checked and its callbacks have run (a caller counting what the
        callbacks recorded, as ``UntilAccepted.overshoot`` does, saw a checked image missing); False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while (len(self._done) < len(self._seen) or self._notifying) and self._failure is None:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cond.wait(0.25 if left is None else min(0.25, left))
            return True

    def wait_closed(self, timeout: float | None = None) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self._closed, timeout)

    def verdicts(self) -> dict[str, QCRow]:
        """The decision over every image checked so far, by file name (provisional until ``close()``)."""
        with self._cond:
            analyses = list(self._done.values())
        return self._decide(analyses)

    def _decide(self, analyses: list[Analysis]) -> dict[str, QCRow]:
        """QC's verdicts, then the user's (``review.overrides``), which win: what every count here sees."""
        verdicts, _ = decide(self.refs, analyses, self.scorer, self.th)
        if self.overrides is None:
            return mark_automatic(verdicts)
        return self.overrides.apply(verdicts, analyses)  # REVIEW HOOK (issue 28)

    def write_report(self) -> Path:
        """``qc_report.csv`` for the images checked so far (what generate-until-N's down-weighting reads
        between rounds); ``result()`` writes the final one."""
        with self._cond:
            analyses = list(self._done.values())
        verdicts = self._decide(analyses)
        return write_report([verdicts[n] for n in sorted(verdicts)], self.out_dir / REPORT_NAME)

    def result(self) -> QCResult:
        """After ``close()``: every image in the candidate folder checked, decided and published exactly
        as ``run_qc`` does (the same set of files, the same outputs)."""
        self.wait_closed()
        self.scan()
        self.wait_idle()
        if self._failure is not None:
            raise QCStreamError(f"QC analysis failed: {self._failure}") from self._failure
        names = {p.name for p in list_images(self.cand_dir)} if self.cand_dir.is_dir() else set()
        with self._cond:
            analyses = [a for n, a in self._done.items() if n in names]
        return publish(self.refs, analyses, self.cand_dir, self.out_dir, self.scorer, self.th, self.overrides)


class UntilAccepted:
    """The dispatch side of generate-until-N: stop paying the moment ``target`` images pass QC.

    For ``dispatch.dispatch`` (its ``window``, ``keep_going`` and ``on_done``). A request may be sent
    only while fewer than ``window`` of this run's images are unchecked (in flight, or generated and
    waiting for QC), and while the images accepted so far, plus the unchecked ones at the pass rate
    seen so far, do not already promise ``target``. So when the ``target``-th image passes, at most
    ``window - 1`` others are paid and unchecked: that is the most this run pays beyond the target
    (``overshoot`` counts it). A slower QC holds generation back instead of letting unchecked paid
    images pile up.

    ``image_of(result)`` says what a finished request produced: ``(path, paid)`` or a list of them
    (a request for several images), or None for a request that produced no image (failed, refused by
    the budget, stopped).

    ``overshoot`` is counted on the final verdicts, in the order QC finished the images: what the files
    show (bench/streaming.py counts it from the report and the analysis store's write times). It used
    to be the count at the moment the provisional count first reached ``target``, which a later image
    can revise (a better copy, a look-alike): a run reported 12 where the files showed 10.
    """

    def __init__(
        self,
        stream: StreamingQC,
        target: int,
        window: int,
        image_of: Callable[[object], tuple[Path, bool] | list[tuple[Path, bool]] | None],
        stop: StopFlag | None = None,
    ) -> None:
        self.stream = stream
        self.target = target
        self.window = max(1, window)
        self.image_of = image_of
        self.stop = stop
        self.open = 0  # this run's requests sent and not checked yet
        self.paid = 0  # this run's paid images
        self.paid_checked = 0
        self.paid_at_target: int | None = None  # paid images checked when the target was first reached
        self._checked_order: list[str] = []  # this run's paid images, in the order QC finished them
        self._cond = threading.Condition()

    def pass_rate(self) -> float:
        """Accepted over checked so far, smoothed (an empty start counts as one in two)."""
        return (self.stream.accepted() + 1) / (self.stream.checked + 2)

    def enter(self, images: int = 1) -> None:
        """A request for ``images`` images may be sent (it takes that many places of the window)."""
        with self._cond:
            while True:
                if self.stop is not None:
                    self.stop.check()
                accepted = self.stream.accepted()
                promised = accepted + self.open * self.pass_rate()
                if accepted >= self.target or (self.open < self.window and promised < self.target):
                    self.open += images  # a reached target is let through: keep_going stops the loop next
                    return
                self._cond.wait(0.25)

    def leave(self) -> None:
        with self._cond:
            self.open = max(0, self.open - 1)
            self._cond.notify_all()

    def keep_going(self) -> bool:
        return self.stream.accepted() < self.target

    def on_done(self, future: object, images: int = 1) -> None:
        """A request for ``images`` images finished: each image it produced goes to QC (and leaves the
        window once checked); the places of images it did not produce (failed, short answer) free now."""
        try:
            produced = self.image_of(future.result())  # type: ignore[attr-defined]
        except Exception:
            produced = None
        items = [] if produced is None else [produced] if isinstance(produced, tuple) else list(produced)
        for _ in range(max(0, images - len(items))):
            self.leave()
        for path, paid in items:
            if paid:
                with self._cond:
                    self.paid += 1
            self.stream.feed(path, on_checked=lambda paid=paid, name=Path(path).name: self._checked(paid, name))

    def _checked(self, paid: bool, name: str) -> None:
        reached = self.stream.accepted() >= self.target
        with self._cond:
            if paid:
                self.paid_checked += 1
                self._checked_order.append(name)
            if reached and self.paid_at_target is None:
                self.paid_at_target = self.paid_checked
        self.leave()

    @property
    def overshoot(self) -> int:
        """This run's paid images that QC finished after the one that brought the accepted count to ``target``,
        by the final verdicts (0 if the target was never reached). Waits for the images still being checked."""
        self.stream.wait_idle(OVERSHOOT_WAIT_S)
        verdicts = self.stream.verdicts()
        with self._cond:
            order, paid = list(self._checked_order), self.paid
        mine = set(order)
        accepted = sum(r.verdict == "accepted" for n, r in verdicts.items() if n not in mine)  # from earlier runs
        if accepted >= self.target:
            return paid
        for position, name in enumerate(order, start=1):
            row = verdicts.get(name)
            accepted += row is not None and row.verdict == "accepted"
            if accepted >= self.target:
                return paid - position
        return 0
