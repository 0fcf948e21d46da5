"""Streaming pipeline: sequential generate -> QC vs QC checking each image as it arrives; generate-until-N.

    .venv/bin/python bench/streaming.py [--images 204] [--latency 2] [--rate 10] [--inflight 32]
                                        [--target 20]

Every scenario runs the real hybrid flow against one started ``prefect server`` (SQLite, background
services on; tests/support/prefect_server.py) and one stub OpenRouter (real photos as images,
``latency`` s per image call, a hard ``rate`` req/s limit), each on a fresh workspace and fresh
limits. The stub answers each request with the same image every time, so every scenario sees the same
images. QC uses the real dlib models, one worker process per core (as users run it).

1. generate + QC of ``--images`` images: ``streaming=False`` (QC starts after the last image) vs
   ``streaming=True`` (QC checks each image as the generate subflow writes it). Wall time from the
   generate subflow's start to the QC stage's end, from the server's records. Goal: streamed <= 0.6x.
2. generate-until-N with ``--target`` accepted: in rounds (each round generates all its prompts, then
   QC) vs streamed (dispatch stops once N pass). "Paid beyond the N-th" is counted from the files
   alone: paid images in the order they were written, the final qc_report.csv, the position at which
   the N-th accepted image arrived. Goal: streamed <= the in-flight window.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import sys
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "ERROR")

from ai_influencer.prompt_bank import load_prompt_bank
from tests.support.assets import face
from tests.support.openrouter_stub import StubOpenRouter

ROOT = Path(__file__).resolve().parents[1]
BANK = ROOT / "prompt_bank" / "default.yaml"
KEY = "sk-or-bench"


def fresh_workspace(tmp: Path, name: str) -> Path:
    data = tmp / name / "data"
    (data / "input_raw").mkdir(parents=True)
    for n in ("obama.jpg", "obama3.jpg"):
        shutil.copy(face(n), data / "input_raw" / n)
    return data


def run_hybrid(data: Path, args: argparse.Namespace, per_scene: int, **kw: object) -> tuple[dict, float]:
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
    qc_ends = [r.end_time for r in runs if flows.get(r.flow_id) == "qc" and r.end_time]
    qc_ends += [t.end_time for t in tasks if t.name.startswith("qc") and t.end_time]
    return result, (max(qc_ends) - gen_start).total_seconds()


def paid_beyond(data: Path, target: int) -> tuple[int, int, int | None]:
    """(paid, accepted, paid beyond the image that brought the accepted count to ``target``), from files."""
    synth = data / "synth_openrouter"
    with (data / "qc_passed" / "qc_report.csv").open(newline="") as fh:
        verdicts = {r["file"]: r["verdict"] for r in csv.DictReader(fh)}
    paid = []
    for side in synth.glob("*.json"):
        if side.name == "manifest.json":
            continue
        rec = json.loads(side.read_text())
        paid.append(((synth / rec["file"]).stat().st_mtime_ns, rec["file"]))
    paid.sort()
    accepted = 0
    for i, (_, name) in enumerate(paid, start=1):
        accepted += verdicts.get(name) == "accepted"
        if accepted == target:
            return len(paid), sum(v == "accepted" for v in verdicts.values()), len(paid) - i
    return len(paid), accepted, None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=204)
    ap.add_argument("--latency", type=float, default=2.0)
    ap.add_argument("--rate", type=float, default=10.0)
    ap.add_argument("--inflight", type=int, default=32)
    ap.add_argument("--target", type=int, default=20)  # the stub's photos hold ~45 distinct passes
    args = ap.parse_args()
    per_scene = -(-args.images // len(load_prompt_bank(BANK).scenes))

    from prefect.settings import PREFECT_API_URL, PREFECT_LOCAL_STORAGE_PATH, temporary_settings

    from tests.support.prefect_server import prefect_server

    load_before = os.getloadavg()
    rows: dict[str, tuple[dict, float, Path]] = {}
    with tempfile.TemporaryDirectory() as tmp_s, StubOpenRouter(
        valid_keys=[KEY], latency=args.latency, latency_paths=("/images",), rps_limit=args.rate,
        image_size=512,
    ) as stub:  # fmt: skip
        tmp = Path(tmp_s)
        os.environ.update(OPENROUTER_API_KEY=KEY, OPENROUTER_BASE_URL=stub.base_url)
        os.environ["INFLUENCER_CREDENTIALS_BLOCK"] = "bench-none"
        (tmp / "home").mkdir()
        with (
            prefect_server(tmp / "home") as env,
            temporary_settings(updates={PREFECT_API_URL: env.api_url, PREFECT_LOCAL_STORAGE_PATH: tmp / "results"}),
        ):
            for name, kw in (("sequential", {"streaming": False}), ("streamed", {"streaming": True})):
                data = fresh_workspace(tmp, name)
                t = time.perf_counter()
                result, span = run_hybrid(data, args, per_scene, **kw)
                rows[name] = (result, span, data)
                print(f"  {name}: {time.perf_counter() - t:.1f} s in all", flush=True)
            reports = [(rows[k][2] / "qc_passed" / "qc_report.csv").read_text() for k in ("sequential", "streamed")]
            until: dict[str, tuple[dict, tuple[int, int, int | None]]] = {}
            for name, streaming in (("rounds", False), ("streamed", True)):
                data = fresh_workspace(tmp, f"until-{name}")
                result, _ = run_hybrid(data, args, per_scene, streaming=streaming, target_accepted=args.target)
                until[name] = (result, paid_beyond(data, args.target))
                print(f"  until-N {name}: done", flush=True)

    n = rows["sequential"][0]["generate"]["generated"]
    print(
        f"\nstreaming benchmark: {n} images, stub latency {args.latency}s, limit {args.rate} req/s, "
        f"in flight {args.inflight}, {os.cpu_count()} CPUs (one QC worker each), "
        f"load average {load_before[0]:.2f} before / {os.getloadavg()[0]:.2f} after"
    )
    seq = rows["sequential"]
    print(f"{'generate + QC':<24} | {'wall s':>7} | {'ratio':>6} | {'accepted':>8}")
    print("-" * 56)
    for name, (result, span, _) in rows.items():
        print(f"{name:<24} | {span:>7.1f} | {span / seq[1]:>5.2f}x | {result['qc']['accepted']:>8}")
    print(f"(goal: streamed <= 0.60x; streamed and sequential reports identical: {reports[0] == reports[1]})")

    print(f"\n{'generate until ' + str(args.target):<24} | {'paid':>5} | {'accepted':>8} | {'paid beyond N-th':>16} "
          f"| {'flow says':>9} | {'rounds':>6}")  # fmt: skip
    print("-" * 84)
    for name, (result, (paid, accepted, beyond)) in until.items():
        gen = result["generate"]
        says = gen.get("overshoot", "-") if name == "streamed" else "-"
        shown = "never reached" if beyond is None else str(beyond)
        print(f"{name:<24} | {paid:>5} | {accepted:>8} | {shown:>16} | {says!s:>9} | {len(gen['rounds']):>6}")
    print(f"(goal: streamed pays at most the in-flight window ({args.inflight}) beyond the N-th accepted)")


if __name__ == "__main__":
    main()
