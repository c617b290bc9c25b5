"""The embedded creation store: one SQLite file, shared by the API and every job process.

WAL mode lets the API read while a job writes. ``update`` runs under ``BEGIN IMMEDIATE``, which
takes SQLite's write lock before reading, so the read-modify-write of a lifecycle change is
serialised across processes: two jobs racing to claim one creation cannot both win.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from common.domain import creation as lifecycle
from common.domain import quota as quotas
from common.domain.creation import Creation
from common.domain.errors import NotFound
from common.domain.quota import Refusal, UserQuota
from common.ports import AdmissionAsk, CreationStore, ScanQuery

_GLOBAL_KEY = "global"


def _user_key(user_id: str) -> str:
    return f"u:{user_id}"


_SCHEMA = """
CREATE TABLE IF NOT EXISTS creations (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    status TEXT NOT NULL,
    path TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    doc TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS creations_by_user ON creations (user_id, created_at DESC);
CREATE INDEX IF NOT EXISTS creations_by_status ON creations (status, updated_at);
CREATE INDEX IF NOT EXISTS creations_by_created ON creations (created_at);
-- Admission: one row per user ('u:<user id>') and one global row ('global'); doc is the
-- common.domain.quota record as JSON. Read and written under BEGIN IMMEDIATE with the creation.
CREATE TABLE IF NOT EXISTS quotas (
    key TEXT PRIMARY KEY,
    active_count INTEGER NOT NULL DEFAULT 0,
    doc TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS quotas_holding ON quotas (active_count);
"""


def _iso(ts: datetime) -> str:
    # Fixed-width UTC text sorts chronologically, so SQL comparisons on it are correct.
    return ts.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class SqliteCreationStore(CreationStore):
    def __init__(self, path: Path | str, *, busy_timeout_s: float = 30.0) -> None:
        self._path = str(path)
        if self._path != ":memory:":
            Path(self._path).parent.mkdir(parents=True, exist_ok=True)
        self._busy_timeout_s = busy_timeout_s
        self._local = threading.local()
        with self._connect() as conn:
            conn.executescript(_SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            # isolation_level=None: we issue BEGIN ourselves, so transactions are explicit.
            conn = sqlite3.connect(
                self._path,
                timeout=self._busy_timeout_s,
                isolation_level=None,
                check_same_thread=True,
            )
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute(f"PRAGMA busy_timeout={int(self._busy_timeout_s * 1000)}")
            self._local.conn = conn
        return conn

    def _row_values(self, c: Creation) -> tuple:
        return (
            c.user_id,
            c.status.value,
            c.path,
            _iso(c.created_at),
            _iso(c.updated_at),
            json.dumps(lifecycle.to_dict(c), separators=(",", ":")),
        )

    def add(self, creation: Creation) -> None:
        self._insert(self._connect(), creation)

    def _insert(self, conn: sqlite3.Connection, creation: Creation) -> None:
        """One new row (``add``, and ``admit`` inside its transaction); a taken id is a
        ValueError, like every store's."""
        try:
            conn.execute(
                "INSERT INTO creations (id, user_id, status, path, created_at, updated_at, doc)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (creation.id, *self._row_values(creation)),
            )
        except sqlite3.IntegrityError:
            raise ValueError(f"creation {creation.id} already exists") from None

    def get(self, creation_id: str) -> Creation | None:
        row = (
            self._connect()
            .execute("SELECT doc FROM creations WHERE id = ?", (creation_id,))
            .fetchone()
        )
        return lifecycle.from_dict(json.loads(row[0])) if row else None

    def update(self, creation_id: str, change: Callable[[Creation], Creation]) -> Creation:
        conn = self._connect()
        try:
            # Inside the try: an exception landing right after BEGIN (the job's SIGTERM
            # handler) must roll back, or this connection keeps the write lock.
            self._begin_immediate(conn)
            row = conn.execute("SELECT doc FROM creations WHERE id = ?", (creation_id,)).fetchone()
            if row is None:
                raise NotFound(creation_id)
            current = lifecycle.from_dict(json.loads(row[0]))
            updated = change(current)
            if updated is not current:
                conn.execute(
                    "UPDATE creations SET user_id=?, status=?, path=?, created_at=?,"
                    " updated_at=?, doc=? WHERE id=?",
                    (*self._row_values(updated), creation_id),
                )
                if updated.status.terminal and not current.status.terminal:
                    self._release_in_tx(conn, updated.user_id, creation_id)
            conn.execute("COMMIT")
            return updated
        except BaseException:
            # Only if still open: an exception landing after COMMIT (e.g. the job's SIGTERM
            # handler raising) must propagate, not be replaced by "no transaction is active".
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def _begin_immediate(self, conn: sqlite3.Connection) -> None:
        # busy_timeout covers most contention; this loop covers the rare SQLITE_BUSY that WAL
        # returns immediately (e.g. during a checkpoint) so a burst of jobs never errors out.
        deadline = time.monotonic() + self._busy_timeout_s
        while True:
            try:
                conn.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc):
                    raise
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.01)

    def list_for_user(self, user_id: str, limit: int) -> list[Creation]:
        rows = (
            self._connect()
            .execute(
                "SELECT doc FROM creations WHERE user_id = ? ORDER BY created_at DESC, id DESC LIMIT ?",
                (user_id, limit),
            )
            .fetchall()
        )
        return [lifecycle.from_dict(json.loads(r[0])) for r in rows]

    def _scan(self, filters: ScanQuery) -> list[Creation]:
        statuses, updated_before, created_after, limit = filters
        where: list[str] = []
        args: list[object] = []
        if statuses is not None:
            values = [s.value for s in statuses]
            if not values:
                return []
            where.append(f"status IN ({','.join('?' * len(values))})")
            args.extend(values)
        if updated_before is not None:
            where.append("updated_at < ?")
            args.append(_iso(updated_before))
        if created_after is not None:
            where.append("created_at >= ?")
            args.append(_iso(created_after))
        sql = "SELECT doc FROM creations"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY updated_at ASC LIMIT ?"
        args.append(limit)
        rows = self._connect().execute(sql, args).fetchall()
        return [lifecycle.from_dict(json.loads(r[0])) for r in rows]

    def delete(self, creation_id: str) -> bool:
        cur = self._connect().execute("DELETE FROM creations WHERE id = ?", (creation_id,))
        return cur.rowcount > 0

    def ping(self) -> None:
        self._connect().execute("SELECT 1").fetchone()

    # --- admission ------------------------------------------------------------------------

    @staticmethod
    def _read_quota(conn: sqlite3.Connection, key: str) -> dict | None:
        row = conn.execute("SELECT doc FROM quotas WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    @staticmethod
    def _write_quota(conn: sqlite3.Connection, key: str, doc: dict, active: int) -> None:
        conn.execute(
            "INSERT INTO quotas (key, active_count, doc) VALUES (?, ?, ?)"
            " ON CONFLICT(key) DO UPDATE SET active_count=excluded.active_count, doc=excluded.doc",
            (key, active, json.dumps(doc, separators=(",", ":"))),
        )

    def _release_in_tx(self, conn: sqlite3.Connection, user_id: str, creation_id: str) -> None:
        doc = self._read_quota(conn, _user_key(user_id))
        if doc is None:
            return
        user = quotas.user_from_dict(user_id, doc)
        released = quotas.release(user, creation_id)
        if released is not user:
            self._write_quota(
                conn, _user_key(user_id), quotas.user_to_dict(released), len(released.active)
            )

    def _admit(self, ask: AdmissionAsk) -> Refusal | None:
        user_id, creation_id, policy, now, insert = ask
        conn = self._connect()
        try:
            # Inside the try: an exception landing right after BEGIN (the job's SIGTERM
            # handler) must roll back, or this connection keeps the write lock.
            self._begin_immediate(conn)
            user = quotas.user_from_dict(user_id, self._read_quota(conn, _user_key(user_id)))
            glob = (
                quotas.global_from_dict(self._read_quota(conn, _GLOBAL_KEY))
                if policy.global_per_minute > 0
                else None
            )
            decided = quotas.admit(user, glob, policy, creation_id, now)
            if isinstance(decided, Refusal):
                conn.execute("ROLLBACK")
                return decided
            new_user, new_glob = decided
            if insert is not None:
                self._insert(conn, insert)
            if new_user is not user:
                self._write_quota(
                    conn, _user_key(user_id), quotas.user_to_dict(new_user), len(new_user.active)
                )
            if new_glob is not None and new_glob is not glob:
                self._write_quota(conn, _GLOBAL_KEY, quotas.global_to_dict(new_glob), 0)
            conn.execute("COMMIT")
            return None
        except BaseException:
            # Only if still open: an exception landing after COMMIT (e.g. the job's SIGTERM
            # handler raising) must propagate, not be replaced by "no transaction is active".
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def release_quota(self, user_id: str, creation_id: str) -> None:
        conn = self._connect()
        try:
            # Inside the try: an exception landing right after BEGIN (the job's SIGTERM
            # handler) must roll back, or this connection keeps the write lock.
            self._begin_immediate(conn)
            self._release_in_tx(conn, user_id, creation_id)
            conn.execute("COMMIT")
        except BaseException:
            # Only if still open: an exception landing after COMMIT (e.g. the job's SIGTERM
            # handler raising) must propagate, not be replaced by "no transaction is active".
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def quota(self, user_id: str) -> UserQuota:
        return quotas.user_from_dict(user_id, self._read_quota(self._connect(), _user_key(user_id)))

    def quota_holders(self, limit: int = 1000) -> list[UserQuota]:
        rows = (
            self._connect()
            .execute(
                "SELECT key, doc FROM quotas WHERE active_count > 0 AND key LIKE 'u:%' LIMIT ?",
                (limit,),
            )
            .fetchall()
        )
        return [quotas.user_from_dict(key[2:], json.loads(doc)) for key, doc in rows]

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
