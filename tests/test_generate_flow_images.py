"""The generate flow on the Image API under a real Prefect server: the plan and its price published
before the first paid request, n images per request, and generate-until-N counting images."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

from ai_influencer.openrouter import UnsupportedParameterError
from ai_influencer.qc.analysis import EngineSpec
from ai_influencer.qc.stage import run_qc
from flows.generate import generate_flow
from flows.hybrid import hybrid_flow
from flows.params import GenerateParams, HybridParams
from tests.support.openrouter_stub import StubOpenRouter
from tests.test_flows import env, limits, paths  # noqa: F401 (fixtures)

SEEDREAM = "bytedance-seed/seedream-4.5"


def posts(stub: StubOpenRouter) -> list:
    return [r for r in stub.requests if r.path.endswith("/images")]


def test_the_flow_publishes_plan_and_estimate_before_its_first_request_and_pays_one_request_per_4_images(
    prefect_api_url: str,
    env: StubOpenRouter,  # noqa: F811
    tmp_path: Path,
) -> None:
    started = datetime.now(UTC)
    params = GenerateParams(model=SEEDREAM, per_scene=4, n=4, seed=9, limits=limits(), use_references=False)
    result = generate_flow(params, paths(tmp_path, refs=False))
    assert result.generated == 24 and result.requests_paid == 6 and result.short_answers == 0
    assert result.route == "images" and result.spent_usd == pytest.approx(result.estimate_usd) == 0.96
    with get_client(sync_client=True) as client:
        plans = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["generate-plan"])))
    (plan,) = [a for a in plans if a.created and a.created >= started]  # this run's: the server is the session's
    assert "24 images in 6 requests" in plan.data and "$0.9600" in plan.data and "output_image $0.04/image" in plan.data
    first_request = min(r.wall for r in posts(env))
    assert plan.created is not None and plan.created.timestamp() < first_request
    assert isinstance(plan.created, datetime)


def test_an_unsupported_parameter_fails_the_flow_before_any_paid_request(
    prefect_api_url: str,
    env: StubOpenRouter,  # noqa: F811
    tmp_path: Path,
) -> None:
    with pytest.raises(UnsupportedParameterError, match=r"^--n 4: google/gemini-2.5-flash-image accepts n = 1$"):
        generate_flow(GenerateParams(per_scene=1, n=4, limits=limits(), use_references=False), paths(tmp_path))
    assert not posts(env) and not env.paid_requests


def test_generate_until_n_with_4_images_per_request_checks_every_image(
    prefect_api_url: str,
    env: StubOpenRouter,  # noqa: F811
    tmp_path: Path,
) -> None:
    env.image_mix = {"persona": 0.5, "other": 0.3, "blurred": 0.2}
    env.latency, env.latency_paths = 0.2, ("/images",)
    p = paths(tmp_path)
    out = hybrid_flow(
        HybridParams(
            paths=p, run_plan=False, run_augment=False, run_train=False, run_evaluate=False, target_accepted=6,
            max_rounds=2,
            generate=GenerateParams(model=SEEDREAM, per_scene=8, n=4, use_references=False, limits=limits(20, 4)),
        )
    )  # fmt: skip
    result = out.generate
    assert result.stopped == "target" and result.accepted >= 6
    first = result.rounds[0]
    assert first.generated < 48 and len(posts(env)) * 4 >= first.generated
    ws = p.workspace()
    on_disk = len(list(ws.synth.glob("*.png")))
    assert on_disk == first.generated
    batch = run_qc(ws.cleaned, ws.synth, tmp_path / "batch", spec=EngineSpec("dlib"), workers=2)
    assert batch.counts["accepted"] == result.accepted, "every image of every answer went through QC"
