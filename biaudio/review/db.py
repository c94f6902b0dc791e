"""QA decisions in SQLite beside the manifest (``OUT/qa.sqlite``).

Why SQLite and why this shape:

* **Append-only.** Every key press is a row in ``decisions``; nothing is ever deleted or edited
  (triggers refuse it). Undo only sets the row's ``undone`` flag, so the audit trail shows what a
  reviewer did, including second thoughts. A reviewer's *effective* decision on a clip in a pass is
  the newest row that is not undone.
* **Nothing lost.** Each decision is its own ``BEGIN IMMEDIATE ... COMMIT`` with ``synchronous=FULL``
  and is committed before the HTTP response goes out, so a crashed server or a closed tab loses at
  most the request in flight, which the browser never saw acknowledged.
* **Several servers.** WAL mode lets readers run beside a writer; ``busy_timeout`` makes a second
  server (another reviewer on the same OUT) wait for the lock instead of failing.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from biaudio.errors import BiaudioError

DB_NAME = "qa.sqlite"
DB_SCHEMA_VERSION = 1
DECISIONS = ("accept", "reject", "flag", "skip")
BUSY_TIMEOUT_MS = 15000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS decisions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    clip_id TEXT NOT NULL,
    pass INTEGER NOT NULL,
    reviewer TEXT NOT NULL,
    decision TEXT NOT NULL CHECK (decision IN ('accept', 'reject', 'flag', 'skip')),
    reason TEXT,
    note TEXT,
    created_at TEXT NOT NULL,
    undone INTEGER NOT NULL DEFAULT 0 CHECK (undone IN (0, 1)),
    undone_at TEXT
);
CREATE INDEX IF NOT EXISTS decisions_by_pass ON decisions (pass, reviewer, clip_id, id);
CREATE TRIGGER IF NOT EXISTS decisions_no_delete BEFORE DELETE ON decisions
BEGIN SELECT RAISE(ABORT, 'qa decisions are append-only'); END;
CREATE TRIGGER IF NOT EXISTS decisions_no_edit
BEFORE UPDATE OF id, clip_id, pass, reviewer, decision, reason, note, created_at ON decisions
BEGIN SELECT RAISE(ABORT, 'qa decisions are append-only (only the undone flag may change)'); END;
CREATE TRIGGER IF NOT EXISTS decisions_no_redo BEFORE UPDATE OF undone ON decisions
WHEN OLD.undone = 1 AND NEW.undone = 0
BEGIN SELECT RAISE(ABORT, 'an undone decision stays undone; record a new decision instead'); END;
CREATE TABLE IF NOT EXISTS sessions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    pass INTEGER NOT NULL,
    reviewer TEXT NOT NULL,
    started_at TEXT NOT NULL,
    where_expr TEXT,
    sample INTEGER,
    seed INTEGER,
    n_clips INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS applies (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    applied_at TEXT NOT NULL,
    policy TEXT NOT NULL,
    previous_version TEXT,
    counts TEXT NOT NULL
);
"""


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def db_path(out_dir: Path) -> Path:
    return Path(out_dir) / DB_NAME


@dataclass
class Decision:
    id: int
    clip_id: str
    pass_: int
    reviewer: str
    decision: str
    reason: str | None
    note: str | None
    created_at: str
    undone: bool

    @classmethod
    def from_row(cls, r: sqlite3.Row) -> Decision:
        return cls(
            r["id"],
            r["clip_id"],
            r["pass"],
            r["reviewer"],
            r["decision"],
            r["reason"],
            r["note"],
            r["created_at"],
            bool(r["undone"]),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "clip_id": self.clip_id,
            "pass": self.pass_,
            "reviewer": self.reviewer,
            "decision": self.decision,
            "reason": self.reason,
            "note": self.note,
            "created_at": self.created_at,
        }


def _db_error(path: Path, e: sqlite3.Error) -> BiaudioError:
    """A broken or unwritable qa.sqlite as one readable error; the file itself is left as it is
    (it holds the reviewers' work)."""
    msg = str(e)
    if "readonly" in msg or "read-only" in msg or "unable to open" in msg:
        return BiaudioError(str(path), "qa_db_read_only",
                            f"{msg}: the QA database cannot be written; make it (and its folder) writable")
    return BiaudioError(str(path), "qa_db_unreadable",
                        f"{msg}: not a readable QA database; restore it from a copy or move it aside "
                        "(a new one is made by `biaudio review`)")


class QADatabase:
    """One ``qa.sqlite``. Opens a fresh connection per operation, so it is safe to share across the
    HTTP server's threads (sqlite3 connections are not) and between processes."""

    def __init__(self, path: Path, create: bool = True, readonly: bool = False,
                 busy_timeout_ms: int = BUSY_TIMEOUT_MS):
        """``readonly``: open the file for reading only (``qa summary``), so a command that only
        reads decisions never changes the file and works on a read-only copy. A file SQLite cannot
        read, or cannot write when it must, raises BiaudioError and is left as it is."""
        self.path = Path(path)
        self.readonly = readonly
        self.busy_timeout_ms = int(busy_timeout_ms)
        if (not create or readonly) and not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: no QA database (run `biaudio review` first)")
        try:
            if readonly:
                with self.connect() as con:
                    con.execute("SELECT count(*) FROM decisions").fetchone()
                return
            with self.connect() as con:
                # journal_mode is persistent in the file; switching needs no open transaction.
                con.execute("PRAGMA journal_mode=WAL")
                with self.transaction(con):
                    for stmt in _split_sql(_SCHEMA):
                        con.execute(stmt)
                    con.execute(
                        "INSERT OR IGNORE INTO meta (key, value) VALUES ('db_schema_version', ?)",
                        (str(DB_SCHEMA_VERSION),),
                    )
        except sqlite3.Error as e:
            raise _db_error(self.path, e) from e

    @contextmanager
    def connect(self) -> Iterator[sqlite3.Connection]:
        if self.readonly:
            # mode=ro never writes; immutable=1 also reads a WAL database in a folder we cannot
            # write (no -shm file can be made there)
            uri = Path(os.path.abspath(self.path)).as_uri()
            con = sqlite3.connect(f"{uri}?mode=ro", uri=True, timeout=self.busy_timeout_ms / 1000,
                                  isolation_level=None)
            try:
                con.execute("PRAGMA schema_version").fetchone()
            except sqlite3.OperationalError:
                con.close()
                con = sqlite3.connect(f"{uri}?immutable=1", uri=True, isolation_level=None)
            con.row_factory = sqlite3.Row
            try:
                yield con
            finally:
                con.close()
            return
        con = sqlite3.connect(self.path, timeout=self.busy_timeout_ms / 1000, isolation_level=None)
        con.row_factory = sqlite3.Row
        con.execute(f"PRAGMA busy_timeout={self.busy_timeout_ms}")
        con.execute("PRAGMA synchronous=FULL")
        try:
            yield con
        finally:
            con.close()

    @staticmethod
    @contextmanager
    def transaction(con: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` takes the write lock up front, so two servers serialise cleanly
        (the loser waits ``busy_timeout``) instead of failing half-way with SQLITE_BUSY."""
        con.execute("BEGIN IMMEDIATE")
        try:
            yield con
        except BaseException:
            con.execute("ROLLBACK")
            raise
        con.execute("COMMIT")

    # -- writes ---------------------------------------------------------------------------------

    def record(
        self,
        clip_id: str,
        pass_: int,
        reviewer: str,
        decision: str,
        reason: str | None = None,
        note: str | None = None,
    ) -> Decision:
        if decision not in DECISIONS:
            raise ValueError(f"decision must be one of {DECISIONS}, not {decision!r}")
        with self.connect() as con, self.transaction(con):
            cur = con.execute(
                "INSERT INTO decisions (clip_id, pass, reviewer, decision, reason, note, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (clip_id, int(pass_), reviewer, decision, reason or None, note or None, now_iso()),
            )
            row = con.execute("SELECT * FROM decisions WHERE id = ?", (cur.lastrowid,)).fetchone()
        return Decision.from_row(row)

    def undo_last(self, pass_: int, reviewer: str) -> Decision | None:
        """Mark this reviewer's newest live decision in this pass as undone; return it (or None)."""
        with self.connect() as con, self.transaction(con):
            row = con.execute(
                "SELECT * FROM decisions WHERE pass = ? AND reviewer = ? AND undone = 0 "
                "ORDER BY id DESC LIMIT 1",
                (int(pass_), reviewer),
            ).fetchone()
            if row is None:
                return None
            con.execute("UPDATE decisions SET undone = 1, undone_at = ? WHERE id = ?", (now_iso(), row["id"]))
        return Decision.from_row(row)

    def start_session(
        self, pass_: int, reviewer: str, where: str | None, sample: int | None, seed: int | None, n_clips: int
    ) -> None:
        with self.connect() as con, self.transaction(con):
            con.execute(
                "INSERT INTO sessions (pass, reviewer, started_at, where_expr, sample, seed, n_clips) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (int(pass_), reviewer, now_iso(), where, sample, seed, n_clips),
            )

    def log_apply(self, policy: str, previous_version: str | None, counts_json: str) -> None:
        with self.connect() as con, self.transaction(con):
            con.execute(
                "INSERT INTO applies (applied_at, policy, previous_version, counts) VALUES (?, ?, ?, ?)",
                (now_iso(), policy, previous_version, counts_json),
            )

    # -- reads ----------------------------------------------------------------------------------

    def effective(self, pass_: int | None = None, reviewer: str | None = None) -> list[Decision]:
        """The newest live (not undone) decision per clip, per pass (and per reviewer if given).

        With ``reviewer=None`` several reviewers in one pass collapse to the newest decision on
        each clip, which is what summary/apply mean by "the pass decided X".
        """
        group = "pass, clip_id" if reviewer is None else "pass, reviewer, clip_id"
        conds, args = ["undone = 0"], []
        if pass_ is not None:
            conds.append("pass = ?")
            args.append(int(pass_))
        if reviewer is not None:
            conds.append("reviewer = ?")
            args.append(reviewer)
        sql = (
            "SELECT d.* FROM decisions d JOIN (SELECT MAX(id) AS id FROM decisions WHERE "
            + " AND ".join(conds)
            + f" GROUP BY {group}) m ON d.id = m.id ORDER BY d.id"
        )
        with self.connect() as con:
            return [Decision.from_row(r) for r in con.execute(sql, args).fetchall()]

    def all_rows(self) -> list[dict[str, Any]]:
        with self.connect() as con:
            return [dict(r) for r in con.execute("SELECT * FROM decisions ORDER BY id").fetchall()]

    def passes(self) -> list[int]:
        with self.connect() as con:
            return [r[0] for r in con.execute("SELECT DISTINCT pass FROM decisions ORDER BY pass").fetchall()]


def _split_sql(script: str) -> list[str]:
    """Split the schema into statements, keeping trigger bodies (which contain ';') whole."""
    out: list[str] = []
    buf: list[str] = []
    for line in script.strip().splitlines():
        buf.append(line)
        text = "\n".join(buf).strip()
        if text.endswith(";") and sqlite3.complete_statement(text):
            out.append(text)
            buf = []
    if buf and "\n".join(buf).strip():
        out.append("\n".join(buf).strip())
    return out
