"""Content-addressed, resumable generation against the stub server."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

from ai_influencer.adaptive_pacing import AdaptiveRate
from ai_influencer.dataset.manifest import rebuild_manifest, sidecar_path
from ai_influencer.generation.engine import build_requests, generate_batch, generate_one
from ai_influencer.openrouter import OpenRouterClient
from ai_influencer.prompt_bank import compose_prompts, load_prompt_bank
from tests.conftest import REPO, TEST_KEY
from tests.support.assets import face
from tests.support.openrouter_stub import StubOpenRouter

MODEL = "google/gemini-2.5-flash-image"


def requests_for(per_scene: int = 1, refs: tuple[Path, ...] = ()) -> list:
    bank = load_prompt_bank(REPO / "prompt_bank" / "default.yaml")
    return build_requests(compose_prompts(bank, per_scene, seed=3), MODEL, "1024x1024", refs)


def test_batch_writes_images_sidecars_manifest_and_rerun_pays_nothing(
    client: OpenRouterClient, stub: StubOpenRouter, tmp_path: Path
) -> None:
    reqs = requests_for(2)
    outcomes = generate_batch(client, reqs, tmp_path, concurrency=4)
    assert sum(o.paid for o in outcomes) == len(reqs) == 12
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["count"] == 12
    assert manifest["total_cost_usd"] == round(12 * stub.image_cost, 6)
    entry = manifest["images"][0]
    assert {"scene", "lighting", "pose", "outfit", "prompt", "cost_usd"} <= entry.keys()
    assert (tmp_path / entry["file"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    paid_before = len(stub.paid_requests)
    again = generate_batch(client, reqs, tmp_path, concurrency=4)
    assert {o.status for o in again} == {"skipped"}
    assert len(stub.paid_requests) == paid_before


def test_key_depends_on_request_content() -> None:
    a = requests_for()
    b = requests_for(refs=(face("obama.jpg"),))
    assert a[0].key != b[0].key
    assert a[0].key == requests_for()[0].key


def test_kill_between_image_and_sidecar_recovers_without_paying(
    client: OpenRouterClient, stub: StubOpenRouter, tmp_path: Path
) -> None:
    req = requests_for()[0]
    first = generate_one(client, req, tmp_path)
    sidecar_path(tmp_path, req.slots[0].file_key).unlink()  # as if killed right after the image rename
    paid = len(stub.paid_requests)
    again = generate_one(client, req, tmp_path)
    assert again.status == "recovered" and again.record is not None and again.record.recovered
    assert again.record.file == first.record.file
    assert len(stub.paid_requests) == paid
    assert rebuild_manifest(tmp_path)["count"] == 1


def test_one_failing_image_does_not_stop_the_batch(stub: StubOpenRouter, tmp_path: Path) -> None:
    c = OpenRouterClient(TEST_KEY, base_url=stub.base_url, max_retries=0)
    stub.inject("403", path="/images")  # moderation on one request
    outcomes = generate_batch(c, requests_for(), tmp_path, concurrency=1)
    assert [o.status for o in outcomes].count("failed") == 1
    assert [o.status for o in outcomes].count("generated") == 5
    assert "moderation" in next(o.error for o in outcomes if o.error)


def test_bad_key_stops_new_requests_early(stub: StubOpenRouter, tmp_path: Path) -> None:
    c = OpenRouterClient("sk-or-wrong", base_url=stub.base_url)
    outcomes = generate_batch(c, requests_for(2), tmp_path, concurrency=1)
    assert all(o.status == "failed" for o in outcomes)
    assert sum(r.path.endswith("/images") for r in stub.requests) == 1


def test_rate_ceiling_paces_request_starts(client: OpenRouterClient, stub: StubOpenRouter, tmp_path: Path) -> None:
    generate_batch(client, requests_for()[:4], tmp_path, concurrency=4, pacer=AdaptiveRate(1 / 0.3))
    times = sorted(r.t for r in stub.requests if r.path.endswith("/images"))
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert min(gaps) >= 0.25


def test_the_pacer_spaces_retries_too(tmp_path: Path) -> None:
    # Retry-After: 0 makes the client retry at once; only the pace keeps the retry off the limit.
    with StubOpenRouter(valid_keys=[TEST_KEY], retry_after="0") as stub:
        stub.inject("429", "429", path="/images")
        with OpenRouterClient(TEST_KEY, base_url=stub.base_url) as c:
            outcomes = generate_batch(c, requests_for()[:3], tmp_path, concurrency=3, pacer=AdaptiveRate(1 / 0.3))
        times = sorted(r.t for r in stub.requests if r.path.endswith("/images"))
    assert [o.status for o in outcomes] == ["generated"] * 3
    assert len(times) == 5  # two of them were 429s, retried
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert min(gaps) >= 0.25
