"""The identity gate on real photos: the calibration set (tests/assets/faces-calibration) plus three older test
photos, real dlib models, references made by the real prepare stage. bench/identity.py prints the numbers;
these tests hold the acceptance lines of issue 15 at the shipped defaults."""

from __future__ import annotations

import csv
import itertools
import random
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
from PIL import Image

from ai_influencer.qc.analysis import Analysis, EngineSpec
from ai_influencer.qc.decision import QCThresholds, decide
from ai_influencer.qc.pool import analyze_many
from ai_influencer.qc.report import LEGACY_FIELDS, REPORT_FIELDS, read_report
from ai_influencer.qc.stage import run_qc
from ai_influencer.vision.faces import DlibEngine, scorer_for
from tests.support.calibration import (
    MIN_BLUR_TEST_SIDE,
    SOFT_ORIGINALS,
    Variant,
    calibration_photos,
    extra_photos,
    make_variants,
    persona_runs,
    prepared_references,
    representatives,
)

DLIB = scorer_for("dlib")


class Calibration:
    def __init__(self, root: Path) -> None:
        photos = calibration_photos() + extra_photos()
        self.variants: list[Variant] = make_variants(photos, root / "candidates")
        found = analyze_many(
            [v.path for v in self.variants], engine=None, spec=EngineSpec("dlib"), workers=2, max_pixels=60_000_000
        )
        self.analyses: dict[str, Analysis] = {a.path.name: a for a in found}
        self.reps = representatives(photos)
        self.refs = prepared_references(DlibEngine(), self.reps, root / "refs")
        self.runs = persona_runs(self.reps)

    def of(self, v: Variant) -> Analysis:
        return self.analyses[v.path.name]

    def candidates(self, pair: tuple[str, str], kinds: tuple[str, ...]) -> list[Variant]:
        """Every file that does not show one of the reference pictures."""
        return [v for v in self.variants if v.kind in kinds and not set(v.source.pictures) & set(pair)]


@pytest.fixture(scope="module")
def cal(tmp_path_factory: pytest.TempPathFactory) -> Calibration:
    return Calibration(tmp_path_factory.mktemp("calibration"))


def test_every_person_with_two_pictures_is_a_persona(cal: Calibration) -> None:
    personas = {person for person, _ in cal.runs}
    assert personas == {
        "alex_lacamoire", "anthony_hopkins", "biden", "eric_clapton", "john_lennon", "kit_harington", "obama",
        "rose_leslie",
    }  # fmt: skip
    assert len(cal.runs) == 14
    for picture, ref in cal.refs.items():  # made by the prepare stage: 1024 px face crops with a face in them
        assert ref.embedding is not None and ref.path.suffix == ".png", picture
        with Image.open(ref.path) as im:
            assert im.size == (1024, 1024)


def test_no_false_accept_between_different_people_at_the_defaults(cal: Calibration) -> None:
    """Every persona, every pair of its pictures as references, every other photo (one-face and group)."""
    checked = 0
    for persona, pair in cal.runs:
        cands = cal.candidates(pair, ("original",))
        rows, n_refs = decide([cal.refs[p] for p in pair], [cal.of(v) for v in cands], DLIB, QCThresholds())
        assert n_refs == 2
        for v in cands:
            if v.source.identity != persona:
                checked += 1
                assert rows[v.path.name].verdict != "accepted", (persona, pair, rows[v.path.name])
    assert checked > 300


def test_same_person_sharp_photos_are_accepted(cal: Calibration) -> None:
    cases, accepted, misses = 0, 0, []
    for persona, pair in cal.runs:
        cands = cal.candidates(pair, ("original",))
        rows, _ = decide([cal.refs[p] for p in pair], [cal.of(v) for v in cands], DLIB, QCThresholds())
        for v in cands:
            if v.source.identity == persona and not v.source.group and v.source.name not in SOFT_ORIGINALS:
                cases += 1
                if rows[v.path.name].verdict == "accepted":
                    accepted += 1
                elif rows[v.path.name].duplicate_of:  # another file of the same photograph was kept instead
                    accepted += rows[rows[v.path.name].duplicate_of].verdict == "accepted"
                else:
                    misses.append((pair, rows[v.path.name]))
    assert cases >= 10  # 11 here: the calibration set is small on purpose
    assert accepted / cases >= 0.9, misses


def test_blurred_copies_are_rejected_at_every_resolution(cal: Calibration) -> None:
    """Gaussian blur of 0.4 % and 1 % of the long side, photos from 250 to 2333 px; the originals pass."""
    sides = set()
    for v in cal.variants:
        a = cal.of(v)
        if v.source.group:
            continue
        with Image.open(v.source.path) as im:
            side = max(im.size)
        if side < MIN_BLUR_TEST_SIDE:
            continue  # a 0.4 % blur of a 112 px crop is under half a pixel: not a blur anyone can see
        sides.add(side)
        if v.kind in ("blur04", "blur10"):
            assert a.embedding is None or a.sharpness < 80, (v.path.name, a.sharpness)
        elif v.kind == "original" and v.source.name not in SOFT_ORIGINALS:
            assert a.sharpness >= 80, (v.path.name, a.sharpness)
    assert min(sides) <= 250 and max(sides) >= 2000
    # The same photograph at 720p and 240p: both sharp, both of their blurred copies not.
    for name in ("obama_3_720p", "obama_3_240p"):
        assert cal.analyses[f"{name}.jpg"].sharpness >= 80
        assert cal.analyses[f"{name}_blur04.png"].sharpness < 80 > cal.analyses[f"{name}_blur10.jpg"].sharpness
    # And QC rejects them, with the reason.
    pair = ("kit_harington_1", "kit_harington_2")
    cands = cal.candidates(pair, ("original", "blur04", "blur10"))
    rows, _ = decide([cal.refs[p] for p in pair], [cal.of(v) for v in cands], DLIB, QCThresholds())
    assert rows["kit_harington_3.jpg"].verdict == "accepted"
    for blurred in ("kit_harington_3_blur04.png", "kit_harington_3_blur10.jpg"):
        assert rows[blurred].verdict == "rejected"
    assert "sharpness" in rows["kit_harington_3_blur04.png"].reason


def test_the_original_is_kept_over_its_degraded_copies_whatever_the_order(cal: Calibration) -> None:
    kinds = ("original", "dup", "near", "reenc", "blur04")
    for pair, original in (
        (("kit_harington_1", "kit_harington_2"), "kit_harington_3.jpg"),
        (("obama3", "obama_portrait"), "obama_2.jpg"),
        (("alex_lacamoire_1", "alex_lacamoire_3"), "alex_lacamoire_2.jpg"),
    ):
        stem = Path(original).stem
        cands = [cal.of(v) for v in cal.candidates(pair, kinds) if v.source.name == original]
        assert len(cands) == 5
        refs = [cal.refs[p] for p in pair]
        first, _ = decide(refs, cands, DLIB, QCThresholds())
        assert first[original].verdict == "accepted", first[original]
        for copy in (f"{stem}_dup.jpg", f"{stem}_near.jpg", f"{stem}_q80.jpg"):
            row = first[copy]
            assert row.verdict == "rejected" and row.duplicate_of == original, row
            assert f"of {original}, kept that one (" in row.reason
        assert "larger face" in first[f"{stem}_near.jpg"].reason or "detail" in first[f"{stem}_near.jpg"].reason
        assert "less compressed" in first[f"{stem}_q80.jpg"].reason
        assert "identical copy" in first[f"{stem}_dup.jpg"].reason
        for seed in range(6):  # the arrival order of a streamed run must not matter
            shuffled = cands[:]
            random.Random(seed).shuffle(shuffled)
            again, _ = decide(refs[::-1] if seed % 2 else refs, shuffled, DLIB, QCThresholds())
            assert again == first


def test_a_downscaled_copy_never_stands_in_for_a_blurred_original(cal: Calibration) -> None:
    """lin_manuel_miranda_1.png is a soft video still; its half-size copy is sharp per pixel but no better."""
    a = cal.analyses["lin_manuel_miranda_1.png"]
    near = cal.analyses["lin_manuel_miranda_1_near.jpg"]
    assert a.sharpness < 80 <= near.sharpness
    rows, _ = decide([a], [a, near], DLIB, QCThresholds())  # its own photo as reference: identity is not the point
    assert (
        rows["lin_manuel_miranda_1.png"].verdict == "rejected"
        and "sharpness" in rows["lin_manuel_miranda_1.png"].reason
    )
    assert rows["lin_manuel_miranda_1_near.jpg"].verdict == "rejected"
    assert "the better copy, itself rejected" in rows["lin_manuel_miranda_1_near.jpg"].reason


def test_an_original_that_fails_identity_speaks_for_its_copies(cal: Calibration) -> None:
    """A degraded copy (half size, JPEG q80) can score a little higher than its original: a smaller, smoother face.
    With minsim between the two the copy alone would pass; grouped over every one-face picture, whatever its
    verdict, the original is the best copy and its rejection holds for the copy too."""
    found = []
    for persona, pair in cal.runs:
        refs = [cal.refs[p] for p in pair]
        for v in cal.candidates(pair, ("original",)):
            near = cal.analyses.get(f"{v.path.stem}_near.jpg")
            if v.source.identity != persona or near is None or near.embedding is None or cal.of(v).embedding is None:
                continue
            probe, _ = decide(refs, [cal.of(v), near], DLIB, QCThresholds(minsim=0.0, min_margin=None, minblur=0))
            lo, hi = probe[v.path.name].score, probe[near.path.name].score
            if lo is not None and hi is not None and lo < hi:
                found.append((hi - lo, refs, cal.of(v), near, (lo + hi) / 2))
    assert found, "no real photo whose half-size copy scores higher than the original"
    _, refs, original, near, minsim = max(found, key=lambda f: f[0])
    th = QCThresholds(minsim=minsim, minblur=0, agreement_slack=1.0)
    alone, _ = decide(refs, [near], DLIB, th)
    assert alone[near.path.name].verdict == "accepted"  # the copy on its own passes
    rows, _ = decide(refs, [original, near], DLIB, th)
    assert rows[original.path.name].verdict == "rejected" and "identity:" in rows[original.path.name].reason
    assert rows[near.path.name].verdict == "rejected" and rows[near.path.name].duplicate_of == original.path.name
    assert "the better copy, itself rejected" in rows[near.path.name].reason


def test_each_reference_must_agree(cal: Calibration) -> None:
    """References of two people (a user's mistake): the centroid sits between them and matches neither well."""
    refs = [cal.refs["obama_2"], cal.refs["biden_2"]]
    cands = [cal.analyses[n] for n in ("obama3.jpg", "biden_1.jpg", "kit_harington_3.jpg")]
    rows, _ = decide(refs, cands, DLIB, QCThresholds(minsim=0.2))
    for name in ("obama3.jpg", "biden_1.jpg"):
        row = rows[name]
        assert row.score is not None and row.score >= 0.2, row  # the centroid alone would let it through
        assert row.verdict == "rejected" and "only 1 of 2 references" in row.reason, row
        assert len(row.ref_scores.split()) == 2


def test_a_face_closer_to_another_person_in_the_batch_is_rejected(cal: Calibration) -> None:
    """The margin rule with real faces. Against John Lennon's references Biden's two photos score 0.07 and 0.09:
    with minsim between them, the higher one passes the score alone, although it is far closer to Biden's other
    photo (judged another person) than to Lennon. The margin rule rejects it; Lennon himself stays in. The two
    scores are 0.02 apart, so the impostor gap is set to 0 here (the next test is about the gap)."""
    refs = [cal.refs["lennon_1"], cal.refs["lennon_2"]]
    names = ("biden_1.jpg", "biden_2.jpg", "lennon_1_near.jpg")
    cands = [cal.analyses[n] for n in names]
    probe, _ = decide(refs, cands, DLIB, QCThresholds(minsim=0.0, min_margin=None))
    low, high = sorted(names[:2], key=lambda n: probe[n].score)
    assert 0 < probe[low].score < probe[high].score < 0.2, (probe[low], probe[high])
    th = QCThresholds(minsim=(probe[low].score + probe[high].score) / 2, agreement_slack=1.0, impostor_gap=0.0)
    off, _ = decide(refs, cands, DLIB, replace(th, min_margin=None))
    on, _ = decide(refs, cands, DLIB, th)
    assert off[high].verdict == "accepted" and off[low].verdict == "rejected"
    assert on[high].verdict == "rejected" and on[high].nearest_impostor == low
    assert on[high].margin is not None and on[high].margin < -0.2
    assert f"impostor: closer to {low}" in on[high].reason
    lennon = on["lennon_1_near.jpg"]
    assert lennon.verdict == "accepted" and lennon.margin is not None and lennon.margin > 0.5


def test_a_persona_photo_just_under_minsim_does_not_veto_the_persona_s_other_photos(cal: Calibration) -> None:
    """Two of Obama's photos against two other Obama references score 0.62 and 0.65, and 0.92 against each other:
    photos of one person from one day are closer to each other than to references. With minsim between them, the
    lower one fails narrowly. Counted as "another person" it would reject the higher one as its impostor (the old
    rule did); only a face clearly under minsim (by ``impostor_gap``) is an impostor."""
    refs = [cal.refs["obama3"], cal.refs["obama_2"]]
    names = ("obama_1.jpg", "obama_4_small.jpg")
    cands = [cal.analyses[n] for n in names]
    probe, _ = decide(refs, cands, DLIB, QCThresholds(minsim=0.0, min_margin=None, agreement_slack=1.0))
    low, high = sorted(names, key=lambda n: probe[n].score)
    gap = probe[high].score - probe[low].score
    assert 0 < gap < 0.1, (probe[low], probe[high])
    th = QCThresholds(minsim=probe[low].score + gap / 2, agreement_slack=1.0)
    old, _ = decide(refs, cands, DLIB, replace(th, impostor_gap=0.0))
    assert old[high].verdict == "rejected" and f"impostor: closer to {low}" in old[high].reason
    new, _ = decide(refs, cands, DLIB, th)
    assert new[low].verdict == "rejected" and new[low].reason.startswith("identity:")
    assert new[high].verdict == "accepted", new[high].reason
    # the line is the gap: a miss by more than impostor_gap makes the lower photo an impostor again
    assert decide(refs, cands, DLIB, replace(th, impostor_gap=gap / 4))[0][high].verdict == "rejected"


def test_thresholds_are_validated_before_any_work(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"minsim must be between 0 and 1, got 34 .*did you mean 0.34\?"):
        QCThresholds(minsim=34).validate()
    with pytest.raises(ValueError, match="minblur must be a number >= 0"):
        QCThresholds(minblur=-1).validate()
    with pytest.raises(ValueError, match="impostor_gap must be between 0 and 1"):
        QCThresholds(impostor_gap=-0.1).validate()
    with pytest.raises(ValueError, match="max_faces must be >= 1"):
        QCThresholds(max_faces=0).validate()
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="minsim must be between 0 and 1"):
        run_qc(tmp_path / "no-refs", tmp_path / "no-cands", out, thresholds=QCThresholds(minsim=34))
    assert not out.exists()


def test_report_shows_the_evidence_and_old_reports_still_read(cal: Calibration, tmp_path: Path) -> None:
    refs, cands = tmp_path / "refs", tmp_path / "cands"
    shutil.copytree(cal.refs["kit_harington_1"].path.parent, refs)
    for p in refs.iterdir():
        if p.stem not in ("kit_harington_1", "kit_harington_2"):
            p.unlink()
    cands.mkdir()
    for v in cal.variants:
        if v.source.name in ("kit_harington_3.jpg", "alex_lacamoire_1.jpg") and v.kind in ("original", "near"):
            shutil.copy(v.path, cands / v.path.name)
    seen: list[tuple[int, int, str]] = []
    result = run_qc(
        refs, cands, tmp_path / "out", spec=EngineSpec("dlib"), workers=2, on_progress=lambda *a: seen.append(a)
    )
    assert [s[0] for s in seen] == list(range(1, 7)) and {s[1] for s in seen} == {6}
    with result.report.open() as fh:
        table = {r["file"]: r for r in csv.DictReader(fh)}
    assert tuple(next(iter(table.values())).keys()) == REPORT_FIELDS
    kit = table["kit_harington_3.jpg"]
    assert kit["verdict"] == "accepted" and len(kit["ref_scores"].split()) == 2
    assert kit["nearest_impostor"] == "alex_lacamoire_1.jpg" and float(kit["margin"]) > 0.2
    assert kit["compression"] == "JPEG q88" and int(kit["face_px"]) > 150
    assert table["kit_harington_3_near.jpg"]["duplicate_of"] == "kit_harington_3.jpg"
    assert table["alex_lacamoire_1.jpg"]["reason"].startswith("identity: ")
    rows = read_report(result.report)
    assert rows["kit_harington_3.jpg"].margin == float(kit["margin"])
    old = tmp_path / "old.csv"
    old.write_text(",".join(LEGACY_FIELDS) + "\na.jpg,1,0.8,120,,accepted,\n")
    legacy = read_report(old)["a.jpg"]
    assert legacy.score == 0.8 and legacy.ref_scores == "" and legacy.margin is None and legacy.face_px is None


def test_same_person_scores_stay_above_and_other_people_below_across_the_set(cal: Calibration) -> None:
    """The calibration the defaults rest on, as measured here: every sharp same-person case of the 2-reference
    protocol scores >= 0.34 and every other person < 0.25 (bench/identity.py prints the full table)."""
    same, other = [], []
    for persona, pair in cal.runs:
        refs = [cal.refs[p] for p in pair]
        centroid = DLIB.centroid([r.embedding for r in refs])
        for v in cal.candidates(pair, ("original",)):
            a = cal.of(v)
            if a.embedding is None or v.source.group:
                continue
            score = DLIB.identity_score(a.embedding, centroid)
            if v.source.identity == persona:
                if v.source.name not in SOFT_ORIGINALS:
                    same.append(score)
            else:
                other.append(score)
    assert min(same) >= 0.34 and max(other) < 0.25, (min(same), max(other))
    assert len(list(itertools.chain(same, other))) > 300
