"""Engagement, cadence, growth and a documented success score per profile.

Input is what the user uploads: posts (handle, timestamp, likes, comments,
optional views and followers-at-post-time) and optionally profiles (handle,
followers, optional dated follower snapshots). Every number in the output is
computed from those rows; a metric that the data cannot support is ``None``
with the reason in ``notes``, never a guess.

success_score (0-100) ranks profiles *within the uploaded set*: it is the
weighted mean of each profile's percentile rank (mid-rank, so a lone profile
sits at 50) on engagement rate (weight 0.5), weekly follower growth (0.3) and
posting cadence in posts/week (0.2). Metrics missing for a profile are left out
and the remaining weights re-normalised. It says "better than the others you
uploaded", not "good in absolute terms".
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import math
import statistics
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

WEIGHTS = {"engagement_rate": 0.5, "growth_weekly": 0.3, "cadence_per_week": 0.2}
POST_FIELDS = ("handle", "timestamp", "likes", "comments")


class InsightsError(ValueError):
    """The upload cannot be used; the message names the file, row and field."""


@dataclass
class Post:
    handle: str
    timestamp: datetime
    likes: float
    comments: float
    views: float | None = None
    followers: float | None = None


@dataclass
class Profile:
    handle: str
    followers: float | None = None
    history: list[tuple[datetime, float]] = field(default_factory=list)


@dataclass
class ProfileInsight:
    handle: str
    followers: float | None
    posts: int
    engagement_rate: float | None  # mean (likes + comments) / followers, in %
    view_rate: float | None  # mean views / followers, in %
    avg_likes: float
    avg_comments: float
    cadence_per_week: float | None
    median_gap_hours: float | None
    growth_weekly: float | None  # compound follower growth per week, in %
    success_score: float | None = None
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _ts(value: Any, where: str) -> datetime:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return datetime.fromtimestamp(float(value), UTC)
    text = str(value or "").strip()
    if not text:
        raise InsightsError(f"{where}: 'timestamp' is empty")
    if text.isdigit():
        return datetime.fromtimestamp(float(text), UTC)
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise InsightsError(f"{where}: 'timestamp' is not an ISO date or epoch seconds: {text!r}") from None
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def _num(row: dict[str, Any], key: str, where: str, required: bool = True) -> float | None:
    value = row.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise InsightsError(f"{where}: '{key}' is missing")
        return None
    try:
        number = float(str(value).replace(",", "").strip()) if isinstance(value, str) else float(value)
    except (TypeError, ValueError):
        raise InsightsError(f"{where}: '{key}' is not a number: {value!r}") from None
    if math.isnan(number) or number < 0:
        raise InsightsError(f"{where}: '{key}' must be a non-negative number, got {value!r}")
    return number


def _rows(name: str, data: bytes) -> list[tuple[str, dict[str, Any]]]:
    """(location, row) pairs from a CSV or JSON file; location is 'file line N' or 'file item N'."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InsightsError(f"{name}: not UTF-8 text") from None
    stripped = text.lstrip()
    if name.lower().endswith(".json") or stripped.startswith(("[", "{")):
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InsightsError(f"{name}: invalid JSON at line {exc.lineno}: {exc.msg}") from None
        items = doc if isinstance(doc, list) else None
        if items is None:
            raise InsightsError(f"{name}: expected a JSON list of rows (or an object with 'posts'/'profiles')")
        if not all(isinstance(i, dict) for i in items):
            raise InsightsError(f"{name}: every JSON item must be an object")
        return [(f"{name} item {i + 1}", row) for i, row in enumerate(items)]
    reader = csv.DictReader(io.StringIO(text))
    if not reader.fieldnames:
        raise InsightsError(f"{name}: empty file")
    reader.fieldnames = [f.strip().lower() for f in reader.fieldnames]
    return [(f"{name} line {i + 2}", row) for i, row in enumerate(reader)]


def _posts(name: str, rows: list[tuple[str, dict[str, Any]]]) -> list[Post]:
    if not rows:
        raise InsightsError(f"{name}: no posts")
    missing = [f for f in POST_FIELDS if f not in rows[0][1]]
    if missing:
        raise InsightsError(f"{name}: missing column(s) {', '.join(missing)} (need {', '.join(POST_FIELDS)})")
    posts = []
    for where, row in rows:
        handle = str(row.get("handle") or "").strip()
        if not handle:
            raise InsightsError(f"{where}: 'handle' is empty")
        posts.append(
            Post(
                handle=handle,
                timestamp=_ts(row.get("timestamp"), where),
                likes=_num(row, "likes", where) or 0.0,
                comments=_num(row, "comments", where) or 0.0,
                views=_num(row, "views", where, required=False),
                followers=_num(row, "followers", where, required=False),
            )
        )
    return posts


def _profiles(name: str, rows: list[tuple[str, dict[str, Any]]]) -> list[Profile]:
    """Profile rows; several rows of one handle with a 'date' column form its follower history."""
    by_handle: dict[str, Profile] = {}
    for where, row in rows:
        handle = str(row.get("handle") or "").strip()
        if not handle:
            raise InsightsError(f"{where}: 'handle' is empty")
        prof = by_handle.setdefault(handle, Profile(handle))
        followers = _num(row, "followers", where)
        date = row.get("date") or row.get("timestamp")
        if date:
            prof.history.append((_ts(date, where), followers or 0.0))
        for snap in row.get("history") or []:
            if not isinstance(snap, dict):
                raise InsightsError(f"{where}: 'history' items must be objects with date and followers")
            prof.history.append((_ts(snap.get("date"), where), _num(snap, "followers", f"{where} history") or 0.0))
        prof.followers = followers if not prof.history else max(prof.history)[1]
    return list(by_handle.values())


def parse_upload(files: dict[str, bytes]) -> tuple[list[Post], list[Profile]]:
    """Files by name: a JSON object with 'posts' (and 'profiles'), or posts/profiles CSV/JSON files."""
    posts: list[Post] = []
    profiles: list[Profile] = []
    if not files:
        raise InsightsError("no file uploaded")
    for name, data in files.items():
        if not data.strip():
            raise InsightsError(f"{name}: empty file")
        if name.lower().endswith(".json") or data.lstrip().startswith(b"{"):
            try:
                doc = json.loads(data.decode("utf-8-sig"))
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise InsightsError(f"{name}: invalid JSON ({exc})") from None
            if isinstance(doc, dict):
                if "posts" not in doc:
                    raise InsightsError(f"{name}: JSON object needs a 'posts' list")
                posts += _posts(
                    f"{name} posts", [(f"{name} posts item {i + 1}", r) for i, r in enumerate(doc["posts"])]
                )
                prof_rows = doc.get("profiles") or []
                profiles += _profiles(name, [(f"{name} profiles item {i + 1}", r) for i, r in enumerate(prof_rows)])
                continue
        rows = _rows(name, data)
        is_profiles = "profile" in name.lower() or (rows and "likes" not in rows[0][1])
        if is_profiles:
            profiles += _profiles(name, rows)
        else:
            posts += _posts(name, rows)
    if not posts:
        raise InsightsError("no posts in the upload (a posts file with handle, timestamp, likes, comments)")
    return posts, profiles


def _growth(points: list[tuple[datetime, float]]) -> tuple[float | None, str | None]:
    points = sorted(p for p in points if p[1] > 0)
    if len(points) < 2:
        return None, "growth needs follower counts at two dates"
    (t0, f0), (t1, f1) = points[0], points[-1]
    days = (t1 - t0).total_seconds() / 86400
    if days < 1:
        return None, "growth needs follower counts at least a day apart"
    return 100 * ((f1 / f0) ** (7 / days) - 1), None


def _percentiles(values: dict[str, float]) -> dict[str, float]:
    """Mid-rank percentile in [0, 1] of each value among all (ties share a rank)."""
    vals = list(values.values())
    n = len(vals)
    return {k: (sum(x < v for x in vals) + 0.5 * sum(x == v for x in vals)) / n for k, v in values.items()}


def compute_insights(posts: list[Post], profiles: list[Profile] | None = None) -> list[ProfileInsight]:
    """One insight per handle, sorted by success_score (best first; profiles without a score last)."""
    by_handle: dict[str, list[Post]] = defaultdict(list)
    for p in posts:
        by_handle[p.handle].append(p)
    prof = {p.handle: p for p in profiles or []}
    out: list[ProfileInsight] = []
    for handle, items in sorted(by_handle.items()):
        items.sort(key=lambda p: p.timestamp)
        notes: list[str] = []
        info = prof.get(handle)
        current = (info.followers if info else None) or next(
            (p.followers for p in reversed(items) if p.followers), None
        )
        rates = [(p.likes + p.comments) / f for p in items if (f := p.followers or current)]
        er = 100 * statistics.fmean(rates) if rates else None
        if er is None:
            notes.append("engagement rate needs follower counts (profiles file or a followers column)")
        views = [p.views / f for p in items if p.views is not None and (f := p.followers or current)]
        span_h = (items[-1].timestamp - items[0].timestamp).total_seconds() / 3600
        if len(items) >= 2 and span_h > 0:
            cadence = (len(items) - 1) / (span_h / 168)
            gaps = [(b.timestamp - a.timestamp).total_seconds() / 3600 for a, b in itertools.pairwise(items)]
            median_gap = statistics.median(gaps)
        else:
            cadence = median_gap = None
            notes.append("cadence needs at least two posts at different times")
        history = list(info.history) if info else []
        history += [(p.timestamp, p.followers) for p in items if p.followers]
        growth, why = _growth(history)
        if why:
            notes.append(why)
        out.append(
            ProfileInsight(
                handle=handle,
                followers=current,
                posts=len(items),
                engagement_rate=None if er is None else round(er, 3),
                view_rate=round(100 * statistics.fmean(views), 3) if views else None,
                avg_likes=round(statistics.fmean(p.likes for p in items), 2),
                avg_comments=round(statistics.fmean(p.comments for p in items), 2),
                cadence_per_week=None if cadence is None else round(cadence, 3),
                median_gap_hours=None if median_gap is None else round(median_gap, 2),
                growth_weekly=None if growth is None else round(growth, 3),
                notes=notes,
            )
        )
    ranks = {
        metric: _percentiles({i.handle: v for i in out if (v := getattr(i, metric)) is not None}) for metric in WEIGHTS
    }
    for ins in out:
        parts = [(WEIGHTS[m], ranks[m][ins.handle]) for m in WEIGHTS if ins.handle in ranks[m]]
        if parts:
            total = sum(w for w, _ in parts)
            ins.success_score = round(100 * sum(w * r for w, r in parts) / total, 1)
        else:
            ins.notes.append("no metric available for a success score")
    out.sort(key=lambda i: (i.success_score is None, -(i.success_score or 0), i.handle))
    return out
