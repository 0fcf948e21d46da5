"""What Prefect costs: the hybrid flow vs the same domain calls without Prefect, on ~200 images.

    .venv/bin/python -m bench.overhead [--db sqlite|postgres|both] [--qc streamed|batch|both] [--images 200]
                                       [--latency 2] [--rate 10] [--inflight 32]

Both sides start from the same two reference photos and talk to their own stub
OpenRouter server (real photos as images, ``latency`` seconds per chat/image
call, a hard ``rate`` req/s limit). The bare side calls prepare_references, plan_storyboard,
generate_batch (paced by the CLI's AdaptiveRate at the same send rate, same parallelism),
run_qc, the analytics reports and augment_and_caption directly. The Prefect side runs ``hybrid_flow``
in this process against a started ``prefect server start`` (tests/support/prefect_server.py, background
services on, as deployed) whose database is SQLite (the embedded default) or PostgreSQL (a throw-away
cluster with fsync on, tests/support/postgres.py: the scale-out setup), each in a fresh child process.
``--db both`` runs both after one bare baseline in the same run and prints them side by side.
Goals: <= 1.25x on SQLite, <= 1.10x on PostgreSQL.

QC runs as users get it: ``--qc streamed`` (the default ``streaming: true``: QC checks each image while
generation runs, a ``qc`` task beside the generate subflow; bare: ``StreamingQC`` fed by
``generate_batch``) and ``--qc batch`` (``streaming: false``: the ``qc`` subflow after generation; bare:
``run_qc``), one table each. Streamed, the ``qc`` row is QC's own time: opening the stream (references
checked, workers started; the flow does it between the plan and generate subflows) plus the time it
runs on after generation ended (the QC task's end minus the generate subflow's end; bare: ``result()``
after ``generate_batch`` returned), so prepare + plan + generate + qc covers the same span on both sides.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "ERROR")

from ai_influencer.adaptive_pacing import AdaptiveRate
from ai_influencer.analytics.report import cost_report, drift_report, join
from ai_influencer.dataset.augment import augment_and_caption
from ai_influencer.generation.engine import build_requests, generate_batch, iter_reference_images
from ai_influencer.openrouter import OpenRouterClient
from ai_influencer.options.augment import AUGMENT_DEFAULTS
from ai_influencer.pacing import SEND_SAFETY
from ai_influencer.prompt_bank import compose_prompts, load_prompt_bank
from ai_influencer.qc.analysis import EngineSpec
from ai_influencer.qc.decision import QCThresholds
from ai_influencer.qc.stage import run_qc
from ai_influencer.qc.stream import StreamingQC
from ai_influencer.settings import Settings
from ai_influencer.storyboard import plan_storyboard, write_storyboard
from ai_influencer.vision.faces import create_face_engine
from ai_influencer.vision.prepare import prepare_references
from tests.support.assets import face
from tests.support.openrouter_stub import StubOpenRouter

ROOT = Path(__file__).resolve().parents[1]
BANK = ROOT / "prompt_bank" / "default.yaml"
KEY = "sk-or-bench"
STAGES = ("prepare", "plan", "generate", "qc", "analytics", "augment")
SIDE_MARK = "OVERHEAD-SIDE "


def workspace(tmp: str) -> Path:
    data = Path(tmp) / "data"
    (data / "input_raw").mkdir(parents=True)
    for name in ("obama.jpg", "obama3.jpg"):
        shutil.copy(face(name), data / "input_raw" / name)
    return data


def bare(
    data: Path, stub: StubOpenRouter, per_scene: int, rate: float, inflight: int, streamed: bool
) -> dict[str, float]:
    """The pipeline as plain function calls; seconds per stage."""
    s = Settings()
    bank = load_prompt_bank(BANK)
    spec = EngineSpec("auto", str(s.insightface_root), tuple(s.onnx_providers))
    times: dict[str, float] = {}
    t = time.perf_counter()
    engine = create_face_engine("auto", insightface_root=s.insightface_root, providers=s.onnx_providers)
    prepare_references(data / "input_raw", data / "cleaned", engine=engine, remover=None)  # the stage's defaults
    times["prepare"] = time.perf_counter() - t
    with OpenRouterClient(KEY, base_url=stub.base_url) as client:
        t = time.perf_counter()
        board, result = plan_storyboard(client, bank, s.text_model)
        write_storyboard(board, result, data / "text" / "storyboard.json")
        times["plan"] = time.perf_counter() - t
        with contextlib.ExitStack() as streaming:
            stream, opened = None, 0.0
            if streamed:  # opened (references checked, workers started) before generation, as the flow does
                t = time.perf_counter()
                stream = streaming.enter_context(
                    StreamingQC(
                        data / "cleaned",
                        data / "synth_openrouter",
                        data / "qc_passed",
                        thresholds=QCThresholds(),
                        spec=spec,
                    )
                )
                opened = time.perf_counter() - t
            t, synth = time.perf_counter(), data / "synth_openrouter"
            refs = list(iter_reference_images(data / "cleaned"))
            reqs = build_requests(compose_prompts(bank, per_scene, 0), s.image_model, "1024x1024", refs)
            outcomes = generate_batch(
                client,
                reqs,
                data / "synth_openrouter",
                references=refs,
                concurrency=inflight,
                # Same send rate as the Prefect side (SEND_SAFETY below the limit), retries paced too: the
                # CLI's pacer (`influencer generate --rate`), which also slows down on a 429 as the flow does.
                pacer=AdaptiveRate(rate * SEND_SAFETY),
                on_done=None if stream is None else lambda o: o.record and stream.feed(synth / o.record.file),
            )
            assert all(o.status == "generated" for o in outcomes), {o.status for o in outcomes}
            times["generate"] = time.perf_counter() - t
            if stream is not None:
                t = time.perf_counter()
                stream.close()
                stream.result()
                times["qc"] = opened + time.perf_counter() - t
    if stream is None:
        t = time.perf_counter()
        run_qc(data / "cleaned", data / "synth_openrouter", data / "qc_passed", spec=spec)  # the default thresholds
        times["qc"] = time.perf_counter() - t
    t = time.perf_counter()
    items, _ = join(data / "synth_openrouter", data / "qc_passed" / "qc_report.csv")
    cost_report(items)
    drift_report(items)
    times["analytics"] = time.perf_counter() - t
    t = time.perf_counter()
    augment_and_caption(
        data / "qc_passed",
        data / "augment",
        data / "captions",
        manifest=data / "synth_openrouter" / "manifest.json",
        bank=bank,
        kohya_repeats=AUGMENT_DEFAULTS.kohya_repeats,  # num_aug, seed and size: the stage's defaults, as the flow's
    )
    times["augment"] = time.perf_counter() - t
    return times


def with_prefect(
    data: Path, per_scene: int, rate: float, inflight: int, streamed: bool
) -> tuple[float, dict[str, float]]:
    """The hybrid flow against the configured Prefect server; wall time and each stage subflow's run time
    (streamed QC: see the module doc)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterName

    from flows.hybrid import hybrid_flow
    from flows.params import GenerateParams, HybridParams, Limits, Paths

    tag = uuid.uuid4().hex[:6]
    params = HybridParams(
        paths=Paths(data_root=str(data), prompt_bank=str(BANK)),
        streaming=streamed,
        generate=GenerateParams(
            per_scene=per_scene,
            limits=Limits(
                rate_limit_name=f"ovh-rate-{tag}",
                rate_per_s=rate,
                inflight_limit_name=f"ovh-inflight-{tag}",
                max_inflight=inflight,
            ),
        ),
    )
    t = time.perf_counter()
    result = hybrid_flow(params)
    wall = time.perf_counter() - t
    assert result.generate is not None and result.generate.failed == 0, result.generate
    stages: dict[str, float] = {}
    with get_client(sync_client=True) as client:
        names = {f.id: f.name for f in client.read_flows()}
        spans = {}
        for run in client.read_flow_runs():
            name = names.get(run.flow_id, "")
            if name in STAGES and run.start_time and run.end_time:
                stages[name] = (run.end_time - run.start_time).total_seconds()
                spans[name] = (run.start_time, run.end_time)
        if streamed and "generate" in spans:
            # QC is the `qc` task beside the generate subflow. Its own time: opening the stream (references
            # checked, workers started: between the plan subflow's end and generate's start) and what it
            # runs on after generate ends. The bare side counts the same two.
            qc_tasks = client.read_task_runs(task_run_filter=TaskRunFilter(name=TaskRunFilterName(like_="qc")))
            ends = [t.end_time for t in qc_tasks if t.name.startswith("qc") and t.end_time]
            before = spans.get("plan", spans.get("prepare", spans["generate"]))[1]
            if ends:
                opening = (spans["generate"][0] - before).total_seconds()
                stages["qc"] = max(0.0, opening) + max(0.0, (max(ends) - spans["generate"][1]).total_seconds())
        # analytics is a task of the hybrid flow, not a subflow: from its creation (the tag-slot call
        # comes before the start) to its end
        only = TaskRunFilter(name=TaskRunFilterName(like_="analytics"))
        for task_run in client.read_task_runs(task_run_filter=only):
            if task_run.end_time:
                stages["analytics"] = (task_run.end_time - task_run.created).total_seconds()
    return wall, stages


def prefect_side(db: str, args: argparse.Namespace, per_scene: int, streamed: bool) -> tuple[float, dict[str, float]]:
    """Start a server on ``db`` ("sqlite" | "postgres"), run the hybrid flow against it, stop it.

    Called in a fresh process per database (``--side``): Prefect's process-wide services (events,
    concurrency leases) keep the first server's API URL, so a second server in the same process was
    never reached (measured: the PostgreSQL side failed on a closed SQLite server's port).
    """
    from prefect.settings import PREFECT_API_URL, PREFECT_LOCAL_STORAGE_PATH, temporary_settings

    from tests.support.prefect_server import prefect_server

    with tempfile.TemporaryDirectory() as tmp, stub(args) as server:
        home = Path(tmp) / "prefect-home"
        home.mkdir()
        with (
            prefect_server(home, db=db) as env,
            # A fresh result store: a cached plan from an earlier run must not make Prefect look faster.
            temporary_settings(
                updates={PREFECT_API_URL: env.api_url, PREFECT_LOCAL_STORAGE_PATH: Path(tmp) / "prefect-results"}
            ),
        ):
            os.environ.update(OPENROUTER_API_KEY=KEY, OPENROUTER_BASE_URL=server.base_url)
            os.environ["INFLUENCER_CREDENTIALS_BLOCK"] = "bench-none"
            return with_prefect(workspace(tmp), per_scene, args.rate, args.inflight, streamed)


def run_side(db: str, args: argparse.Namespace, qc: str) -> tuple[float, dict[str, float]]:
    """One Prefect side in a child process (see prefect_side); its output is kept for when it fails."""
    argv = [sys.executable, "-m", "bench.overhead", "--side", db, "--qc", qc, "--images", str(args.images),
            "--latency", str(args.latency), "--rate", str(args.rate), "--inflight", str(args.inflight)]  # fmt: skip
    res = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT)
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith(SIDE_MARK)]
    if res.returncode != 0 or not lines:
        raise SystemExit(f"the {db} side failed ({res.returncode}):\n{res.stdout[-3000:]}\n{res.stderr[-5000:]}")
    side = json.loads(lines[-1][len(SIDE_MARK) :])
    return side["wall"], side["stages"]


def stub(args: argparse.Namespace) -> StubOpenRouter:
    return StubOpenRouter(
        valid_keys=[KEY],
        latency=args.latency,
        latency_paths=("/images",),  # the paid calls; GET /key and /models answer at once
        rps_limit=args.rate,
        image_size=512,
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--db", choices=("sqlite", "postgres", "both"), default="both")
    ap.add_argument("--qc", choices=("streamed", "batch", "both"), default="both")
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--latency", type=float, default=2.0)
    ap.add_argument("--rate", type=float, default=10.0)
    ap.add_argument("--inflight", type=int, default=32)
    ap.add_argument("--side", choices=("sqlite", "postgres"), help=argparse.SUPPRESS)  # one Prefect side, as JSON
    args = ap.parse_args()
    per_scene = -(-args.images // len(load_prompt_bank(BANK).scenes))
    if args.side:
        wall, stages = prefect_side(args.side, args, per_scene, streamed=args.qc == "streamed")
        print(SIDE_MARK + json.dumps({"wall": wall, "stages": stages}), flush=True)
        return
    dbs = ("sqlite", "postgres") if args.db == "both" else (args.db,)
    modes = ("streamed", "batch") if args.qc == "both" else (args.qc,)
    load_before = os.getloadavg()

    tables = {}
    for mode in modes:
        with tempfile.TemporaryDirectory() as tmp, stub(args) as server:
            bare_times = bare(workspace(tmp), server, per_scene, args.rate, args.inflight, mode == "streamed")
            n = sum(1 for _ in (Path(tmp) / "data" / "synth_openrouter").glob("*.png"))
        tables[mode] = (n, bare_times, {db: run_side(db, args, mode) for db in dbs})

    goals = {"sqlite": 1.25, "postgres": 1.10}
    print(
        f"overhead benchmark: stub latency {args.latency}s, limit {args.rate} req/s, "
        f"{os.cpu_count()} CPUs, load average {load_before[0]:.2f} before / {os.getloadavg()[0]:.2f} after"
    )
    for mode, (n, bare_times, sides) in tables.items():
        bare_total = sum(bare_times.values())
        what = "streamed (streaming: true)" if mode == "streamed" else "batch (streaming: false)"
        extra = "; qc = QC's own time before and after the generate subflow" if mode == "streamed" else ""
        print(f"\nQC {what}, {n} images{extra}")
        header = f"{'stage':<10} | {'bare s':>8}" + "".join(f" | {db + ' s':>10} | {'ratio':>6}" for db in dbs)
        print(header)
        print("-" * len(header))
        for name in STAGES:
            b = bare_times[name]
            row = f"{name:<10} | {b:>8.1f}"
            for db in dbs:
                p = sides[db][1].get(name)
                if p is None:  # a stage the server has no record of: say so, never a nan
                    row += f" | {'missing':>10} | {'-':>6}"
                    continue
                ratio = f"{p / b:>5.2f}x" if b >= 0.05 else f"{'-':>6}"  # two near-zero times say nothing
                row += f" | {p:>10.1f} | {ratio}"
            print(row)
        row = f"{'total':<10} | {bare_total:>8.1f}"
        for db in dbs:
            row += f" | {sides[db][0]:>10.1f} | {sides[db][0] / bare_total:>5.2f}x"
        print(row + "   (goals: " + ", ".join(f"{db} <= {goals[db]:.2f}x" for db in dbs) + ")")


if __name__ == "__main__":
    main()
