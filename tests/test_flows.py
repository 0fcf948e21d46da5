"""Prefect orchestration against a real Prefect server (the session's started server) and the stub OpenRouter."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from ai_influencer.generation.engine import build_requests
from ai_influencer.prompt_bank import compose_prompts, load_prompt_bank
from flows.generate import generate_flow
from flows.hybrid import hybrid_flow
from flows.params import GenerateParams, HybridParams, Limits, Paths, QCParams, TrainParams
from flows.stages import qc_flow
from tests.conftest import REPO, TEST_KEY
from tests.support.assets import face
from tests.support.openrouter_stub import StubOpenRouter
from tests.support.prefect_server import artifacts_since

BANK = str(REPO / "prompt_bank" / "default.yaml")
IMAGE_MODEL = "google/gemini-2.5-flash-image"


@pytest.fixture
def env(stub: StubOpenRouter, monkeypatch: pytest.MonkeyPatch) -> StubOpenRouter:
    monkeypatch.setenv("OPENROUTER_API_KEY", TEST_KEY)
    monkeypatch.setenv("OPENROUTER_BASE_URL", stub.base_url)
    monkeypatch.setenv("INFLUENCER_OPENROUTER_MAX_RETRIES", "2")  # the client owns HTTP-level retries
    return stub


def paths(tmp: Path, refs: bool = True) -> Paths:
    raw = tmp / "data" / "input_raw"
    raw.mkdir(parents=True, exist_ok=True)
    if refs:
        for n in ("obama.jpg", "obama3.jpg"):
            shutil.copy(face(n), raw / n)
    return Paths(data_root=str(tmp / "data"), prompt_bank=BANK, models_root=str(tmp / "models"))


def limits(rate: float = 50, inflight: int = 16) -> Limits:
    tag = uuid.uuid4().hex[:8]  # fresh limits per test: an existing limit is never overwritten
    return Limits(
        rate_limit_name=f"rate-{tag}", rate_per_s=rate, inflight_limit_name=f"inflight-{tag}", max_inflight=inflight
    )


def tiny_train(base: Path) -> TrainParams:
    """Train settings for the tiny random SDXL: 64 px, 2 steps, a checkpoint per step, CPU."""
    return TrainParams(
        base_model=str(base), rank=4, alpha=2, resolution=64, max_train_steps=2, mixed_precision="no",
        checkpoint_every=1,
        overrides={"min_bucket_reso": 32, "max_bucket_reso": 128, "bucket_step": 16, "gradient_checkpointing": False,
                   "device": "cpu"},
    )  # fmt: skip


def chat_calls(stub: StubOpenRouter) -> int:
    """Image requests received (the Image API, or chat for models only it serves)."""
    return len(stub.image_requests())


def plan_calls(stub: StubOpenRouter) -> int:
    """Text (LLM) requests received: the storyboard's chat completions, never an image request."""
    images = {id(r) for r in stub.image_requests()}
    return sum(r.path.endswith("/chat/completions") and id(r) not in images for r in stub.requests)


def api(server: str, path: str, body: dict | None = None) -> list | dict:
    with httpx.Client(base_url=server, timeout=30) as c:
        r = c.post(path, json=body or {}) if body is not None else c.get(path)
        r.raise_for_status()
        return r.json()


def test_hybrid_end_to_end_then_rerun_pays_nothing(prefect_api_url: str, env: StubOpenRouter, tmp_path: Path) -> None:
    started = datetime.now(UTC)
    p = HybridParams(paths=paths(tmp_path), generate=GenerateParams(per_scene=2, limits=limits()))
    result = hybrid_flow(p)
    data = tmp_path / "data"
    board = json.loads((data / "text" / "storyboard.json").read_text())
    assert len(board["caption_seeds"]) >= 5
    assert result.generate.generated == 12
    assert json.loads((data / "synth_openrouter" / "manifest.json").read_text())["count"] == 12
    assert (data / "qc_passed" / "qc_report.csv").is_file()
    assert result.qc.accepted >= 1 and result.augment.captions == 2 * result.qc.accepted
    assert (data / "augment" / "kohya" / "10_ohwx woman").is_dir()
    assert "no base model" in result.skipped and result.train is None  # a fresh machine has no SDXL: said, not crashed
    wanted = ("qc-report", "qc-contact-sheet", "qc-progress", "generate-cost", "generate-progress")
    found = artifacts_since(prefect_api_url, started, *wanted)
    assert set(wanted) <= set(found)
    progress = found["qc-progress"]  # the newest of this test's runs
    assert progress["type"] == "progress" and float(progress["data"]) == 100.0
    paid = len(env.paid_requests)
    again = hybrid_flow(p)
    assert len(env.paid_requests) == paid, "a re-run must not pay for anything"
    assert again.generate.already_done == 12 and again.generate.generated == 0
    # Outputs deleted behind the cache's back: the cached QC and augment results must not come back
    # as if the folders were there (augment then ran on a missing folder); they are rebuilt.
    accepted = sorted(f.name for f in (data / "qc_passed").glob("*.png"))
    shutil.rmtree(data / "qc_passed")
    shutil.rmtree(data / "augment")
    rebuilt = hybrid_flow(p)
    assert sorted(f.name for f in (data / "qc_passed").glob("*.png")) == accepted
    assert (data / "qc_passed" / "qc_report.csv").is_file()
    assert rebuilt.augment.captions == again.augment.captions
    assert (data / "augment" / "kohya" / "10_ohwx woman").is_dir()
    assert len(env.paid_requests) == paid

    # The batch QC flow (cached, unlike the streamed QC of the hybrid flow): cached while its folder
    # is intact, recomputed once the folder is gone.
    def cached_runs() -> int:
        return api(prefect_api_url, "/task_runs/count", {"task_runs": {"state": {"name": {"any_": ["Cached"]}}}})

    first = qc_flow(QCParams(), p.paths)
    before = cached_runs()
    cached = qc_flow(QCParams(), p.paths)
    assert cached == first and cached_runs() == before + 1
    shutil.rmtree(data / "qc_passed")
    again_qc = qc_flow(QCParams(), p.paths)
    assert again_qc.accepted == first.accepted
    assert sorted(f.name for f in (data / "qc_passed").glob("*.png")) == accepted
    gcl = api(prefect_api_url, f"/v2/concurrency_limits/{p.generate.limits.rate_limit_name}")
    assert gcl["slot_decay_per_second"] == pytest.approx(p.generate.limits.rate_per_s)


def test_rate_limit_is_never_exceeded(
    prefect_api_url: str, stub: StubOpenRouter, env: StubOpenRouter, tmp_path: Path
) -> None:
    stub.latency = 0.3
    rate = 4.0
    result = generate_flow(
        GenerateParams(per_scene=4, limits=limits(rate=rate, inflight=8), use_references=False),
        paths(tmp_path, refs=False),
    )
    assert result.generated == 24
    assert stub.max_requests_in_window(1.0) <= rate
    assert not any(r.status == 429 for r in stub.requests)


def test_429_and_5xx_are_retried_by_the_client_and_attempts_do_not_multiply(
    prefect_api_url: str, env: StubOpenRouter, tmp_path: Path
) -> None:
    env.retry_after = "0"
    env.inject("429", "502", "503", path="/images")
    result = generate_flow(GenerateParams(per_scene=1, limits=limits(), use_references=False), paths(tmp_path, False))
    assert result.generated == 6 and result.failed == 0
    assert chat_calls(env) == 6 + 3
    # An outage on one image: the client's 3 attempts, and no Prefect task retry on top
    # (it was 3 x (1 + task_retries 3) = 12 attempts before one retry owner per error class).
    env.reset()
    env.inject(*["502"] * 18, path="/images")  # 6 images x 3 client attempts
    with pytest.raises(RuntimeError, match="generation stopped"):
        generate_flow(
            GenerateParams(per_scene=1, seed=9, limits=limits(), use_references=False), paths(tmp_path, False)
        )
    time.sleep(0.5)
    assert chat_calls(env) == 18, "a task retry would have sent more (and then succeeded)"


def test_bad_key_fails_fast_before_any_paid_request(
    prefect_api_url: str, env: StubOpenRouter, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENROUTER_API_KEY", "sk-or-wrong")
    with pytest.raises(Exception, match=r"401 \(auth\)"):
        generate_flow(GenerateParams(per_scene=2, limits=limits(), use_references=False), paths(tmp_path, False))
    assert chat_calls(env) == 0


def test_credits_running_out_halts_the_run_and_keeps_what_was_bought(
    prefect_api_url: str, env: StubOpenRouter, tmp_path: Path
) -> None:
    env.credits_total = env.image_cost * 3.5
    with pytest.raises(Exception, match="account is out of credits") as info:
        generate_flow(
            GenerateParams(per_scene=3, limits=limits(inflight=2), use_references=False), paths(tmp_path, False)
        )
    images = list((tmp_path / "data" / "synth_openrouter").glob("*.png"))
    assert len(images) == 3
    assert "3 images generated in this run are kept" in str(info.value)
    assert chat_calls(env) <= 3 + 2  # no retries of 402; at most the in-flight ones got it


def test_budget_cap_is_checked_before_each_paid_call(prefect_api_url: str, env: StubOpenRouter, tmp_path: Path) -> None:
    budget = env.image_cost * 3.5
    result = generate_flow(
        GenerateParams(per_scene=2, budget_usd=budget, limits=limits(inflight=4), use_references=False),
        paths(tmp_path, False),
    )
    assert result.generated == 3 and result.stopped_by_budget == 9
    assert result.spent_usd <= budget
    assert chat_calls(env) == 3


KILL_SCRIPT = """
import sys
from flows.generate import generate_flow
from flows.params import GenerateParams, Limits, Paths
limits = Limits(rate_limit_name=sys.argv[2], rate_per_s=4, inflight_limit_name=sys.argv[3], max_inflight=3)
generate_flow(GenerateParams(per_scene=4, use_references=False, limits=limits),
              Paths(data_root=sys.argv[1], prompt_bank=sys.argv[4]))
"""


def test_killed_generation_resumes_without_losing_or_repaying(
    prefect_api_url: str, stub: StubOpenRouter, env: StubOpenRouter, tmp_path: Path
) -> None:
    stub.latency = 0.2
    lim = limits(rate=4, inflight=3)
    p = paths(tmp_path, refs=False)
    out = Path(p.data_root) / "synth_openrouter"
    child_env = {**os.environ, "PREFECT_API_URL": prefect_api_url, "PYTHONPATH": str(REPO)}
    log = (tmp_path / "child.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-c", KILL_SCRIPT, p.data_root, lim.rate_limit_name, lim.inflight_limit_name, BANK],
        cwd=REPO,
        env=child_env,
        stdout=log,
        stderr=log,
        start_new_session=True,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list(out.glob("*.png"))) < 6:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(30)
    killed_at = time.monotonic()
    before = {f.stem for f in out.glob("*.png")}
    assert 6 <= len(before) < 24, "kill must land mid-run: " + (tmp_path / "child.log").read_text()[-3000:]

    # The killed process's in-flight leases last 60 s (the server's repossessor frees them only then), so a
    # resume on the same limit would wait for them; test_prefect_server.py shows a started server freeing
    # them, test_cli.py the embedded server of `influencer run`. Resume on another limit.
    resume_limits = lim.model_copy(update={"inflight_limit_name": lim.inflight_limit_name + "-resume"})
    result = generate_flow(GenerateParams(per_scene=4, limits=resume_limits, use_references=False), p)
    assert result.manifest_count == 24 and result.already_done >= len(before)
    bank = load_prompt_bank(BANK)
    reqs = build_requests(compose_prompts(bank, 4, 0), IMAGE_MODEL, "1024x1024")
    prompt_of = {r.slots[0].file_key: r.prompt for r in reqs}  # files are named by their slot
    after_kill = [r for r in stub.image_requests() if r.t > killed_at]
    repaid = {k for k in before if any(prompt_of[k] in json.dumps(r.body) for r in after_kill)}
    assert not repaid, "images saved before the kill were paid for again"
    assert {f.stem for f in out.glob("*.png")} == set(prompt_of)
    assert all((out / f"{k}.json").is_file() for k in prompt_of)  # every image has its sidecar
    # A temp file the kill left behind is never taken for an image: the manifest lists exactly the requests.
    assert {item["key"] for item in json.loads((out / "manifest.json").read_text())["images"]} == set(prompt_of)


def test_key_from_block_and_never_leaked(
    prefect_api_url: str, stub: StubOpenRouter, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from blocks.openrouter import OpenRouterCredentials

    secret = "sk-or-block-only-" + uuid.uuid4().hex
    stub.valid_keys = {secret}
    monkeypatch.delenv("OPENROUTER_API_KEY", raising=False)
    monkeypatch.setenv("INFLUENCER_CREDENTIALS_BLOCK", "leaktest")
    cli = str(Path(sys.executable).with_name("influencer"))
    res = subprocess.run(
        [cli, "set-key", "--block", "leaktest", "--base-url", stub.base_url],
        input=secret + "\n",
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PREFECT_API_URL": prefect_api_url},
    )
    assert res.returncode == 0, res.stderr
    assert secret not in res.stdout + res.stderr
    try:
        p = HybridParams(
            paths=paths(tmp_path), generate=GenerateParams(per_scene=1, limits=limits()), run_augment=False
        )
        hybrid_flow(p)
        chats = [r for r in stub.requests if r.path.endswith("/chat/completions")]
        assert len(stub.paid_requests) >= 6 and all(r.authorization_ok for r in chats)  # the block's key only
        dumps = [
            # the newest 200 of each: this run's (the server is the session's, with other tests' runs)
            json.dumps(api(prefect_api_url, "/logs/filter", {"limit": 200, "sort": "TIMESTAMP_DESC"})),
            json.dumps(api(prefect_api_url, "/artifacts/filter", {"limit": 200, "sort": "CREATED_DESC"})),
            json.dumps(api(prefect_api_url, "/flow_runs/filter", {"limit": 200, "sort": "EXPECTED_START_TIME_DESC"})),
            json.dumps(api(prefect_api_url, "/task_runs/filter", {"limit": 200, "sort": "EXPECTED_START_TIME_DESC"})),
        ]
        dumps += [f.read_text(errors="ignore") for f in (tmp_path / "data").rglob("*") if f.suffix in (".json", ".csv")]
        assert not [d for d in dumps if secret in d], "the API key leaked"
    finally:
        OpenRouterCredentials.load("leaktest")._block_document_id  # noqa: B018 - exists
        subprocess.run(
            [str(Path(sys.executable).with_name("prefect")), "block", "delete", "openrouter-credentials/leaktest"],
            env={**os.environ, "PREFECT_API_URL": prefect_api_url},
            capture_output=True,
            timeout=60,
            check=False,
        )


def test_train_and_evaluate_flows_on_a_tiny_sdxl(prefect_api_url: str, tiny_sdxl: Path, tmp_path: Path) -> None:
    started = datetime.now(UTC)
    from PIL import Image

    from flows.params import EvaluateParams
    from flows.stages import evaluate_flow, train_flow

    base = tiny_sdxl
    p = paths(tmp_path)
    data = Path(p.data_root)
    shutil.copytree(data / "input_raw", data / "cleaned")
    kohya = data / "augment" / "kohya" / "3_ohwx woman"
    kohya.mkdir(parents=True)
    for n in ("obama.jpg", "obama2.jpg"):
        Image.open(face(n)).convert("RGB").resize((80, 80)).save(kohya / n.replace(".jpg", ".png"))
        (kohya / n.replace(".jpg", ".txt")).write_text("ohwx woman, lower")
    train = tiny_train(base)
    samples = {"sample_every": 2, "sample_prompts": ["ohwx woman"], "sample_steps": 2, "sample_resolution": 64}
    train.overrides.update(samples)
    result = train_flow(train, p)
    lora = Path(p.models_root) / "lora" / "influencer_lora.safetensors"
    assert result.steps == 2 and result.output == str(lora) and lora.is_file()
    assert len(result.samples) == 1 and Path(result.samples[0]).is_file()
    ev = evaluate_flow(EvaluateParams(samples=2, steps=2, size=64, backend="dlib"), p, train)
    assert len(ev.candidates) == 3 and sum(c["best"] for c in ev.candidates) == 1  # 2 checkpoints + final
    artifacts = artifacts_since(prefect_api_url, started, "train-progress", "identity-evaluation", "train-samples")
    assert {"train-progress", "identity-evaluation", "train-samples"} <= set(artifacts)
    sample_md = artifacts["train-samples"]["data"]
    assert "samples at step 2" in sample_md and "data:image/jpeg;base64," in sample_md


def test_generate_until_n_accepted_in_rounds_then_budget_stops_cleanly(
    prefect_api_url: str, env: StubOpenRouter, tmp_path: Path
) -> None:
    from flows.params import QCParams
    from flows.rounds import generate_until_flow

    env.image_mix = {"persona": 0.5, "other": 0.5}
    p = paths(tmp_path)
    shutil.copytree(Path(p.data_root) / "input_raw", Path(p.data_root) / "cleaned")
    gen = GenerateParams(per_scene=1, limits=limits(), use_references=False)
    result = generate_until_flow(8, gen, QCParams(backend="dlib"), p, max_rounds=6, downweight_failing=True)
    out = Path(p.data_root) / "synth_openrouter"
    images = list(out.glob("*.png"))
    assert result.stopped == "target" and result.accepted >= 8 and len(result.rounds) >= 2
    assert len(env.paid_requests) == chat_calls(env) == len(images)  # every paid image is a new image
    assert sum(r.generated for r in result.rounds) == len(images)
    assert (Path(p.data_root) / "text" / "prompt_bank.adjusted.yaml").is_file()

    budget = env.image_cost * 9.5  # already spent nothing in this new workspace: 9 images fit
    q = tmp_path / "b"
    p2 = paths(q)
    shutil.copytree(Path(p2.data_root) / "input_raw", Path(p2.data_root) / "cleaned")
    paid = len(env.paid_requests)
    gen2 = GenerateParams(per_scene=1, limits=limits(), use_references=False, budget_usd=budget)
    result = generate_until_flow(100, gen2, QCParams(backend="dlib"), p2, max_rounds=6)
    assert result.stopped == "budget" and result.spent_usd <= budget
    assert len(env.paid_requests) - paid == 9 == len(list((Path(p2.data_root) / "synth_openrouter").glob("*.png")))


def test_hybrid_reports_cost_per_accepted_and_drift(prefect_api_url: str, env: StubOpenRouter, tmp_path: Path) -> None:
    started = datetime.now(UTC)
    p = HybridParams(
        paths=paths(tmp_path),
        generate=GenerateParams(per_scene=1, limits=limits()),
        run_augment=False,
        run_train=False,
        run_evaluate=False,
    )
    result = hybrid_flow(p)
    analytics = result.analytics
    assert analytics.spend_usd == pytest.approx(6 * env.image_cost)
    accepted = result.qc.accepted
    assert analytics.accepted == accepted
    if accepted:
        assert analytics.cost_per_accepted_usd == pytest.approx(6 * env.image_cost / accepted)
    assert {"cost-per-accepted", "prompt-drift"} <= set(
        artifacts_since(prefect_api_url, started, "cost-per-accepted", "prompt-drift")
    )


def test_retrain_promotes_only_when_identity_improves(
    prefect_api_url: str, env: StubOpenRouter, tiny_sdxl: Path, tmp_path: Path
) -> None:
    import yaml

    from ai_influencer.analytics.history import IdentityHistory
    from flows.params import AugmentParams, EvaluateParams, QCParams
    from flows.retrain import RetrainParams, retrain_flow

    base = tiny_sdxl
    p = paths(tmp_path)
    shutil.copytree(Path(p.data_root) / "input_raw", Path(p.data_root) / "cleaned")
    train = tiny_train(base)
    params = RetrainParams(
        paths=p,
        target_accepted=2,
        generate=GenerateParams(per_scene=1, limits=limits(), use_references=False),
        qc=QCParams(backend="dlib"),
        augment=AugmentParams(size=64),
        train=train,
        evaluate=EvaluateParams(samples=2, steps=2, size=64, backend="dlib"),
    )
    live = Path(p.models_root) / "lora" / "influencer_lora.safetensors"
    first = retrain_flow(params)
    assert first.promotion.promoted and live.is_file() and first.promotion.previous is None
    live_bytes = live.read_bytes()

    # The same data again: the new candidate scores the same as the live LoRA (no face in tiny-SDXL output),
    # so it does not beat it; the live file stays as it was.
    second = retrain_flow(params)
    assert not second.promotion.promoted and "kept the live LoRA" in second.promotion.reason
    assert live.read_bytes() == live_bytes
    hist = IdentityHistory(Path(p.models_root) / "lora" / "identity_history.sqlite")
    rows = hist.rows()
    assert len(rows) == 3 + 4 and sum(r.promoted for r in rows) == 1  # 2 ckpts + final, then + live
    deployments = {d["name"]: d for d in yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]}
    cron = deployments["retrain-weekly"]["schedules"][0]
    assert cron["cron"] == "0 3 * * 1" and cron["timezone"] == "Europe/Rome"


def test_a_new_code_version_misses_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Results computed by older code are not served to newer code: the version is in every key."""
    import ai_influencer
    from shared_limits import caching

    (tmp_path / "a.png").write_bytes(b"same input")
    key = caching.fingerprint(tmp_path, extra=("qc", 0.34))
    assert caching.fingerprint(tmp_path, extra=("qc", 0.34)) == key
    caching.code_version.cache_clear()
    monkeypatch.setattr(ai_influencer, "__version__", ai_influencer.__version__ + ".post1")
    try:
        assert caching.fingerprint(tmp_path, extra=("qc", 0.34)) != key
    finally:
        caching.code_version.cache_clear()


def test_plan_cache_is_per_workspace(prefect_api_url: str, env: StubOpenRouter, tmp_path: Path) -> None:
    """A brand-new data folder was handed another workspace's cached storyboard (same bank, same model):
    the result store is shared by every workspace of a Prefect home. Within a workspace a re-run pays nothing."""
    from flows.params import PlanParams
    from flows.stages import plan_flow

    one, two = paths(tmp_path / "one", refs=False), paths(tmp_path / "two", refs=False)
    calls = plan_calls(env)
    plan_flow(PlanParams(), one)
    plan_flow(PlanParams(), one)
    assert plan_calls(env) == calls + 1, "a re-run in the same workspace is served from the cache"
    plan_flow(PlanParams(), two)
    assert plan_calls(env) == calls + 2, "a new workspace plans for itself"
    assert (tmp_path / "two" / "data" / "text" / "storyboard.json").is_file()
