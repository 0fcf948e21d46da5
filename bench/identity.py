"""Identity QC calibration on real photos: ROC per backend, the defaults' operating points, sharpness, and
a simulation of the held-out protocol before/after the current decision rule.

    .venv/bin/python -m bench.identity [--workers 2] [--calibration-only]

Data: tests/assets/faces-calibration (27 real photos, 11 people + 3 group photos; labels.csv and faces.csv)
plus, unless --calibration-only, three older test photos (obama3.jpg, t1.jpg with six people, Tom Hanks).
Pairs of files that show one photograph (faces.csv ``picture``) never count as same-person evidence.

1. Identity, per backend available (dlib always; InsightFace when its buffalo_l pack exists under
   models/insightface/models/buffalo_l): every same/different pair of faces, and every "2 prepared
   references vs one candidate" case (references made by ``ai_influencer.vision.prepare`` exactly as the
   prepare stage makes them: face-centred 1024 px crops). ROC AUC, EER, true-accept rate at 1 % and 0.1 %
   false accepts, and what --minsim 0.34 means: old mapping vs calibrated mapping vs the full rule.
2. Sharpness (--minblur 80): originals, 720p vs 240p of one photo, Gaussian blur of 0.4 % and 1 % of the
   long side, half-size JPEG q80 copies; the calibrated blur-radius score vs the old Laplacian variance.
3. The held-out protocol simulated: each person with >= 2 pictures is the persona with 2 prepared
   references (every pair of their pictures); candidates = every other photo plus, per one-face photo, a
   0.4 % and a 1 % blurred copy, an exact copy and a half-size JPEG q80 copy. Precision, recall (persona
   pictures accepted in some copy), blurred copies rejected, duplicates caught, and how often a degraded
   copy was kept over its original: "before" = the rule on main 6400e76 (re-implemented here from the same
   measurements), "after" = ``ai_influencer.qc.stage.decide``.

The embeddings, score mappings, ROC statistics, the "before" rule and the scoring of one persona run are in
``bench/identity_protocol.py``; this file prints the tables.
"""

from __future__ import annotations

import argparse
import itertools
import shutil
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np

from ai_influencer.qc.analysis import Analysis, EngineSpec
from ai_influencer.qc.decision import QCThresholds, decide
from ai_influencer.qc.pool import analyze_many
from ai_influencer.settings import Settings
from ai_influencer.vision.faces import create_face_engine, insightface_pack_dir, scorer_for
from ai_influencer.vision.quality import SIGMA_AT_80
from bench.identity_protocol import (
    FaceRec,
    Roc,
    RunStats,
    calibrated,
    embed_faces,
    fmt_rate,
    legacy_decide,
    legacy_sharpness,
    old_score,
    pair_roc,
    score_run,
    two_ref_cases,
)
from tests.support.calibration import (
    SOFT_ORIGINALS,
    LabelledPhoto,
    Variant,
    calibration_photos,
    extra_photos,
    make_variants,
    persona_runs,
    prepared_references,
    representatives,
)


# ---- identity ------------------------------------------------------------------------------------
def identity_tables(backend: str, faces: list[FaceRec], refs, reps) -> None:
    print(f"\n## Identity, backend {backend}")
    pr, worst_pairs = pair_roc(backend, faces)
    cases = two_ref_cases(backend, faces, refs, reps)
    cen = Roc(
        np.array([calibrated(backend, c.centroid_raw) for c in cases if c.genuine]),
        np.array([calibrated(backend, c.centroid_raw) for c in cases if not c.genuine]),
    )
    pair_cal = Roc(
        np.array([calibrated(backend, s) for s in pr.genuine]), np.array([calibrated(backend, s) for s in pr.impostor])
    )
    print(
        f"{'protocol':<28}| {'genuine':>7} | {'impostor':>8} | {'AUC':>6} | {'EER':>6} |"
        f" {'TAR@FAR1%':>9} | {'TAR@FAR0.1%':>11}"
    )
    print("-" * 92)
    for name, roc in (("pairs of faces", pair_cal), ("2 prepared refs vs 1 face", cen)):
        t1, _ = roc.tar_at(0.01)
        t01, _ = roc.tar_at(0.001)
        print(
            f"{name:<28}| {len(roc.genuine):>7} | {len(roc.impostor):>8} | {roc.auc():6.4f} | {roc.eer() * 100:5.2f}% |"
            f" {t1 * 100:8.1f}% | {t01 * 100:10.1f}%"
        )
    n_imp = len(cen.impostor)
    if n_imp < 1000:
        print(f"(FAR 0.1 % needs >= 1000 impostor cases; with {n_imp} it means: above every impostor)")

    print(f"\nOperating points, 2 prepared refs vs 1 face ({len(cen.genuine)} genuine, {n_imp} impostor cases):")
    print(f"{'rule':<58}| {'false accepts':>15} | {'true accepts':>15}")
    print("-" * 94)
    gen = [c for c in cases if c.genuine]
    imp = [c for c in cases if not c.genuine]

    def row(label: str, accept) -> None:
        fa = sum(accept(c) for c in imp) / max(1, len(imp))
        ta = sum(accept(c) for c in gen) / max(1, len(gen))
        print(f"{label:<58}| {fmt_rate(fa, len(imp)):>15} | {fmt_rate(ta, len(gen)):>15}")

    th = QCThresholds()
    if backend == "dlib":
        row("old: 1 - d/0.9 >= 0.34 (d <= 0.594)", lambda c: old_score(backend, c.centroid_raw) >= 0.34)
    else:
        row("old: raw cosine >= 0.34", lambda c: old_score(backend, c.centroid_raw) >= 0.34)
    row(f"calibrated centroid score >= {th.minsim}", lambda c: calibrated(backend, c.centroid_raw) >= th.minsim)
    floor = th.minsim - th.agreement_slack
    row(
        f"+ both references >= {floor:.2f} (the shipped identity rule)",
        lambda c: (
            calibrated(backend, c.centroid_raw) >= th.minsim
            and all(calibrated(backend, s) >= floor for s in c.per_ref_raw)
        ),
    )
    sharp_gen = [calibrated(backend, c.centroid_raw) for c in gen if c.face.file not in SOFT_ORIGINALS]
    all_imp = [calibrated(backend, c.centroid_raw) for c in imp]
    if sharp_gen and all_imp:
        print(
            f"same person, sharp photos: {min(sharp_gen):.3f}..{max(sharp_gen):.3f}; "
            f"other people: {min(all_imp):.3f}..{max(all_imp):.3f} (calibrated, unclipped)"
        )
    gmin = min(gen, key=lambda c: c.centroid_raw) if gen else None
    imax = max(imp, key=lambda c: c.centroid_raw) if imp else None
    if gmin:
        print(
            f"lowest same-person score {calibrated(backend, gmin.centroid_raw):.3f} "
            f"({gmin.face.file} vs refs {'+'.join(gmin.refs)})"
        )
    if imax:
        print(
            f"highest other-person score {calibrated(backend, imax.centroid_raw):.3f} "
            f"({imax.face.file}:{imax.face.identity} vs {imax.persona} refs {'+'.join(imax.refs)})"
        )
    for s, a, b in worst_pairs:
        print(f"closest different-person pair: {calibrated(backend, s):.3f}  {a} / {b}")


# ---- sharpness -----------------------------------------------------------------------------------
def sharpness_table(variants: list[Variant], analyses: dict[Path, Analysis], legacy: dict[Path, float]) -> None:
    print("\n## Sharpness (--minblur 80): share of faces scoring >= 80")
    groups: dict[str, list[Variant]] = defaultdict(list)
    for v in variants:
        if v.source.group or (analyses[v.path].box is None and v.kind == "original"):
            continue
        if v.kind == "original":
            groups["sharp originals" if v.source.name not in SOFT_ORIGINALS else "soft originals (by eye)"].append(v)
        elif v.kind in ("blur04", "blur10"):
            groups[{"blur04": "blur sigma 0.4% of long side", "blur10": "blur sigma 1% of long side"}[v.kind]].append(v)
        elif v.kind == "near":
            groups["half-size JPEG q80 copies"].append(v)
    print(f"{'images':<32}| {'n':>3} | {'old >= 80':>10} | {'new >= 80':>10} | {'new: min..max':>14}")
    print("-" * 82)
    for name in (
        "sharp originals",
        "soft originals (by eye)",
        "half-size JPEG q80 copies",
        "blur sigma 0.4% of long side",
        "blur sigma 1% of long side",
    ):
        vs = groups.get(name, [])
        new = [analyses[v.path].sharpness for v in vs]  # no face detected = 0: the copy is rejected either way
        old = [legacy[v.path] for v in vs]
        pass_new = sum(s >= 80 for s in new)
        pass_old = sum(s >= 80 for s in old)
        span = f"{min(new):.0f}..{max(new):.0f}" if new else "-"
        print(f"{name:<32}| {len(vs):>3} | {pass_old:>4}/{len(vs):<5} | {pass_new:>4}/{len(vs):<5} | {span:>14}")
    print("\nsame photo, two resolutions (obama_3):")
    for v in variants:
        if v.source.name in ("obama_3_720p.jpg", "obama_3_240p.jpg") and v.kind in ("original", "blur04", "blur10"):
            a = analyses[v.path]
            print(f"  {v.path.name:<28} face {a.face_px:>4} px  old {legacy[v.path]:7.1f}  new {a.sharpness:6.1f}")
    print(f"(new score = 80 * ({SIGMA_AT_80} / blur radius)^2, radius measured on the face at <= 256 px)")


# ---- duplicates and the held-out protocol (helpers in bench/identity_protocol.py) -----------------
def dedupe_table(backend: str, variants: list[Variant], analyses: dict[Path, Analysis]) -> None:
    """Which copy survives when identity is not the question (minsim 0): every one-face photo with its copies."""
    scorer = scorer_for(backend)
    refs = [analyses[v.path] for v in variants if v.kind == "original" and v.source.identity == "obama"][:2]
    rows, _ = decide(refs, [analyses[v.path] for v in variants], scorer, QCThresholds(minsim=0.0, min_margin=None))
    kept: dict[str, list[str]] = defaultdict(list)
    for v in variants:
        if rows[v.path.name].verdict == "accepted" and not v.source.group:
            kept[v.source.name].append(v.kind)
    sources = sorted({v.source.name for v in variants if not v.source.group})
    originals = sum(kept.get(s) == ["original"] for s in sources)
    print(f"\n## Duplicates, backend {backend}: one copy kept per photo (identity off, sharpness on)")
    print(f"original kept, its copies rejected: {originals}/{len(sources)} photos")
    for s in sources:
        if kept.get(s) != ["original"]:
            why = [rows[v.path.name].reason for v in variants if v.source.name == s and v.kind == "original"]
            print(f"  {s}: kept {kept.get(s) or 'nothing'}; original: {why[0] if why else '?'}")


def headroom_table(
    backend: str, variants: list[Variant], analyses: dict[Path, Analysis], refs: dict[str, Analysis], reps
) -> None:
    """How far the threshold can be lowered before other people get in, per rule: the stand-in for look-alikes,
    which this set does not have (they are faces that score closer than usual)."""
    scorer = scorer_for(backend)
    rules = {
        "centroid only": lambda m: QCThresholds(minsim=m, agreement_slack=1.0, min_margin=None),
        "+ every reference agrees": lambda m: QCThresholds(minsim=m, min_margin=None),
        "+ impostor margin (shipped)": lambda m: QCThresholds(minsim=m),
    }
    levels = (0.34, 0.25, 0.20, 0.15, 0.10, 0.05)
    print(f"\n## Headroom, backend {backend}: false accepts (files) / persona pictures recalled as minsim is lowered")
    print(f"{'rule':<30}| " + " | ".join(f"{m:>11}" for m in levels))
    print("-" * (32 + 14 * len(levels)))
    for name, make in rules.items():
        cells = []
        for m in levels:
            total = RunStats()
            for person, pair in persona_runs({k: v for k, v in reps.items() if k in refs}):
                cand_v = [v for v in variants if not set(v.source.pictures) & set(pair)]
                rows, _ = decide([refs[p] for p in pair], [analyses[v.path] for v in cand_v], scorer, make(m))
                total.add(score_run(person, cand_v, {f for f, r in rows.items() if r.verdict == "accepted"}))
            cells.append(f"{total.accepted - total.true_accepts:>3} / {total.recalled}/{total.persona_pictures}")
        print(f"{name:<30}| " + " | ".join(f"{c:>11}" for c in cells))


def protocol_tables(
    backend: str,
    variants: list[Variant],
    analyses: dict[Path, Analysis],
    legacy: dict[Path, float],
    refs: dict[str, Analysis],
    reps: dict[str, LabelledPhoto],
) -> None:
    scorer = scorer_for(backend)
    by_person: dict[str, list[str]] = defaultdict(list)
    for picture, p in sorted(reps.items()):
        if picture in refs and refs[picture].embedding is not None:
            by_person[p.identity].append(picture)
    rules = {
        "before (main 6400e76)": None,
        "after (identity rule, margin off)": QCThresholds(min_margin=None),
        "after (shipped defaults)": QCThresholds(),
    }
    totals = {k: RunStats() for k in rules}
    per_person: dict[str, dict[str, RunStats]] = defaultdict(lambda: {k: RunStats() for k in rules})
    runs = 0
    for person, pictures in sorted(by_person.items()):
        if len(pictures) < 2:
            continue
        for pair in itertools.combinations(pictures, 2):
            runs += 1
            ref_an = [refs[p] for p in pair]
            cand_v = [v for v in variants if not set(v.source.pictures) & set(pair)]
            cand_an = [analyses[v.path] for v in cand_v]
            for name, th in rules.items():
                if th is None:
                    accepted = legacy_decide(backend, ref_an, cand_an, legacy)
                else:
                    rows, _ = decide(ref_an, cand_an, scorer, th)
                    accepted = {f for f, r in rows.items() if r.verdict == "accepted"}
                st = score_run(person, cand_v, accepted)
                totals[name].add(st)
                per_person[person][name].add(st)
    print(f"\n## Held-out protocol on the calibration set, backend {backend} ({runs} persona runs)")
    print("others = candidate files of other people checked (blurred/duplicated copies included); recall counts")
    print("persona pictures accepted in some copy; degraded kept = a half-size or q80 copy accepted, its original not")
    head = (
        f"{'persona':<16}| {'rule':<34}| {'others':>6} | {'accepted':>8} | {'false':>5} | {'precision':>9} |"
        f" {'recall':>11} |"
        f" {'blurred rej.':>12} | {'exact dups':>10} | {'half q80':>9} | {'same q80':>9} | {'degraded kept':>13}"
    )
    print(head)
    print("-" * len(head))

    def line(who: str, name: str, st: RunStats) -> None:
        prec = f"{st.true_accepts / st.accepted:.3f}" if st.accepted else "-"
        rec = (
            f"{st.recalled / st.persona_pictures:.2f} ({st.recalled}/{st.persona_pictures})"
            if st.persona_pictures
            else "-"
        )
        false = st.accepted - st.true_accepts
        print(
            f"{who:<16}| {name:<34}| {st.others:>6} | {st.accepted:>8} | {false:>5} | {prec:>9} | {rec:>11} |"
            f" {st.blurred_rejected:>5}/{st.blurred:<6} | {st.dup_caught:>4}/{st.dup_pairs:<5} |"
            f" {st.near_caught:>4}/{st.near_pairs:<4} | {st.reenc_caught:>4}/{st.reenc_pairs:<4} |"
            f" {st.degraded_kept:>13}"
        )

    for person, stats in sorted(per_person.items()):
        for name in rules:
            line(person, name, stats[name])
    for name in rules:
        line("ALL", name, totals[name])
    for name, st in totals.items():
        if st.false_files:
            print(f"false accepts, {name}: {sorted(set(st.false_files))}")
        if st.degraded_files:
            print(f"degraded copy kept over its original, {name}: {sorted(set(st.degraded_files))}")
        if st.missed:
            print(f"persona pictures never accepted, {name}: {sorted(set(st.missed))}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--calibration-only", action="store_true", help="Leave out obama3.jpg, t1.jpg and Tom Hanks.")
    args = ap.parse_args()
    photos = calibration_photos() + ([] if args.calibration_only else extra_photos())
    n_faces = sum(len(p.identities) for p in photos)
    people = len({i for p in photos for i in p.identities})
    print(f"Identity calibration: {len(photos)} photos, {n_faces} labelled faces, {people} people")
    backends = ["dlib"]
    pack = insightface_pack_dir(Settings().insightface_root)
    if pack.is_dir() and any(pack.glob("*.onnx")):
        backends.append("insightface")
    else:
        print(f"InsightFace: not measured, no buffalo_l pack at {pack} (its mapping is documented, uncalibrated)")
    tmp = Path(tempfile.mkdtemp(prefix="bench-identity-"))
    try:
        for backend in backends:
            s = Settings()
            engine = create_face_engine(backend, insightface_root=s.insightface_root, providers=s.onnx_providers)
            faces = embed_faces(engine, photos)
            reps = representatives(photos)
            refs = prepared_references(engine, reps, tmp / backend / "refs")
            identity_tables(backend, faces, refs, reps)
            variants = make_variants(photos, tmp / backend / "cands")
            spec = EngineSpec(backend, str(s.insightface_root), tuple(s.onnx_providers))
            found = analyze_many(
                [v.path for v in variants], engine=None, spec=spec, workers=args.workers, max_pixels=60_000_000
            )
            analyses = {a.path: a for a in found}
            legacy = {a.path: legacy_sharpness(a) for a in found}
            if backend == "dlib":
                sharpness_table(variants, analyses, legacy)
            dedupe_table(backend, variants, analyses)
            protocol_tables(backend, variants, analyses, legacy, refs, reps)
            headroom_table(backend, variants, analyses, refs, reps)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
