"""Streaming pipeline: generation alone vs generate -> QC in sequence vs QC checking each image as it arrives;
generate-until-N.

    .venv/bin/python -m bench.streaming [--images 204] [--size 1024] [--latency 1,2] [--rate 10]
                                        [--inflight 32] [--target 20]

Every scenario runs the real hybrid flow against one started ``prefect server`` (SQLite, background
services on; tests/support/prefect_server.py) and one stub OpenRouter (real photos as ``--size`` px
images, ``latency`` s per image call, a hard ``rate`` req/s limit), each on a fresh workspace and fresh
limits. The stub answers each request with the same image every time (by its question, ``SameAnswers``),
so every scenario sees the same images (the table says how many the timed runs rendered anew: 0).
QC uses the real dlib models, one worker process per CPU (as users run it).

The stub renders its images in this process (crop, resize, PNG: ~50 ms a 1024 px image), CPU that a real
provider spends on its own machines. The bench keeps each rendered image (by the stub's seed for the
request) and a warm-up run of generation alone renders them all first, so no timed run pays for them.

1. For each ``--latency``: generation alone (``run_qc=False``), generate + QC with ``streaming=False``
   (QC starts after the last image) and with ``streaming=True`` (QC checks each image as the generate
   subflow writes it). Wall time from the generate subflow's start to the last stage's end, from the
   server's records. Goal: streamed <= 1.15x of generation alone.
2. generate-until-N with ``--target`` accepted (at the last latency): in rounds (each round generates all
   its prompts, then QC) vs streamed (dispatch stops once N pass). "Paid beyond the N-th" is counted from
   the files alone: this run's paid images in the order QC finished them (the write times of their
   entries in the analysis store, data/.cache/qc), the final qc_report.csv, the position of the image
   that brought the accepted count to N. The flow's own ``overshoot`` counts the same thing (the final
   verdicts, in check order): the two must agree. For rounds, "finished" is the order of the files'
   write times (QC ran after the round). Goal: streamed <= the in-flight window.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import shutil
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "ERROR")

from ai_influencer.io import file_sha256
from ai_influencer.prompt_bank import load_prompt_bank
from tests.support.assets import face
from tests.support.openrouter_stub import StubOpenRouter

if TYPE_CHECKING:
    from flows.results import HybridSummary

ROOT = Path(__file__).resolve().parents[1]
BANK = ROOT / "prompt_bank" / "default.yaml"
KEY = "sk-or-bench"
SEQUENTIAL = "generate, then QC"


def fresh_workspace(tmp: Path, name: str) -> Path:
    data = tmp / name / "data"
    (data / "input_raw").mkdir(parents=True)
    for n in ("obama.jpg", "obama3.jpg"):
        shutil.copy(face(n), data / "input_raw" / n)
    return data


def run_hybrid(data: Path, args: argparse.Namespace, per_scene: int, **kw: object) -> tuple[HybridSummary, float]:
    """The hybrid flow (prepare, generate, QC) on ``data``; its result and generate-start -> QC-end seconds."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterName

    from flows.hybrid import hybrid_flow
    from flows.params import GenerateParams, HybridParams, Limits, Paths

    tag = uuid.uuid4().hex[:6]
    limits = Limits(rate_limit_name=f"bench-rate-{tag}", rate_per_s=args.rate,
                    inflight_limit_name=f"bench-inflight-{tag}", max_inflight=args.inflight)  # fmt: skip
    params = HybridParams(
        paths=Paths(data_root=str(data), prompt_bank=str(BANK), models_root=str(data.parent / "models")),
        run_plan=False, run_augment=False, run_train=False, run_evaluate=False,
        generate=GenerateParams(per_scene=per_scene, limits=limits, use_references=False),
        **kw,
    )  # fmt: skip
    started = datetime.now().astimezone()
    result = hybrid_flow(params)
    with get_client(sync_client=True) as client:
        flows = {f.id: f.name for f in client.read_flows()}
        runs = [r for r in client.read_flow_runs(limit=200) if r.start_time and r.start_time >= started]
        # by name: a run has hundreds of image tasks, more than a page of task runs
        only_qc = TaskRunFilter(name=TaskRunFilterName(like_="qc"))
        tasks = [t for t in client.read_task_runs(task_run_filter=only_qc, limit=200)
                 if t.start_time and t.start_time >= started]  # fmt: skip
    gen_start = min(r.start_time for r in runs if flows.get(r.flow_id) == "generate")
    ends = [r.end_time for r in runs if flows.get(r.flow_id) in ("generate", "qc") and r.end_time]
    ends += [t.end_time for t in tasks if t.name.startswith("qc") and t.end_time]
    return result, (max(ends) - gen_start).total_seconds()


def paid_beyond(data: Path, target: int, streamed: bool) -> tuple[int, int, int | None]:
    """(paid, accepted, paid beyond the image that brought the accepted count to ``target``), from files.

    Order: when QC finished each image, i.e. when its analysis was stored (one entry per image content in
    data/.cache/qc); for rounds, QC ran after the round, so the order the images were written in."""
    synth = data / "synth_openrouter"
    with (data / "qc_passed" / "qc_report.csv").open(newline="") as fh:
        verdicts = {r["file"]: r["verdict"] for r in csv.DictReader(fh)}
    store = data / ".cache" / "qc"
    paid = []
    for side in synth.glob("*.json"):
        if side.name == "manifest.json":
            continue
        image = synth / json.loads(side.read_text())["file"]
        entry = next(store.glob(f"{file_sha256(image)}.*.json"), None) if streamed else None
        paid.append(((entry or image).stat().st_mtime_ns, image.name))
    paid.sort()
    accepted = 0
    for i, (_, name) in enumerate(paid, start=1):
        accepted += verdicts.get(name) == "accepted"
        if accepted == target:
            return len(paid), sum(v == "accepted" for v in verdicts.values()), len(paid) - i
    return len(paid), accepted, None


class SameAnswers(StubOpenRouter):
    """The stub, answering an image request without a seed by its question alone.

    Why: the flow sends no seed unless the user sets one, and the stub then counts such requests into the
    answer ("fresh" images, as a provider without seeds gives): each scenario got other images in another
    order, so the scenarios' verdicts differed (accepted 38-47 of the same 204 prompts) and every timed
    run paid the stub's rendering again (~50 ms of this machine's CPU per 1024 px image)."""

    def _image_item(self, body: dict, rec: object, index: int, fmt: str) -> dict:
        return super()._image_item({**body, "seed": body.get("seed") or 0}, rec, index, fmt)  # type: ignore[arg-type]


class MemoRender:
    """The stub's renderer, keeping each image by the request's random state (see the module doc)."""

    def __init__(self, stub: StubOpenRouter) -> None:
        self.render, self.images = stub._pool.render, {}  # a bench wrapping its own test stub
        stub._pool.render = self  # type: ignore[method-assign]

    def __call__(self, kind: str, rng: random.Random, fmt: str = "PNG") -> bytes:
        key = (kind, fmt, rng.getstate())
        if key not in self.images:
            self.images[key] = self.render(kind, rng, fmt)
        return self.images[key]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=204)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--latency", default="1,2", help="seconds per image call, one or more (comma separated)")
    ap.add_argument("--rate", type=float, default=10.0)
    ap.add_argument("--inflight", type=int, default=32)
    ap.add_argument("--target", type=int, default=20)  # the stub's photos hold ~45 distinct passes
    args = ap.parse_args()
    latencies = [float(x) for x in args.latency.split(",")]
    per_scene = -(-args.images // len(load_prompt_bank(BANK).scenes))

    from prefect.settings import PREFECT_API_URL, PREFECT_LOCAL_STORAGE_PATH, temporary_settings

    from tests.support.prefect_server import prefect_server

    load_before = os.getloadavg()
    rows: dict[float, dict[str, tuple[HybridSummary, float, Path]]] = {}
    until: dict[str, tuple[HybridSummary, tuple[int, int, int | None]]] = {}
    scenarios = (
        ("generation alone", {"run_qc": False, "streaming": False}),
        ("generate, then QC", {"streaming": False}),
        ("streamed", {"streaming": True}),
    )
    with tempfile.TemporaryDirectory() as tmp_s, SameAnswers(
        valid_keys=[KEY], latency=latencies[0], latency_paths=("/images",), rps_limit=args.rate,
        image_size=args.size,
    ) as stub:  # fmt: skip
        memo = MemoRender(stub)
        tmp = Path(tmp_s)
        os.environ.update(OPENROUTER_API_KEY=KEY, OPENROUTER_BASE_URL=stub.base_url)
        os.environ["INFLUENCER_CREDENTIALS_BLOCK"] = "bench-none"
        (tmp / "home").mkdir()
        with (
            prefect_server(tmp / "home") as env,
            temporary_settings(updates={PREFECT_API_URL: env.api_url, PREFECT_LOCAL_STORAGE_PATH: tmp / "results"}),
        ):
            t = time.perf_counter()
            run_hybrid(fresh_workspace(tmp, "warm-up"), args, per_scene, run_qc=False, streaming=False)
            print(f"  warm-up (renders {len(memo.images)} images): {time.perf_counter() - t:.1f} s", flush=True)
            warm = len(memo.images)
            for latency in latencies:
                stub.latency = latency
                rows[latency] = {}
                for name, kw in scenarios:
                    data = fresh_workspace(tmp, f"{name.split()[0].strip(',')}-{latency:g}")
                    t = time.perf_counter()
                    result, span = run_hybrid(data, args, per_scene, **kw)
                    rows[latency][name] = (result, span, data)
                    print(f"  {latency:g} s/call, {name}: {time.perf_counter() - t:.1f} s in all", flush=True)
            fresh = len(memo.images) - warm  # rendered in a timed run: other images than the warm-up's
            last = rows[latencies[-1]]
            reports = [
                (last[k][2] / "qc_passed" / "qc_report.csv").read_text() for k in ("generate, then QC", "streamed")
            ]
            for name, streaming in (("rounds", False), ("streamed", True)):
                data = fresh_workspace(tmp, f"until-{name}")
                result, _ = run_hybrid(data, args, per_scene, streaming=streaming, target_accepted=args.target)
                until[name] = (result, paid_beyond(data, args.target, streaming))
                print(f"  until-N {name}: done", flush=True)

    n = rows[latencies[0]]["generation alone"][0].generate.generated
    print(
        f"\nstreaming benchmark: {n} images of {args.size} px, limit {args.rate} req/s, in flight {args.inflight}, "
        f"{os.cpu_count()} CPUs (one QC worker each), "
        f"load average {load_before[0]:.2f} before / {os.getloadavg()[0]:.2f} after"
    )
    print(f"{'s/call':>6} | {'scenario':<18} | {'wall s':>7} | {'vs generation alone':>19} | {'vs sequential':>13} | "
          f"{'accepted':>8}")  # fmt: skip
    print("-" * 88)
    for latency, by_name in rows.items():
        alone, seq = by_name["generation alone"][1], by_name["generate, then QC"][1]
        for name, (result, span, _) in by_name.items():
            accepted = result.qc.accepted if result.qc is not None else "-"
            print(f"{latency:>6g} | {name:<18} | {span:>7.1f} | {span / alone:>18.2f}x | {span / seq:>12.2f}x | "
                  f"{accepted!s:>8}")  # fmt: skip
    print(f"(goal: streamed <= 1.15x of generation alone; streamed and sequential reports identical: "
          f"{reports[0] == reports[1]}; images the stub rendered during timed runs: {fresh})")  # fmt: skip

    print(f"\n{'generate until ' + str(args.target):<24} | {'paid':>5} | {'accepted':>8} | {'paid beyond N-th':>16} "
          f"| {'flow says':>9} | {'rounds':>6}")  # fmt: skip
    print("-" * 84)
    notes = []
    for name, (result, (paid, accepted, beyond)) in until.items():
        gen = result.generate
        says = gen.overshoot if name == "streamed" and gen.overshoot is not None else "-"
        shown = "never reached" if beyond is None else str(beyond)
        print(f"{name:<24} | {paid:>5} | {accepted:>8} | {shown:>16} | {says!s:>9} | {len(gen.rounds):>6}")
        if name == "streamed" and says != (beyond or 0):
            notes.append(f"streamed: the flow says {says}, the files {shown}: they should agree (a bug)")
    print(
        f"(goal: streamed pays at most the in-flight window ({args.inflight}) beyond the N-th accepted; "
        "both counts in the order QC finished the images, on the final verdicts)"
    )
    for note in notes:
        print(note)


if __name__ == "__main__":
    main()
