"""The streaming pipeline on a real Prefect server and the stub OpenRouter (real photos as images).

QC checks each image while the generate subflow runs; its verdicts equal batch QC's; generate-until-N
stops paying at the target, at most the in-flight window beyond it; a re-run pays and checks nothing;
a run killed during streaming QC resumes without paying or checking again what was done.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from ai_influencer.qc.analysis import EngineSpec
from ai_influencer.qc.stage import run_qc
from flows.hybrid import hybrid_flow
from flows.params import GenerateParams, HybridParams, Limits
from tests.conftest import REPO
from tests.support.openrouter_stub import StubOpenRouter
from tests.support.prefect_server import artifacts_since
from tests.test_flows import chat_calls, env, limits, paths  # noqa: F401 (fixtures)

ONLY_GENERATE_AND_QC = dict(run_plan=False, run_augment=False, run_train=False, run_evaluate=False)


def hybrid(p_paths, lim: Limits, per_scene: int, **kw: object) -> dict:
    return hybrid_flow(
        HybridParams(
            paths=p_paths,
            generate=GenerateParams(per_scene=per_scene, limits=lim, use_references=False),
            **{**ONLY_GENERATE_AND_QC, **kw},
        )
    )


def test_hybrid_streams_qc_while_generating_with_batch_verdicts(
    prefect_api_url: str,
    env: StubOpenRouter,  # noqa: F811
    tmp_path: Path,
) -> None:
    started = datetime.now(UTC)
    env.latency, env.latency_paths = 0.3, ("/images",)
    p = paths(tmp_path)
    lim = limits(rate=8, inflight=4)
    out = hybrid(p, lim, per_scene=3)
    ws = p.workspace()
    gen, qc = out.generate, out.qc
    assert gen.generated == 18 and qc.streamed is True
    assert qc.accepted + qc.rejected + qc.error == 18 and qc.accepted >= 5

    # Checked while generating: analyses were stored before the last image was written.
    images = sorted(ws.synth.glob("*.png"), key=lambda f: f.stat().st_mtime)
    stored = sorted(ws.qc_cache.glob("*.json"), key=lambda f: f.stat().st_mtime)
    assert len(stored) == 18 + 2  # every candidate and both references, once
    assert stored[0].stat().st_mtime < images[-1].stat().st_mtime

    # Batch QC over the same folders, with its own analyses: the same verdicts, the same report.
    batch = run_qc(ws.cleaned, ws.synth, tmp_path / "batch", spec=EngineSpec("dlib"), workers=2)
    assert ws.qc_report.read_text() == batch.report.read_text()
    assert sorted(f.name for f in ws.qc_passed.glob("*.png")) == sorted(f.name for f in batch.accepted)

    # The QC stage has its own task run, state and artifacts in the UI.
    wanted = ("qc-report", "qc-contact-sheet", "qc-progress", "generate-progress")
    assert set(wanted) <= set(artifacts_since(prefect_api_url, started, *wanted))

    # A re-run pays nothing and checks nothing again.
    before = chat_calls(env)
    again = hybrid(p, lim, per_scene=3)
    assert chat_calls(env) == before and again.generate.generated == 0
    assert again.qc.analysed == 0 and again.qc.from_cache == 20
    assert ws.qc_report.read_text() == batch.report.read_text()


def test_generate_until_n_stops_paying_at_the_target(
    prefect_api_url: str,
    env: StubOpenRouter,  # noqa: F811
    tmp_path: Path,
) -> None:
    """A half-failing provider output: the run stops dispatching once 6 images pass, and pays for at most
    the in-flight window beyond the image that reached the target."""
    env.image_mix = {"persona": 0.5, "other": 0.3, "blurred": 0.2}
    env.latency, env.latency_paths = 0.2, ("/images",)
    p = paths(tmp_path)
    window = 4
    out = hybrid(p, limits(rate=20, inflight=window), per_scene=8, target_accepted=6, max_rounds=3)
    result = out.generate
    assert "qc" not in out  # the rounds ran QC
    assert result.stopped == "target" and result.accepted >= 6
    first = result.rounds[0]
    assert len(result.rounds) == 1, result  # 48 prompts in round 1: enough, no second round
    assert first.not_sent_after_target > 0  # stopped early: the rest of the round was never paid
    assert 0 <= result.overshoot <= window - 1, result
    assert chat_calls(env) == first.generated < 48
    # The final verdicts are batch QC's over the folder.
    ws = p.workspace()
    batch = run_qc(ws.cleaned, ws.synth, tmp_path / "batch", spec=EngineSpec("dlib"), workers=2)
    assert batch.counts["accepted"] == result.accepted == result.qc.accepted


KILL_SCRIPT = """
import sys
from flows.hybrid import hybrid_flow
from flows.params import GenerateParams, HybridParams, Limits, Paths
limits = Limits(rate_limit_name=sys.argv[2], rate_per_s=4, inflight_limit_name=sys.argv[3], max_inflight=3)
hybrid_flow(HybridParams(paths=Paths(data_root=sys.argv[1], prompt_bank=sys.argv[4]), run_plan=False,
            run_augment=False, run_train=False, run_evaluate=False,
            generate=GenerateParams(per_scene=4, use_references=False, limits=limits)))
"""


def test_a_kill_during_streaming_qc_resumes_without_repaying_or_rechecking(
    prefect_api_url: str,
    env: StubOpenRouter,  # noqa: F811
    tmp_path: Path,
) -> None:
    env.latency, env.latency_paths = 0.2, ("/images",)
    p = paths(tmp_path)
    ws = p.workspace()
    lim = limits(rate=4, inflight=3)
    log = tmp_path / "child.log"
    with log.open("w") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-c", KILL_SCRIPT, str(p.data_root), lim.rate_limit_name, lim.inflight_limit_name,
             str(p.prompt_bank)],
            cwd=REPO, env={**os.environ, "PREFECT_API_URL": prefect_api_url, "PYTHONPATH": str(REPO)},
            stdout=fh, stderr=fh, start_new_session=True,
        )  # fmt: skip
    deadline = time.monotonic() + 180
    # Kill once QC has checked some images (stored analyses beyond the 2 references) mid-generation.
    while time.monotonic() < deadline and len(list(ws.qc_cache.glob("*.json"))) < 2 + 5 and proc.poll() is None:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(30)
    killed_at = time.monotonic()
    made = {f.name for f in ws.synth.glob("*.png")}
    stored = {f.name: f.stat().st_mtime_ns for f in ws.qc_cache.glob("*.json")}
    assert len(stored) >= 7 and 5 <= len(made) < 24, log.read_text()[-3000:]

    # Resume in this process (on fresh limits: the test server has no repossessor for the dead leases).
    fresh = lim.model_copy(update={"rate_limit_name": lim.rate_limit_name + "-2",
                                   "inflight_limit_name": lim.inflight_limit_name + "-2"})  # fmt: skip
    out = hybrid(p, fresh, per_scene=4)
    assert out.generate.already_done == len(made) and out.generate.generated == 24 - len(made)
    after_kill = [r for r in env.image_requests() if r.t > killed_at]
    assert len(after_kill) == 24 - len(made)  # nothing made before the kill was paid again
    # Nothing checked before the kill was checked again: its stored analyses are untouched, and the run
    # analysed only what had no analysis yet.
    assert all((ws.qc_cache / n).stat().st_mtime_ns == t for n, t in stored.items())
    assert out.qc.from_cache == len(stored) and out.qc.analysed == 24 + 2 - len(stored)
    assert json.loads((ws.synth / "manifest.json").read_text())["count"] == 24
