"""Ratings in SQLite: WAL, one row per answer, every answer committed before the server replies.

    store = Store(study / "ratings.sqlite")
    store.put_design(design)                          # once, by `cocoedit rate new`
    token = store.add_rater("alice")                  # or the existing token of alice
    store.answer(rater_id, pos, task, choice, score, time_ms)   # -> row id; raises AnswerRejected

Each call opens its own connection (the web server answers from a thread pool), so writes of several
raters at once are serialised by SQLite itself (`BEGIN IMMEDIATE`, a 10 s busy timeout). With
`journal_mode=WAL` and `synchronous=FULL` a committed answer survives a killed process (and a power
cut); an undone answer keeps its row, marked `undone`, so the table is the whole history.
"""

from __future__ import annotations

import datetime
import json
import secrets
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Optional

DB_FILE = "ratings.sqlite"  # in the study folder
SCHEMA = """
CREATE TABLE IF NOT EXISTS design (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS raters (
    id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, token TEXT NOT NULL UNIQUE, created TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS answers (
    id INTEGER PRIMARY KEY,
    rater_id INTEGER NOT NULL REFERENCES raters(id),
    pos INTEGER NOT NULL,            -- position in the rater's queue (cluster/rate/design.py rater_queue)
    kind TEXT NOT NULL,              -- pair | repeat | check
    ref TEXT NOT NULL,               -- pair id or check id
    criterion TEXT NOT NULL,
    left_image TEXT NOT NULL,        -- the sides shown: study-relative image paths
    right_image TEXT NOT NULL,
    choice TEXT NOT NULL CHECK (choice IN ('left', 'right', 'tie')),
    score INTEGER CHECK (score IS NULL OR score BETWEEN 1 AND 5),
    time_ms INTEGER NOT NULL,        -- from showing the task to the answer, measured in the page
    created TEXT NOT NULL,
    undone INTEGER NOT NULL DEFAULT 0);
CREATE UNIQUE INDEX IF NOT EXISTS one_active_answer ON answers(rater_id, pos) WHERE undone = 0;
"""


class AnswerRejected(Exception):
    """An answer the store refused, with the HTTP status that says why (404 unknown, 409 replay)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")


class Store:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        with self._connect() as db:
            db.executescript(SCHEMA)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=10.0, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.row_factory = sqlite3.Row
            yield db
        finally:
            db.close()

    def put_design(self, design: dict[str, Any]) -> None:
        with self._connect() as db:
            db.execute("INSERT OR REPLACE INTO design VALUES ('design', ?)", (json.dumps(design),))

    def design(self) -> dict[str, Any]:
        with self._connect() as db:
            row = db.execute("SELECT value FROM design WHERE key = 'design'").fetchone()
        if row is None:
            raise ValueError(f"{self.path} holds no design; make the study with `cocoedit rate new`")
        return json.loads(row["value"])

    def add_rater(self, name: str) -> str:
        """The rater's token: a new one, or the existing one for this name (a resumed session)."""
        name = name.strip()
        if (
            not name
            or len(name) > 64
            or not name.replace("_", "").replace("-", "").replace(".", "").isalnum()
        ):
            raise ValueError(f"rater name {name!r}: use 1-64 letters, digits, '.', '-' or '_'")
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            row = db.execute("SELECT token FROM raters WHERE name = ?", (name,)).fetchone()
            if row is not None:
                db.execute("COMMIT")
                return str(row["token"])
            token = secrets.token_urlsafe(18)
            db.execute("INSERT INTO raters (name, token, created) VALUES (?, ?, ?)", (name, token, _now()))
            db.execute("COMMIT")
        return token

    def rater_by_token(self, token: str) -> Optional[sqlite3.Row]:
        with self._connect() as db:
            return db.execute("SELECT id, name FROM raters WHERE token = ?", (token,)).fetchone()

    def raters(self) -> list[dict[str, Any]]:
        with self._connect() as db:
            return [dict(r) for r in db.execute("SELECT id, name, token FROM raters ORDER BY id")]

    def answered(self, rater_id: int) -> set[int]:
        with self._connect() as db:
            rows = db.execute("SELECT pos FROM answers WHERE rater_id = ? AND undone = 0", (rater_id,))
            return {int(r["pos"]) for r in rows}

    def answer(
        self, rater_id: int, pos: int, task: dict[str, Any], choice: str, score: Optional[int], time_ms: int
    ) -> int:
        """Insert and commit one answer to queue position `pos` (the rater's next one); its row id."""
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                done = {int(r["pos"]) for r in db.execute(
                    "SELECT pos FROM answers WHERE rater_id = ? AND undone = 0", (rater_id,))}  # fmt: skip
                if pos in done:
                    raise AnswerRejected(
                        409, f"task {pos} is already answered (a replayed answer); undo it first"
                    )
                expected = min(set(range(pos + 1)) - done)
                if expected != pos:
                    raise AnswerRejected(409, f"task {pos} is not the next one; answer task {expected} first")
                cur = db.execute(
                    "INSERT INTO answers (rater_id, pos, kind, ref, criterion, left_image, right_image, choice,"
                    " score, time_ms, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (rater_id, pos, task["kind"], task["ref"], task["criterion"], task["left"], task["right"],
                     choice, score, time_ms, _now()),
                )  # fmt: skip
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        return int(cur.lastrowid or 0)

    def undo(self, rater_id: int) -> Optional[int]:
        """Mark the rater's latest active answer undone; its queue position, or None if there is none."""
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            row = db.execute(
                "SELECT id, pos FROM answers WHERE rater_id = ? AND undone = 0 ORDER BY id DESC LIMIT 1",
                (rater_id,),
            ).fetchone()
            if row is not None:
                db.execute("UPDATE answers SET undone = 1 WHERE id = ?", (row["id"],))
            db.execute("COMMIT")
        return None if row is None else int(row["pos"])

    def answers(self, include_undone: bool = False) -> list[dict[str, Any]]:
        """Every answer with its rater's name, oldest first."""
        where = "" if include_undone else "WHERE a.undone = 0"
        with self._connect() as db:
            rows = db.execute(
                f"SELECT a.*, r.name AS rater FROM answers a JOIN raters r ON r.id = a.rater_id {where} ORDER BY a.id"
            )
            return [dict(r) for r in rows]

    def count(self) -> int:
        with self._connect() as db:
            return int(db.execute("SELECT COUNT(*) FROM answers").fetchone()[0])
