"""Generation planned by slot (scene x index), several images per request, seeds, short answers, the
reference set an image was made with, and the content hash that vouches for an image on disk."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from ai_influencer import usecases
from ai_influencer.costs import CostLedger
from ai_influencer.dataset.manifest import read_sidecars
from ai_influencer.openrouter import OpenRouterClient
from ai_influencer.options import GenerateOptions
from tests.conftest import REPO, TEST_KEY
from tests.support.assets import face
from tests.support.openrouter_stub import StubOpenRouter

BANK = REPO / "prompt_bank" / "default.yaml"
SEEDREAM = "bytedance-seed/seedream-4.5"
GEMINI = "google/gemini-2.5-flash-image"


def plan(out: Path, *, n: int = 4, per_scene: int = 4, seed: int | None = None, model: str = SEEDREAM,
         refs: Path | None = None, regenerate: bool = False) -> usecases.RequestPlan:  # fmt: skip
    stage = GenerateOptions(model=model, per_scene=per_scene, n=n, seed=seed, regenerate=regenerate)
    return usecases.plan_requests(BANK, out, stage, references=refs)


def run(client: OpenRouterClient, out: Path, p: usecases.RequestPlan, **kw: object) -> usecases.GenerateOutcome:
    return usecases.generate(client, p, out, rate_per_s=None, **kw)  # type: ignore[arg-type]


def posts(stub: StubOpenRouter) -> list:
    return [r for r in stub.requests if r.path.endswith("/images")]


def refs_dir(tmp: Path, *names: str) -> Path:
    folder = tmp / "refs"
    folder.mkdir(exist_ok=True)
    for name in names:
        shutil.copy(face(name), folder / name)
    return folder


@pytest.fixture
def images_only() -> StubOpenRouter:
    with StubOpenRouter(valid_keys=[TEST_KEY], chat_images=False) as stub:
        yield stub


@pytest.fixture
def c(images_only: StubOpenRouter) -> OpenRouterClient:
    with OpenRouterClient(TEST_KEY, base_url=images_only.base_url, backoff_initial=0.01, retry_cap=0.2) as client:
        yield client


def test_one_request_per_n_slots_one_file_and_sidecar_per_image_and_a_rerun_pays_nothing(
    images_only: StubOpenRouter, c: OpenRouterClient, tmp_path: Path
) -> None:
    p = plan(tmp_path)
    assert (len(p.slots), len(p.todo), p.images_todo) == (24, 6, 24)
    done = run(c, tmp_path, p)
    assert done.images() == 24 and len(posts(images_only)) == 6 and images_only.paid_images == 24
    records, problems = read_sidecars(tmp_path)
    assert not problems and len(records) == 24
    by_request: dict[str, list[int]] = {}
    for r in records:
        by_request.setdefault(r.request_key or "", []).append(r.answer_index or 0)
        assert r.route == "images" and r.asked == 4 and r.returned == 4 and r.sha256
        with Image.open(tmp_path / r.file) as im:
            im.load()  # fully decodable
    assert sorted(sorted(v) for v in by_request.values()) == [[0, 1, 2, 3]] * 6
    assert {(r.scene, r.variant) for r in records} == {(s.scene, s.index) for s in p.slots}, "one image per slot"
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["routes"] == {"images": 24} and manifest["short_answers"] == 0
    again = plan(tmp_path)
    assert again.todo == [] and again.already_done == 24
    assert run(c, tmp_path, again).images() == 0 and len(posts(images_only)) == 6, "a rerun pays nothing"


def test_a_short_answer_is_recorded_short_and_a_resume_asks_only_for_the_owed_slots(tmp_path: Path) -> None:
    with (
        StubOpenRouter(valid_keys=[TEST_KEY], answer_cap=3) as stub,
        OpenRouterClient(TEST_KEY, base_url=stub.base_url) as c,
    ):
        done = run(c, tmp_path, plan(tmp_path, seed=11))
        assert done.images() == 18 and done.short == 6 and stub.paid_images == 18
        manifest = json.loads((tmp_path / "manifest.json").read_text())
        assert manifest["count"] == 18 and manifest["short_answers"] == 6
        assert all(i["asked"] == 4 and i["returned"] == 3 for i in manifest["images"])
        first_seeds = {r.body["seed"] for r in posts(stub)}
        stub.answer_cap = None
        resume = plan(tmp_path, seed=11)
        assert (len(resume.todo), resume.images_todo, resume.already_done) == (6, 6, 18)
        run(c, tmp_path, resume)
        asked = [r.body for r in posts(stub)[6:]]
        assert [b.get("n", 1) for b in asked] == [1] * 6, "only the owed slot of each group is asked for"
        assert not {b["seed"] for b in asked} & first_seeds, "a resumed group asks a new question"
        assert stub.paid_images == 24 and len(read_sidecars(tmp_path)[0]) == 24


def test_the_seed_gives_each_slot_a_deterministic_request_seed_recorded_in_sidecar_and_manifest(
    tmp_path: Path,
) -> None:
    bodies, files = [], []
    for name in ("a", "b"):
        out = tmp_path / name
        with StubOpenRouter(valid_keys=[TEST_KEY]) as stub, OpenRouterClient(TEST_KEY, base_url=stub.base_url) as c:
            run(c, out, plan(out, n=2, per_scene=2, seed=5))
            bodies.append(sorted(json.dumps(r.body, sort_keys=True) for r in posts(stub)))
        files.append(sorted((p.name, p.read_bytes()) for p in out.glob("*.png")))
    assert bodies[0] == bodies[1], "the same plan asks the same question"
    assert files[0] == files[1], "and a deterministic endpoint answers the same images"
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert all(i["seed"] == 5 and isinstance(i["request_seed"], int) for i in manifest["images"])
    assert len({i["request_seed"] for i in manifest["images"]}) == 6, "one seed per request (its first slot)"
    other = plan(tmp_path / "c", n=2, per_scene=2, seed=6)
    assert {s.key for s in other.slots}.isdisjoint(
        {s.key for s in plan(tmp_path / "a", n=2, per_scene=2, seed=5).slots}
    )


def test_an_endpoint_without_seed_gets_none_sent(
    images_only: StubOpenRouter, c: OpenRouterClient, tmp_path: Path
) -> None:
    p = plan(tmp_path, model=GEMINI, n=1, per_scene=1, seed=3)
    route = usecases.prepare_route(c, p)
    assert route.seed_range is None and any("takes no seed" in n for n in route.notes)
    run(c, tmp_path, p, route=route)
    assert all("seed" not in r.body for r in posts(images_only))


def test_adding_a_reference_photo_keeps_every_paid_image_in_its_slot_unless_regenerate(
    images_only: StubOpenRouter, c: OpenRouterClient, tmp_path: Path
) -> None:
    out = tmp_path / "synth"
    refs = refs_dir(tmp_path, "obama.jpg", "obama2.jpg")
    run(c, out, plan(out, n=2, per_scene=2, refs=refs))
    paid = images_only.paid_images
    first = {r.file: r for r in read_sidecars(out)[0]}
    assert all(r.references == ["obama.jpg", "obama2.jpg"] for r in first.values())

    refs_dir(tmp_path, "obama3.jpg")  # one more reference photo
    kept = plan(out, n=2, per_scene=2, refs=refs)
    assert kept.todo == [] and kept.kept == 12 and kept.already_done == 12
    assert "12 made with an earlier reference set, kept" in kept.summary()

    redo = plan(out, n=2, per_scene=2, refs=refs, regenerate=True)
    assert redo.images_todo == 12 and redo.regenerating == 12
    run(c, out, redo)
    assert images_only.paid_images == paid + 12
    now = read_sidecars(out)[0]
    assert len(now) == 12 and all(r.references == ["obama.jpg", "obama2.jpg", "obama3.jpg"] for r in now)
    superseded = out / ".superseded"
    assert {p.name for p in superseded.glob("*.png")} == set(first), "the older images are set aside, not lost"
    assert plan(out, n=2, per_scene=2, refs=refs, regenerate=True).todo == []


def test_a_same_size_corrupted_image_is_quarantined_and_its_slot_generated_again(
    images_only: StubOpenRouter, c: OpenRouterClient, tmp_path: Path
) -> None:
    run(c, tmp_path, plan(tmp_path, n=2, per_scene=2))
    victim = sorted(tmp_path.glob("*.png"))[0]
    data = bytearray(victim.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 64] = bytes(64)  # damaged in place, same size
    victim.write_bytes(bytes(data))
    again = plan(tmp_path, n=2, per_scene=2)
    assert again.images_todo == 1 and len(again.todo) == 1 and again.todo[0].n == 1
    assert (tmp_path / ".quarantine" / victim.name).is_file()
    assert "content hash" in (tmp_path / ".quarantine" / (victim.name + ".reason.txt")).read_text()
    run(c, tmp_path, again)
    with Image.open(victim) as im:
        im.load()
    assert len(read_sidecars(tmp_path)[0]) == 12


def test_the_budget_counts_images_and_their_price(
    images_only: StubOpenRouter, c: OpenRouterClient, tmp_path: Path
) -> None:
    ledger = CostLedger(budget_usd=0.35)
    done = usecases.generate(c, plan(tmp_path), tmp_path, rate_per_s=None, concurrency=1, ledger=ledger)
    assert ledger.images == 8 and ledger.spent_usd == pytest.approx(0.32), "two requests of 4 images at $0.04"
    assert done.images("budget") == 16 and len(posts(images_only)) == 2


def test_an_unpriced_short_answer_settles_at_the_price_lines_of_the_images_that_came(tmp_path: Path) -> None:
    with (
        StubOpenRouter(valid_keys=[TEST_KEY], report_cost=False, answer_cap=2) as stub,
        OpenRouterClient(TEST_KEY, base_url=stub.base_url) as c,
    ):
        ledger = CostLedger(budget_usd=10.0)
        usecases.generate(c, plan(tmp_path, per_scene=4), tmp_path, rate_per_s=None, ledger=ledger)
    assert ledger.unpriced == 6 and ledger.images == 12
    assert ledger.spent_usd == pytest.approx(12 * 0.04), "2 images per answer, priced by output_image lines"
    records = read_sidecars(tmp_path)[0]
    assert all(r.cost_usd is None and r.estimate_usd == pytest.approx(0.04) for r in records)


def test_a_model_only_chat_serves_works_through_the_chat_route_and_the_manifest_says_so(
    stub: StubOpenRouter, client: OpenRouterClient, tmp_path: Path
) -> None:
    done = run(client, tmp_path, plan(tmp_path, model="acme/chat-painter", n=1, per_scene=1))
    assert done.images() == 6 and not posts(stub)
    assert sum("modalities" in (r.body or {}) for r in stub.requests) == 6
    assert json.loads((tmp_path / "manifest.json").read_text())["routes"] == {"chat": 6}


def test_the_cost_report_puts_the_estimate_beside_the_billed_total(
    images_only: StubOpenRouter, c: OpenRouterClient, tmp_path: Path
) -> None:
    from ai_influencer.analytics.report import Joined, cost_report

    refs = refs_dir(tmp_path, "obama.jpg")
    out = tmp_path / "synth"
    p = plan(out, refs=refs)
    run(c, out, p)
    (total,) = cost_report([Joined(r, None) for r in read_sidecars(out)[0]])["total"]
    assert total.spend_usd == pytest.approx(images_only.usage_total)
    assert total.estimate_usd == pytest.approx(total.spend_usd) == pytest.approx(24 * 0.04 + 6 * 0.002)
