"""Review and calibrate (issue 28, domain half) on real photos through the real QC with dlib.

One workspace is built and checked once per module, the way a real one looks: two reference photos of the
persona (Obama) in ``cleaned/``, and the candidates are other pictures: the calibration set's other photos,
mirrored, blurred and resized copies of the persona's non-reference photos, and one generator "echo" of a
reference (mirrored) that QC rejects as its copy. Building it takes about 10 s on two busy cores; each test
works on a copy of it, whose analyses come from the copied cache, so a QC run there takes about a second.
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from ai_influencer import usecases
from ai_influencer.dataset.workspace import Workspace
from ai_influencer.options import QCOptions
from ai_influencer.qc.analysis import EngineSpec
from ai_influencer.qc.decision import QCThresholds
from ai_influencer.qc.report import REPORT_FIELDS, tile_label
from ai_influencer.qc.stage import QCResult
from ai_influencer.qc.stream import StreamingQC
from ai_influencer.review import (
    OverrideError,
    OverrideStore,
    PersonaSettingsError,
    effective_thresholds,
    filter_items,
    review_items,
    set_verdict,
    suggest,
    undo_verdict,
)
from ai_influencer.review import apply as apply_calibration
from ai_influencer.review.calibration import MIN_PER_CLASS, fit_threshold, operating
from ai_influencer.review.overrides import content_digest, inactive
from ai_influencer.review.persona import store_thresholds
from ai_influencer.settings import Settings
from tests.support.review_workspace import ECHO, PERSONA, VARIED, Template, clone
from tests.support.review_workspace import workspace as _workspace

INFLUENCER = str(Path(sys.executable).with_name("influencer"))


def qc(ws: Workspace, minsim: float = 0.34, minblur: float = 80.0) -> QCResult:
    """QC as the CLI runs it: the use case with the workspace's cache and overrides."""
    job = usecases.QCJob.for_options(
        ws.cleaned, ws.synth, ws.qc_passed, QCOptions(minsim=minsim, minblur=minblur, backend="dlib"),
        workers=2, cache_dir=ws.qc_cache, overrides=ws.qc_overrides,
    )  # fmt: skip
    return usecases.qc(Settings(data_root=ws.data_root), job)


def rows(result: QCResult) -> dict[str, object]:
    return {r.file: r for r in result.rows}


def passed(ws: Workspace) -> set[str]:
    return {p.name for p in ws.qc_passed.iterdir() if p.suffix in (".jpg", ".png")}


def test_overrides_win_on_every_rerun_after_a_cache_rebuild_and_a_rename(
    review_template: Template, tmp_path: Path
) -> None:
    ws = clone(review_template, tmp_path)
    before = rows(qc(ws))
    assert before["rose_leslie_1.jpg"].verdict == "rejected" and before["rose_leslie_1.jpg"].reason.startswith(
        "identity: "
    )
    assert before["obama_4_small_mirror.png"].verdict == "accepted"
    assert all(r.auto_verdict == r.verdict and r.override == "" for r in before.values())

    j = set_verdict(ws, "rose_leslie_1.jpg", "accepted", note="  the campaign's\nsecond face ")
    assert (j.was, j.note, j.overrides) == ("rejected", "the campaign's second face", True)
    assert j.was_reason == before["rose_leslie_1.jpg"].reason and j.at.endswith("+00:00")
    set_verdict(ws, "obama_4_small_mirror.png", "R", cause="other")
    # The page shows the user's verdicts at once; QC's outputs follow at the next run.
    listed = {i.file: i for i in review_items(ws, minsim=0.34, minblur=80)}
    assert listed["rose_leslie_1.jpg"].verdict == "accepted" and listed["rose_leslie_1.jpg"].overridden
    assert {i.file for i in filter_items(listed.values(), reason="override")} == {
        "rose_leslie_1.jpg",
        "obama_4_small_mirror.png",
    }
    assert "rose_leslie_1.jpg" not in passed(ws)

    after = rows(qc(ws))
    rose = after["rose_leslie_1.jpg"]
    assert (rose.verdict, rose.override, rose.auto_verdict) == ("accepted", "accepted", "rejected")
    assert rose.reason == f"override: accepted (was: {before['rose_leslie_1.jpg'].reason})"
    assert tile_label(rose).endswith("OVERRIDE, was rejected")
    assert after["obama_4_small_mirror.png"].verdict == "rejected"
    assert after["obama_4_small_mirror.png"].reason == "override: rejected (was: accepted)"
    assert passed(ws) == {n for n, r in after.items() if r.verdict == "accepted"}
    assert "rose_leslie_1.jpg" in passed(ws) and "obama_4_small_mirror.png" not in passed(ws)
    with ws.qc_report.open() as fh:
        table = {r["file"]: r for r in csv.DictReader(fh)}
    assert tuple(next(iter(table.values()))) == REPORT_FIELDS and REPORT_FIELDS[-2:] == ("override", "auto_verdict")
    assert (table["rose_leslie_1.jpg"]["override"], table["rose_leslie_1.jpg"]["auto_verdict"]) == (
        "accepted",
        "rejected",
    )
    # Other thresholds re-decide everything else, never the user's pictures.
    strict = rows(qc(ws, minsim=0.9))
    assert strict["rose_leslie_1.jpg"].verdict == "accepted" and strict["obama_4_small.jpg"].verdict == "rejected"

    # The analysis cache rebuilt from nothing, the overridden photo renamed (same bytes), most candidates gone:
    shutil.rmtree(ws.qc_cache)
    keep = {"obama_3_720p.jpg", "obama_3_240p.jpg", "adams_1.jpg"}
    stash = tmp_path / "stash"
    stash.mkdir()
    for p in ws.synth.iterdir():
        if p.name != "rose_leslie_1.jpg" and p.name not in keep:
            shutil.move(p, stash / p.name)
    (ws.synth / "rose_leslie_1.jpg").rename(ws.synth / "c0ffee.jpg")
    rebuilt = rows(qc(ws))
    assert rebuilt["c0ffee.jpg"].verdict == "accepted" and rebuilt["c0ffee.jpg"].auto_verdict == "rejected"
    assert passed(ws) == {"c0ffee.jpg", "obama_3_720p.jpg"}
    # The mirrored photo's override is kept, not applied: it comes back with the picture.
    store = OverrideStore(ws.qc_overrides)
    idle = inactive(store, list(ws.synth.iterdir()))
    assert [j.file for j in idle.values()] == ["obama_4_small_mirror.png"] and len(store.current()) == 2
    shutil.copy(stash / "obama_4_small_mirror.png", ws.synth / "obama_4_small_mirror.png")
    back = rows(qc(ws))
    assert back["obama_4_small_mirror.png"].verdict == "rejected" and back["obama_4_small_mirror.png"].override

    # U: back to QC's verdict; a second U has nothing left to undo.
    undone = undo_verdict(ws, "c0ffee.jpg")
    assert undone is not None and undone.file == "rose_leslie_1.jpg" and undone.verdict == "accepted"
    assert undo_verdict(ws, "c0ffee.jpg") is None
    final = rows(qc(ws))
    assert final["c0ffee.jpg"].verdict == "rejected" and final["c0ffee.jpg"].override == ""
    assert passed(ws) == {"obama_3_720p.jpg"}
    saved = json.loads(ws.qc_overrides.read_text())
    entry = saved["images"][content_digest(ws.synth / "c0ffee.jpg")]
    assert entry["history"] == [] and entry["undone"][0]["verdict"] == "accepted"


def test_duplicates_identical_copies_and_confirmations(review_template: Template, tmp_path: Path) -> None:
    ws = clone(review_template, tmp_path)
    auto = rows(qc(ws))
    near, best = auto["obama_3_240p.jpg"], auto["obama_3_720p.jpg"]
    assert near.duplicate_of == "obama_3_720p.jpg" and best.verdict == "accepted"

    # Accepting a duplicate whose better copy is accepted keeps both: the user's word, on that picture only.
    set_verdict(ws, "obama_3_240p.jpg", "accepted")
    r = rows(qc(ws))
    assert r["obama_3_240p.jpg"].verdict == r["obama_3_720p.jpg"].verdict == "accepted"
    assert r["obama_3_240p.jpg"].reason == f"override: accepted (was: {near.reason})"
    assert r["obama_3_240p.jpg"].duplicate_of == "obama_3_720p.jpg"  # still shown as a copy
    # Rejecting the best copy promotes none of its copies; they say what happened to it.
    set_verdict(ws, "obama_3_720p.jpg", "rejected")
    r = rows(qc(ws))
    assert r["obama_3_720p.jpg"].verdict == "rejected" and r["obama_3_240p.jpg"].verdict == "accepted"
    blur = r["obama_3_720p_blur04.png"]
    assert blur.verdict == "rejected" and blur.reason.endswith("; obama_3_720p.jpg rejected by review override")

    # The same bytes under a second name: a rejection covers both, an acceptance only the copy QC kept.
    shutil.copy(ws.synth / "obama_4_small_mirror.png", ws.synth / "zz_copy.png")
    set_verdict(ws, "obama_4_small_mirror.png", "rejected")
    r = rows(qc(ws))
    assert r["obama_4_small_mirror.png"].verdict == r["zz_copy.png"].verdict == "rejected"
    assert r["zz_copy.png"].override == "rejected"
    set_verdict(ws, "zz_copy.png", "accepted")
    r = rows(qc(ws))
    assert r["obama_4_small_mirror.png"].verdict == "accepted" and r["zz_copy.png"].verdict == "rejected"
    assert r["zz_copy.png"].duplicate_of == "obama_4_small_mirror.png"
    assert "zz_copy.png" not in passed(ws) and "obama_4_small_mirror.png" in passed(ws)

    # Confirming QC's verdict is a label, not an override: nothing changes, nothing is marked.
    j = set_verdict(ws, "obama_4_small.jpg", "accepted")
    assert not j.overrides
    two = rows(qc(ws))["obama_4_small.jpg"]
    assert (two.verdict, two.override, two.auto_verdict, two.reason) == ("accepted", "accepted", "accepted", "")
    assert "OVERRIDE" not in tile_label(two)
    item = next(i for i in review_items(ws, minsim=0.34, minblur=80) if i.file == "obama_4_small.jpg")
    assert "confirmed" in item.kinds and not item.overridden


def test_streamed_qc_counts_and_publishes_with_the_overrides(review_template: Template, tmp_path: Path) -> None:
    """generate-until-N stops on the streamed count: it must be the count the user's verdicts give."""
    ws = clone(review_template, tmp_path)
    batch = qc(ws)
    auto_accepted = sum(r.verdict == "accepted" for r in batch.rows)
    set_verdict(ws, "rose_leslie_1.jpg", "accepted")
    set_verdict(ws, "obama_1.jpg", "rejected")
    set_verdict(ws, "obama_4_small.jpg", "rejected")
    store = OverrideStore(ws.qc_overrides)
    with StreamingQC(
        ws.cleaned, ws.synth, tmp_path / "streamed", thresholds=QCThresholds(), spec=EngineSpec("dlib"),
        cache_dir=ws.qc_cache, overrides=store, poll_s=60,
    ) as stream:  # fmt: skip
        stream.wait_idle()
        assert stream.accepted() == auto_accepted - 1
        stream.close()
        streamed = stream.result()
    assert stream.pool.analysed == 0  # every analysis came from the cache
    assert [vars(r) for r in streamed.rows] == [vars(r) for r in qc(ws).rows]
    assert {p.name for p in (tmp_path / "streamed").glob("*.jpg")} == {
        r.file for r in streamed.rows if r.verdict == "accepted" and r.file.endswith(".jpg")
    }
    assert "rose_leslie_1.jpg" in passed(ws) and "obama_1.jpg" not in passed(ws)


def test_review_requests_are_checked_and_a_damaged_store_stops_qc(review_template: Template, tmp_path: Path) -> None:
    ws = clone(review_template, tmp_path)
    (ws.synth / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    qc(ws)
    for file, verdict, kw, words in (
        ("../secrets.png", "accepted", {}, "not a plain file name"),
        ("adams_1.jpg", "maybe", {}, "verdict: 'maybe'"),
        ("adams_1.jpg", "accepted", {"cause": "identity"}, "only for a rejection"),
        ("adams_1.jpg", "rejected", {"note": "x" * 600}, "note: 600 characters"),
        ("missing.png", "accepted", {}, "missing.png: not among the candidates"),
        ("broken.png", "accepted", {}, "broken.png: QC could not read the image"),
    ):
        with pytest.raises(OverrideError, match=words.replace("(", r"\(").replace(".", r"\.")):
            set_verdict(ws, file, verdict, **kw)
    assert not ws.qc_overrides.exists()
    set_verdict(ws, "adams_1.jpg", "accepted")
    before = passed(ws)
    ws.qc_overrides.write_text('{"version": 1, "images": {"abc": {"history": [{"verdict": "maybe"}]}}}')
    with pytest.raises(OverrideError, match=r"qc_overrides\.json: unreadable review overrides"):
        qc(ws)
    assert passed(ws) == before  # nothing published from a half-known set of verdicts
    with pytest.raises(OverrideError, match="unreadable"):
        set_verdict(ws, "adams_1.jpg", "rejected")  # and the damaged file is never overwritten
    assert "maybe" in ws.qc_overrides.read_text()


def _label_all(ws: Workspace, review_template: Template) -> None:
    """The user's verdicts as labels.csv has them: the persona's sharp photos accepted, blurred ones rejected as
    blurred, everybody else rejected (no cause given), the echoed reference rejected; group photos and the
    resized copy are left unlabelled."""
    for name, person in sorted(review_template.identity.items()):
        if person == "MULTI" or name == "obama_3_240p.jpg":
            continue
        if name in review_template.blurred:
            set_verdict(ws, name, "rejected", cause="sharpness")
        else:
            set_verdict(ws, name, "accepted" if person == PERSONA and name != ECHO else "rejected")


@dataclass
class ByHand:
    """The labels counted from the report and labels.csv, independently of the calibration code."""

    pos: list[float]  # identity scores of the persona's sharp photos
    neg: list[float]  # ... of everybody else's sharp faces
    sharp: list[float]  # face sharpness of the persona's sharp photos
    blurred: list[float]  # ... of the faces QC rejected for sharpness before scoring them (persona or not)


def _by_hand(report: dict[str, object], review_template: Template) -> ByHand:
    labelled = {
        n: r
        for n, r in report.items()
        if review_template.identity.get(n, "MULTI") != "MULTI" and n not in ("obama_3_240p.jpg", ECHO)
    }
    scored = {n: r for n, r in labelled.items() if r.score is not None and r.sharpness >= 80}
    persona = [r for n, r in scored.items() if review_template.identity[n] == PERSONA]
    # QC's cheap checks reject a face under minblur before its identity is measured: no score, "sharpness" only
    unscored = [r for r in labelled.values() if r.score is None and r.sharpness is not None]
    assert all(r.reason.split("; ")[-1].startswith("sharpness: ") for r in unscored)
    return ByHand(
        [r.score for r in persona],
        [r.score for n, r in scored.items() if review_template.identity[n] != PERSONA],
        [r.sharpness for r in persona],
        [r.sharpness for r in unscored],
    )


def test_calibration_on_real_scores_separates_the_labels_and_counts_by_hand(
    review_template: Template, tmp_path: Path
) -> None:
    ws = clone(review_template, tmp_path)
    report = rows(qc(ws))
    _label_all(ws, review_template)
    # An earlier calibration left this persona too strict.
    store_thresholds(ws, {"minsim": 0.615}, {"calibrated_at": "2020-01-01T00:00:00+00:00"})
    cal = suggest(ws)
    assert cal.current is not None
    assert (cal.current.minsim.source, cal.current.minblur.source) == ("persona", "default")
    assert cal.missing() == [] and cal.ready
    assert cal.left_out == {"rejected for another reason": 1}  # the echoed reference: says nothing of either

    # minsim: fitted on the sharp faces' labels (sharpness >= minblur), one score per photo from the report.
    h = _by_hand(report, review_template)
    assert (cal.minsim.positives, cal.minsim.negatives) == (len(h.pos), len(h.neg)) == (6, 17)
    s = cal.minsim.suggested
    assert s is not None and max(h.neg) < s <= min(h.pos)  # it separates them
    assert s == round((max(h.neg) + min(h.pos)) / 2, 3) and cal.minsim.rule == "precision"
    tp_now = sum(x >= 0.615 for x in h.pos)
    assert tp_now == 4  # two of the persona's photos score under 0.615
    now, then = cal.minsim.at_current, cal.minsim.at_suggested
    assert (now.tp, now.fp, now.fn, now.tn) == (tp_now, 0, len(h.pos) - tp_now, len(h.neg))
    assert now.precision == 1.0 and now.recall == pytest.approx(4 / 6)
    assert then is not None and then.recall == 1.0 and then.precision == 1.0
    # minblur: the persona's sharp photos against every face QC rejected as blurred before scoring it (the six
    # blurred copies and two soft photos of other people); 80 already separates them: kept.
    assert (cal.minblur.positives, cal.minblur.negatives) == (len(h.sharp), len(h.blurred)) == (6, 8)
    assert cal.minblur.suggested == 80.0 and cal.minblur.rule == "kept" and max(h.blurred) < 80 <= min(h.sharp)
    both = cal.both_suggested
    assert (both.tp, both.fp, both.fn, both.tn) == (6, 0, 0, 17 + 8) and cal.labels == 6 + 17 + 8

    apply_calibration(ws, cal, backend="dlib")
    stored = json.loads(ws.persona_settings.read_text())["qc"]
    assert stored["minsim"] == s and stored["minblur"] == 80.0 and stored["backend"] == "dlib"
    chosen = effective_thresholds(ws, {"minsim": None, "minblur": None})
    assert chosen.minsim.value == s and chosen.minsim.source == "persona"
    # QC at the applied thresholds agrees with every label it did not already have to follow.
    verdicts = rows(qc(ws, minsim=chosen.minsim.value, minblur=chosen.minblur.value))
    assert all(r.auto_verdict == r.override for r in verdicts.values() if r.override)


def test_review_items_say_why_every_image_was_rejected(review_template: Template, tmp_path: Path) -> None:
    """The grid never shows "rejected" without a reason (issue 28), also where QC rejected an image before
    measuring its identity: a copy of a reference, several faces, a face too blurred to score."""
    ws = clone(review_template, tmp_path)
    items = {i.file: i for i in review_items(ws, minsim=0.34, minblur=80)}
    assert all(i.reason for i in items.values() if i.verdict == "rejected")
    echo = items[ECHO]
    assert (echo.verdict, echo.score, echo.reason, echo.kinds) == (
        "rejected",
        None,
        "copy of reference obama_2.jpg",
        {"copy"},
    )
    assert echo.borderline == math.inf  # no threshold makes a copy of a reference a training image
    assert {i.file for i in filter_items(items.values(), reason="copy")} == {ECHO}
    group = items["kit_with_rose.jpg"]
    assert (group.score, group.reason, group.borderline) == (None, "faces: 2 > max 1", math.inf)
    soft = items["lin_manuel_miranda_1.png"]  # a face just under minblur, never scored: borderline by sharpness
    assert soft.score is None and soft.reason.startswith("sharpness: face 78.4 < minblur 80")
    assert soft.borderline == pytest.approx(math.log(80 / 78.4) / math.log(1.25), abs=0.01)
    assert list(items).index("lin_manuel_miranda_1.png") < list(items).index("rose_leslie_1.jpg")
    # borderline first: the items are ordered by their distance to the nearer threshold
    distances = [i.borderline for i in items.values()]
    assert distances == sorted(distances)


def test_too_few_labels_say_how_many_more(review_template: Template, tmp_path: Path) -> None:
    ws = clone(review_template, tmp_path)
    qc(ws)
    for name in VARIED:
        set_verdict(ws, name, "accepted")
    set_verdict(ws, "adams_1.jpg", "rejected")
    set_verdict(ws, "kit_with_rose.jpg", "rejected")  # two faces: says nothing about either threshold
    cal = suggest(ws)
    assert cal.left_out == {"several faces": 1} and cal.labels == 4
    assert cal.minsim.needed == (MIN_PER_CLASS - 3, MIN_PER_CLASS - 1) == (2, 4)
    assert cal.missing() == [
        "minsim: 2 more accepted and 4 more rejected labels needed (faces with sharpness >= 80)",
        "minblur: 2 more accepted and 5 more rejected labels needed (faces scoring >= minsim 0.34)",
    ]
    assert not cal.ready and cal.minsim.suggested is None
    with pytest.raises(ValueError, match="nothing to apply: minsim: 2 more accepted"):
        apply_calibration(ws, cal)
    assert not ws.persona_settings.exists()


def test_thresholds_explicit_then_persona_then_default(tmp_path: Path) -> None:
    ws = _workspace(tmp_path)
    chosen = effective_thresholds(ws, {})
    assert (chosen.minsim.value, chosen.minsim.source, chosen.minblur.value) == (0.34, "default", 80.0)
    store_thresholds(ws, {"minsim": 0.41}, {"calibrated_at": "2024-05-01T10:00:00+00:00"})
    store_thresholds(ws, {"minblur": 65.5}, {})  # a later calibration of the other threshold keeps the first
    chosen = effective_thresholds(ws, {"minsim": None})
    assert chosen.values() == {"minsim": 0.41, "minblur": 65.5}
    assert chosen.describe().startswith("minsim 0.41 (persona calibration, ")
    chosen = effective_thresholds(ws, {"minsim": 0.5})
    assert (chosen.minsim.value, chosen.minsim.source, chosen.minblur.source) == (0.5, "flag", "persona")
    assert chosen.minsim.describe() == "minsim 0.5 (given)"
    ws.persona_settings.write_text('{"qc": {"minsim": 34}}')
    with pytest.raises(PersonaSettingsError, match=r"persona\.json: qc\.minsim: .*did you mean 0\.34"):
        effective_thresholds(ws, {})
    assert effective_thresholds(ws, {"minsim": 0.3, "minblur": 70}).minblur.source == "flag"  # file not needed


def test_fit_rules_on_hand_made_scores() -> None:
    """The ROC rules where the real set has no example: overlap (Youden) and rounding inside the gap."""
    # A look-alike above every persona photo: no threshold reaches precision 0.95; Youden's J decides.
    values = [0.90, 0.50, 0.48, 0.46, 0.44, 0.42, 0.30, 0.20, 0.10, 0.05, 0.0]
    positive = [False, True, True, True, True, True, False, False, False, False, False]
    t, rule = fit_threshold(values, positive, 3)
    assert rule == "youden" and t == 0.36 and operating(values, positive, t).recall == 1.0
    # The threshold sits in the gap at the report's resolution, never on a label.
    t, rule = fit_threshold([0.3401, 0.3402, 0.1, 0.5, 0.6], [False, True, False, True, True], 3)
    assert rule == "precision" and 0.3401 < t <= 0.3402
    t, rule = fit_threshold([0.2, 0.5, 0.6, 0.1], [False, True, True, False], 3, current=0.4)
    assert (t, rule) == (0.4, "kept")


def test_cli_calibrate_prints_the_table_and_applies(review_template: Template, tmp_path: Path) -> None:
    ws = clone(review_template, tmp_path)
    h = _by_hand(rows(qc(ws)), review_template)
    _label_all(ws, review_template)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENROUTER_", "INFLUENCER_"))}
    env.update(INFLUENCER_DATA_ROOT=str(ws.data_root), INFLUENCER_MODELS_ROOT=str(ws.models_root), COLUMNS="200")

    def influencer(*args: str) -> subprocess.CompletedProcess[str]:
        res = subprocess.run(
            [INFLUENCER, *args], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=180, check=False
        )
        assert res.returncode == 0, res.stderr
        return res

    res = influencer("qc", "calibrate")
    text = " ".join(res.stdout.split())
    assert "31 usable label(s) from your review (1 rejected for another reason left out)" in text
    assert "highest recall at precision >= 0.95" in text
    # 0.34 separates them
    assert f"minsim 0.340 0.340 (kept) {len(h.pos)}/{len(h.neg)} 1.00 -> 1.00 1.00 -> 1.00" in text
    assert "minblur 80.0 80.0 (kept) 6/8" in text and "missing" not in text and "nothing to change" in text
    res = influencer("qc", "--minsim", "0.615", "calibrate", "--apply")  # compared against a stricter value
    text = " ".join(res.stdout.split())
    assert "current: minsim 0.615 (given); minblur 80 (built-in default)" in text
    middle = round((max(h.neg) + min(h.pos)) / 2, 3)  # half-way between everybody else and the persona's lowest
    recall_now = sum(s >= 0.615 for s in h.pos) / len(h.pos)
    assert f"minsim 0.615 {middle:.3f} {len(h.pos)}/{len(h.neg)} 1.00 -> 1.00 {recall_now:.2f} -> 1.00" in text
    assert "stored in" in text
    persona = json.loads(ws.persona_settings.read_text())["qc"]
    assert (persona["minsim"], persona["minblur"]) == (middle, 80.0)
    res = influencer("qc")
    assert f"thresholds: minsim {middle:g} (persona calibration, {ws.persona_settings}" in res.stdout
    assert "review: 0 verdict(s) overridden by you, 32 confirmed" in res.stdout
