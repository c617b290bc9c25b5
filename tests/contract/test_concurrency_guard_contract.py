"""The ConcurrencyGuard contract (in-memory, SQLite, Firestore emulator) and a real race.

The Firestore guard's bookkeeping (limit, renew, expiry, release) runs against the emulator; its
race safety cannot be shown there (the emulator has no transaction isolation), so the
cross-process race is proven on the SQLite guard only. In production the Firestore guard relies
on the same transaction retry path the creation store's contract test exercises.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

import pytest

from common.adapters.concurrency_guard import InMemoryConcurrencyGuard, SqliteConcurrencyGuard
from tests.support.race import race_processes, threads_at_once
from tools.servers import firestore_emulator

TTL = timedelta(seconds=30)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def firestore_env():
    """The emulator and the REST stand-in the jobs' Firestore client talks to."""
    with firestore_emulator() as fs:
        yield fs.env


@pytest.fixture(params=["memory", "sqlite", "firestore"])
def guard_and_clock(request, tmp_path, monkeypatch):
    clock = FakeClock()
    if request.param == "memory":
        yield InMemoryConcurrencyGuard(clock=clock), clock
    elif request.param == "sqlite":
        g = SqliteConcurrencyGuard(tmp_path / "guard.sqlite3", clock=clock)
        yield g, clock
        g.close()
    else:
        from common.adapters.firestore_guard import FirestoreConcurrencyGuard
        from common.adapters.firestore_rest_store import rest_client
        from common.config import Settings

        env = request.getfixturevalue("firestore_env")
        g = FirestoreConcurrencyGuard(
            rest_client(Settings(gcp_project="phoenix-test"), env),
            prefix=f"t{uuid.uuid4().hex[:10]}_",
            clock=lambda: datetime.fromtimestamp(clock.now, tz=timezone.utc),
        )
        yield g, clock
        g.close()


def test_limit_is_enforced_and_release_frees_a_slot(guard_and_clock):
    """Shown to fail when the SQLite guard stops counting slots (scratch branch
    scratch/promises-break-slot-guard, 2026-12-01)."""
    guard, _ = guard_and_clock
    assert guard.acquire("veo", "a", limit=2, ttl=TTL)
    assert guard.acquire("veo", "b", limit=2, ttl=TTL)
    assert not guard.acquire("veo", "c", limit=2, ttl=TTL)
    guard.release("veo", "a")
    assert guard.acquire("veo", "c", limit=2, ttl=TTL)
    assert set(guard.holders("veo")) == {"b", "c"}


def test_reacquire_by_a_holder_renews_instead_of_taking_a_second_slot(guard_and_clock):
    guard, _ = guard_and_clock
    assert guard.acquire("veo", "a", limit=1, ttl=TTL)
    assert guard.acquire("veo", "a", limit=1, ttl=TTL)  # e.g. the retried job of one creation
    assert list(guard.holders("veo")) == ["a"]


def test_expired_slots_free_themselves(guard_and_clock):
    guard, clock = guard_and_clock
    assert guard.acquire("veo", "crashed", limit=1, ttl=TTL)
    assert not guard.acquire("veo", "next", limit=1, ttl=TTL)
    clock.now += TTL.total_seconds() + 1
    assert guard.holders("veo") == {}
    assert guard.acquire("veo", "next", limit=1, ttl=TTL)


def test_renew_extends_and_reports_a_lapsed_slot(guard_and_clock):
    guard, clock = guard_and_clock
    assert guard.acquire("veo", "a", limit=1, ttl=TTL)
    clock.now += 20
    assert guard.renew("veo", "a", ttl=TTL) is True
    clock.now += 20  # 40 s after acquire, 20 s after renew: still held
    assert not guard.acquire("veo", "b", limit=1, ttl=TTL)
    clock.now += 100
    # Lapsed, but the work is still running at the provider: renew counts it again.
    assert guard.renew("veo", "a", ttl=TTL) is False
    assert list(guard.holders("veo")) == ["a"]


def test_resources_are_independent_and_release_is_idempotent(guard_and_clock):
    guard, _ = guard_and_clock
    assert guard.acquire("veo/us", "a", limit=1, ttl=TTL)
    assert guard.acquire("veo/eu", "a", limit=1, ttl=TTL)
    guard.release("veo/us", "nobody")
    guard.release("veo/us", "a")
    guard.release("veo/us", "a")
    assert guard.holders("veo/us") == {} and list(guard.holders("veo/eu")) == ["a"]


def _race(path: str, holders: list[str], limit: int, start, results) -> None:
    import threading

    guard = SqliteConcurrencyGuard(path)
    won: list[str] = []
    lock = threading.Lock()

    def one(holder: str) -> None:
        g = guard  # per-thread connections inside
        if g.acquire("veo", holder, limit=limit, ttl=timedelta(minutes=5)):
            with lock:
                won.append(holder)

    threads_at_once(start, one, [(h,) for h in holders])
    results.extend(won)


def test_sqlite_guard_never_overcommits_under_a_cross_process_race(tmp_path):
    """4 processes x 8 threads (32 holders) race for 5 slots: exactly 5 win. Real isolation
    (SQLite's write lock taken by BEGIN IMMEDIATE before the count is read)."""
    path = str(tmp_path / "race.sqlite3")
    SqliteConcurrencyGuard(path).close()  # create the schema once
    holders = [[f"p{p}-t{t}" for t in range(8)] for p in range(4)]
    winners = race_processes(_race, [(path, h, 5) for h in holders], timeout=60)
    assert len(winners) == 5
    assert set(SqliteConcurrencyGuard(path).holders("veo")) == set(winners)


def test_renewing_a_lapsed_slot_never_pushes_the_count_past_the_cap(guard_and_clock):
    """Before (issue 12, case 4): ``renew`` re-inserted a lapsed holder unconditionally, so a
    slow holder whose slot expired while another job took the free slot made 2 holders of a
    cap of 1. Now a lapsed slot is taken again only below the cap.

    Shown to fail on 2026-12-01 with ``renew`` re-taking a lapsed slot whatever the count (memory
    and SQLite guards broken; Firestore left as is) (``scratch/reliability-break-renew-past-cap``).
    """
    guard, clock = guard_and_clock
    assert guard.acquire("veo", "slow", limit=1, ttl=TTL)
    clock.now += TTL.total_seconds() + 1  # "slow" missed its renewals; its slot lapsed
    assert guard.acquire("veo", "next", limit=1, ttl=TTL)
    assert guard.renew("veo", "slow", ttl=TTL, limit=1) is False
    assert list(guard.holders("veo")) == ["next"]
    guard.release("veo", "next")
    assert guard.renew("veo", "slow", ttl=TTL, limit=1) is False  # lapsed, but room: re-taken
    assert list(guard.holders("veo")) == ["slow"]
    assert guard.renew("veo", "slow", ttl=TTL, limit=1) is True
