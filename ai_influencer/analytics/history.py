"""Per-persona identity history: every evaluated LoRA (and checkpoint) in a small SQLite database.

Why SQLite: one file next to the models, no server, safe for concurrent readers,
and a transaction per insert keeps the history consistent even if a run dies.
Each row ties an identity score to the exact LoRA file (content hash), the dataset
version it was trained on and the training parameters, so "did the last retrain
help?" is a query, not a memory.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ai_influencer.io import file_sha256

SCHEMA = """
CREATE TABLE IF NOT EXISTS evaluations (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    persona TEXT NOT NULL,
    lora_path TEXT NOT NULL,
    lora_sha256 TEXT NOT NULL,
    checkpoint TEXT NOT NULL,
    dataset_version TEXT NOT NULL,
    params TEXT NOT NULL,
    n INTEGER NOT NULL,
    median REAL,
    p10 REAL,
    face_rate REAL,
    promoted INTEGER NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS evaluations_persona ON evaluations (persona, id);
"""


@dataclass
class HistoryRow:
    id: int
    persona: str
    lora_path: str
    lora_sha256: str
    checkpoint: str
    dataset_version: str
    params: dict[str, Any]
    n: int
    median: float | None
    p10: float | None
    face_rate: float | None
    promoted: bool
    created_at: str


class IdentityHistory:
    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._db() as db:
            db.executescript(SCHEMA)

    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=30)
        try:
            with db:  # one transaction: committed on success, rolled back on error
                yield db
        finally:
            db.close()

    def record(
        self,
        *,
        persona: str,
        lora: Path,
        checkpoint: str,
        dataset_version: str,
        params: dict[str, Any],
        n: int,
        median: float | None,
        p10: float | None,
        face_rate: float | None,
        promoted: bool = False,
    ) -> int:
        with self._db() as db:
            cur = db.execute(
                "INSERT INTO evaluations (persona, lora_path, lora_sha256, checkpoint, dataset_version, params, n,"
                " median, p10, face_rate, promoted, created_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    persona,
                    str(lora),
                    file_sha256(lora),
                    checkpoint,
                    dataset_version,
                    json.dumps(params, sort_keys=True, default=str),
                    n,
                    median,
                    p10,
                    face_rate,
                    int(promoted),
                    datetime.now(UTC).isoformat(timespec="seconds"),
                ),
            )
            return int(cur.lastrowid or 0)

    def mark_promoted(self, row_id: int) -> None:
        with self._db() as db:
            db.execute("UPDATE evaluations SET promoted = 1 WHERE id = ?", (row_id,))

    def rows(self, persona: str | None = None) -> list[HistoryRow]:
        query = "SELECT * FROM evaluations" + (" WHERE persona = ?" if persona else "") + " ORDER BY id"
        with self._db() as db:
            db.row_factory = sqlite3.Row
            found = db.execute(query, (persona,) if persona else ()).fetchall()
        return [
            HistoryRow(**{**dict(r), "params": json.loads(r["params"]), "promoted": bool(r["promoted"])}) for r in found
        ]

    def best_promoted(self, persona: str) -> HistoryRow | None:
        """The currently promoted LoRA's evaluation (the last promotion wins)."""
        promoted = [r for r in self.rows(persona) if r.promoted]
        return promoted[-1] if promoted else None

    def plot(self, out: Path, persona: str | None = None) -> Path:
        """Identity score (median and p10) over evaluations, promoted versions marked; PNG."""
        import matplotlib

        matplotlib.use("Agg")  # no display needed, safe in workers and tests
        import matplotlib.pyplot as plt

        rows = self.rows(persona)
        if not rows:
            raise ValueError(f"no evaluations recorded in {self.path}" + (f" for {persona!r}" if persona else ""))
        x = list(range(1, len(rows) + 1))
        fig, ax = plt.subplots(figsize=(9, 4.5), dpi=110)
        ax.plot(x, [r.median for r in rows], marker="o", label="median identity score")
        ax.plot(x, [r.p10 for r in rows], marker=".", linestyle="--", label="p10")
        promoted = [(i, r.median) for i, r in zip(x, rows, strict=True) if r.promoted]
        if promoted:
            ax.scatter(*zip(*promoted, strict=True), s=140, facecolors="none", edgecolors="green", label="promoted")
        ax.set_xticks(x, [f"{r.checkpoint}\n{r.dataset_version[:6]}" for r in rows], fontsize=7)
        ax.set_ylabel("identity score vs references")
        ax.set_title(f"Identity history{f' — {persona}' if persona else ''} ({len(rows)} evaluations)")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        from ai_influencer.io import atomic_write

        try:
            return atomic_write(out, lambda tmp: fig.savefig(tmp, format="png"))
        finally:
            plt.close(fig)


def record_choice(
    history: IdentityHistory,
    choice: object,
    *,
    persona: str,
    dataset_version: str,
    params: dict[str, Any],
) -> dict[str, int]:
    """Store every LoRA of an evaluation (training.evaluate.CheckpointChoice); returns {lora path: row id}."""
    from ai_influencer.training.evaluate import CheckpointChoice, report_dir

    assert isinstance(choice, CheckpointChoice)
    ids = {}
    for lora, ev in choice.evaluations:
        ids[str(lora)] = history.record(
            persona=persona,
            lora=lora,
            checkpoint=report_dir(Path("."), lora).name,
            dataset_version=dataset_version,
            params=params,
            n=len(ev.images),
            median=ev.median,
            p10=ev.p10,
            face_rate=ev.face_rate,
        )
    return ids


def dataset_version_of(folder: Path | None) -> str:
    """The training set's content version, or "unknown" when the folder is missing or unusable."""
    from ai_influencer.training.data import DatasetError, dataset_version, discover

    if folder is None:
        return "unknown"
    try:
        return dataset_version(discover(folder)[0])
    except (DatasetError, OSError):
        return "unknown"
