"""Concurrency guards without cloud SDKs: in-process (unit tests) and SQLite (the local runtime).

The SQLite guard lives in the same database file as the creation store (its own table), so the
local runtime's job processes share one Veo cap exactly as Cloud Run Jobs share the Firestore
one. Every acquire/renew/release is one ``BEGIN IMMEDIATE`` transaction: SQLite's write lock is
taken before the count is read, so two processes can never both see "one slot left" and take it.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable

from common.ports import ConcurrencyGuard

_SCHEMA = """
CREATE TABLE IF NOT EXISTS concurrency_slots (
    resource TEXT NOT NULL,
    holder TEXT NOT NULL,
    expires_at REAL NOT NULL,
    PRIMARY KEY (resource, holder)
);
"""


def _as_datetime(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, tz=timezone.utc)


class InMemoryConcurrencyGuard(ConcurrencyGuard):
    """One process's guard: the reference behaviour, and the fake for unit tests."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._slots: dict[str, dict[str, float]] = {}
        self._lock = threading.Lock()

    def _live(self, resource: str, now: float) -> dict[str, float]:
        slots = self._slots.setdefault(resource, {})
        for holder in [h for h, exp in slots.items() if exp <= now]:
            del slots[holder]
        return slots

    def acquire(self, resource: str, holder: str, *, limit: int, ttl: timedelta) -> bool:
        with self._lock:
            now = self._clock()
            slots = self._live(resource, now)
            if holder not in slots and len(slots) >= limit:
                return False
            slots[holder] = now + ttl.total_seconds()
            return True

    def renew(
        self, resource: str, holder: str, *, ttl: timedelta, limit: int | None = None
    ) -> bool:
        with self._lock:
            now = self._clock()
            slots = self._live(resource, now)
            held = holder in slots
            if held or limit is None or len(slots) < limit:
                slots[holder] = now + ttl.total_seconds()
            return held

    def release(self, resource: str, holder: str) -> None:
        with self._lock:
            self._slots.get(resource, {}).pop(holder, None)

    def holders(self, resource: str) -> dict[str, datetime]:
        with self._lock:
            return {h: _as_datetime(e) for h, e in self._live(resource, self._clock()).items()}


class SqliteConcurrencyGuard(ConcurrencyGuard):
    def __init__(
        self,
        path: Path | str,
        *,
        busy_timeout_s: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._path = str(path)
        if self._path != ":memory:":
            Path(self._path).parent.mkdir(parents=True, exist_ok=True)
        self._busy_timeout_s = busy_timeout_s
        self._clock = clock
        self._local = threading.local()
        self._connect().executescript(_SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self._path, timeout=self._busy_timeout_s, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA busy_timeout={int(self._busy_timeout_s * 1000)}")
            self._local.conn = conn
        return conn

    def _transaction(self, body: Callable[[sqlite3.Connection, float], object]) -> object:
        conn = self._connect()
        deadline = time.monotonic() + self._busy_timeout_s
        try:
            # BEGIN inside the try: an exception landing right after it (the job's SIGTERM
            # handler) must roll back, or this connection keeps the write lock.
            while True:  # WAL can answer SQLITE_BUSY at once (checkpoint); retry until timeout
                try:
                    conn.execute("BEGIN IMMEDIATE")
                    break
                except sqlite3.OperationalError as exc:
                    if ("locked" not in str(exc) and "busy" not in str(exc)) or (
                        time.monotonic() > deadline
                    ):
                        raise
                    time.sleep(0.01)
            result = body(conn, self._clock())
            conn.execute("COMMIT")
            return result
        except BaseException:
            # Only if still open: an exception landing after COMMIT (e.g. the job's SIGTERM
            # handler raising) must propagate, not be replaced by "no transaction is active".
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    @staticmethod
    def _expire(conn: sqlite3.Connection, resource: str, now: float) -> None:
        conn.execute(
            "DELETE FROM concurrency_slots WHERE resource = ? AND expires_at <= ?", (resource, now)
        )

    def acquire(self, resource: str, holder: str, *, limit: int, ttl: timedelta) -> bool:
        def body(conn: sqlite3.Connection, now: float) -> bool:
            self._expire(conn, resource, now)
            held = conn.execute(
                "SELECT 1 FROM concurrency_slots WHERE resource = ? AND holder = ?",
                (resource, holder),
            ).fetchone()
            if not held:
                (count,) = conn.execute(
                    "SELECT COUNT(*) FROM concurrency_slots WHERE resource = ?", (resource,)
                ).fetchone()
                if count >= limit:
                    return False
            conn.execute(
                "INSERT OR REPLACE INTO concurrency_slots (resource, holder, expires_at)"
                " VALUES (?, ?, ?)",
                (resource, holder, now + ttl.total_seconds()),
            )
            return True

        return bool(self._transaction(body))

    def renew(
        self, resource: str, holder: str, *, ttl: timedelta, limit: int | None = None
    ) -> bool:
        def body(conn: sqlite3.Connection, now: float) -> bool:
            self._expire(conn, resource, now)
            held = conn.execute(
                "SELECT 1 FROM concurrency_slots WHERE resource = ? AND holder = ?",
                (resource, holder),
            ).fetchone()
            if not held and limit is not None:
                (count,) = conn.execute(
                    "SELECT COUNT(*) FROM concurrency_slots WHERE resource = ?", (resource,)
                ).fetchone()
                if count >= limit:
                    return False
            conn.execute(
                "INSERT OR REPLACE INTO concurrency_slots (resource, holder, expires_at)"
                " VALUES (?, ?, ?)",
                (resource, holder, now + ttl.total_seconds()),
            )
            return bool(held)

        return bool(self._transaction(body))

    def release(self, resource: str, holder: str) -> None:
        def body(conn: sqlite3.Connection, now: float) -> None:
            conn.execute(
                "DELETE FROM concurrency_slots WHERE resource = ? AND holder = ?",
                (resource, holder),
            )

        self._transaction(body)

    def holders(self, resource: str) -> dict[str, datetime]:
        rows = (
            self._connect()
            .execute(
                "SELECT holder, expires_at FROM concurrency_slots"
                " WHERE resource = ? AND expires_at > ?",
                (resource, self._clock()),
            )
            .fetchall()
        )
        return {h: _as_datetime(e) for h, e in rows}

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
