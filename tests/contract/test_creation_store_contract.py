"""One CreationStore contract, held against every backend: memory, SQLite, and Firestore
(emulator) through both of its adapters - the gRPC client the API uses and the standard-library
REST client the jobs use (through the REST stand-in in front of the same emulator).

What the Firestore emulator can and cannot prove: it stores and queries documents faithfully
(CRUD, ordering, filters, server timestamps) but its transactions have NO isolation, so two
racing claims on it could both "win". The claim race is therefore proven on SQLite (real
cross-process locking, bottom of this file); for Firestore we prove the part that is ours —
``update`` re-runs the lifecycle function on fresh data when Firestore aborts the transaction —
by injecting the Aborted a contended commit gets in production (``test_firestore_update_...``,
``test_firestore_rest_update_...``). Both adapters share one document layout; a test writes
with each and reads with the other.
"""

from __future__ import annotations

import dataclasses
import random
import threading
import time
import uuid
from datetime import datetime, timedelta

import pytest

from common.adapters.memory_store import InMemoryCreationStore
from common.adapters.sqlite_store import SqliteCreationStore
from common.config import Settings
from common.domain import creation as lc
from common.domain.creation import Creation, CreationError, Kind, MediaRef, Status
from common.domain.errors import (
    AlreadyClaimed,
    AlreadyFinished,
    CancelRequested,
    InvalidTransition,
    NotFound,
)
from common.domain.quota import QuotaPolicy, Refusal
from tests.support.race import race_processes, threads_at_once
from tools.servers import firestore_emulator

LEASE = timedelta(seconds=60)


@pytest.fixture(scope="module")
def firestore_env():
    """The gRPC emulator and the REST stand-in in front of it (tools/standins/firestore_rest.py)."""
    with firestore_emulator() as fs:
        yield fs.env


@pytest.fixture
def firestore_host(firestore_env):
    return firestore_env["FIRESTORE_EMULATOR_HOST"]


def _settings(prefix: str | None = None) -> Settings:
    # A unique collection prefix per test: parallel tests (and reruns) never see each other.
    prefix = prefix or f"t{uuid.uuid4().hex[:10]}_"
    return Settings(gcp_project="phoenix-test", firestore_prefix=prefix)


def _firestore_store(host: str, monkeypatch, prefix: str | None = None):
    """The API's and the sweeper's Firestore adapter (google-cloud-firestore, gRPC)."""
    from common.adapters.firestore_store import FirestoreCreationStore

    monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", host)
    return FirestoreCreationStore.from_settings(_settings(prefix))


def _firestore_rest_store(env, prefix: str | None = None):
    """The jobs' Firestore adapter (REST, standard library only), on the same emulator."""
    from common.adapters.firestore_rest_store import FirestoreRestCreationStore

    return FirestoreRestCreationStore.from_settings(_settings(prefix), env=env)


@pytest.fixture(params=["memory", "sqlite", "firestore", "firestore-rest"])
def store(request, tmp_path, monkeypatch):
    if request.param == "memory":
        s = InMemoryCreationStore()
    elif request.param == "sqlite":
        s = SqliteCreationStore(tmp_path / "creations.sqlite3")
    elif request.param == "firestore":
        s = _firestore_store(request.getfixturevalue("firestore_host"), monkeypatch)
    else:
        s = _firestore_rest_store(request.getfixturevalue("firestore_env"))
    yield s
    s.close()


def _new(user="u1", *, created_at: datetime | None = None, kind=Kind.IMAGE, prompt="a cat"):
    return lc.new(
        user_id=user,
        kind=kind,
        prompt=prompt,
        params={"count": 2, "aspect_ratio": "1:1"},
        path="cloud-tasks",
        now=created_at or lc.utcnow(),
    )


def _without_updated_at(c: Creation) -> dict:
    d = lc.to_dict(c)
    d.pop("updated_at")
    return d


def test_add_get_roundtrips_every_field(store):
    now = lc.utcnow().replace(microsecond=123456)
    full = dataclasses.replace(
        _new(created_at=now, kind=Kind.VIDEO, prompt="ünïcode ✓ prompt"),
        params={"aspect_ratio": "9:16", "duration_seconds": 8, "nested": {"a": [1, 2]}},
        status=Status.PROCESSING,
        progress=37,
        media=(MediaRef("x/0.mp4", "video/mp4"), MediaRef("x/1.png", "image/png")),
        error=CreationError("quota_exhausted", "try later"),
        attempts=2,
        lease_owner="exec-1/abc",
        lease_expires_at=now + timedelta(seconds=120),
        claimed_at=now + timedelta(seconds=1),
        finished_at=None,
        operation="projects/p/locations/l/publishers/google/models/veo/operations/42",
        dispatched_at=now + timedelta(milliseconds=5),
        dispatch_error="once failed",
        dispatches=3,
        traceparent="00-" + "a" * 32 + "-" + "b" * 16 + "-01",
        execution="jobs/phoenix-video-job/executions/phoenix-video-job-x1y2z",
        cancel_requested_at=now + timedelta(seconds=7),
        cancelled_at=now + timedelta(seconds=9),
        provider_started=True,
    )
    store.add(full)
    got = store.get(full.id)
    assert got is not None
    # updated_at may be set by the server (Firestore: commit time); everything else is exact.
    assert _without_updated_at(got) == _without_updated_at(full)
    assert got.updated_at.tzinfo is not None
    assert abs(got.updated_at - full.updated_at) < timedelta(seconds=30)
    assert store.get("does-not-exist") is None


def test_add_of_an_existing_id_raises_value_error(store):
    c = _new()
    store.add(c)
    with pytest.raises(ValueError):
        store.add(dataclasses.replace(c, prompt="other"))
    assert store.get(c.id).prompt == c.prompt


def test_update_applies_the_change_persists_it_and_returns_the_record_as_written(store):
    c = _new()
    store.add(c)
    written = store.update(
        c.id, lambda cur: dataclasses.replace(cur, progress=42, updated_at=lc.utcnow())
    )
    assert written.progress == 42
    stored = store.get(c.id)
    assert lc.to_dict(stored) == lc.to_dict(written)  # including the (server) updated_at


def test_update_whose_change_raises_writes_nothing(store):
    c = _new()
    store.add(c)
    before = lc.to_dict(store.get(c.id))

    def bad(cur: Creation) -> Creation:
        raise InvalidTransition("no")

    with pytest.raises(InvalidTransition):
        store.update(c.id, bad)
    assert lc.to_dict(store.get(c.id)) == before


def test_update_of_an_unknown_id_raises_not_found(store):
    with pytest.raises(NotFound):
        store.update("nope", lambda c: c)


def test_list_for_user_is_newest_first_limited_and_isolated(store):
    t0 = lc.utcnow() - timedelta(hours=1)
    mine = [_new("alice", created_at=t0 + timedelta(seconds=i)) for i in range(3)]
    theirs = _new("bob", created_at=t0 + timedelta(seconds=10))
    for c in [mine[1], theirs, mine[0], mine[2]]:
        store.add(c)
    assert [c.id for c in store.list_for_user("alice", 2)] == [mine[2].id, mine[1].id]
    assert [c.id for c in store.list_for_user("alice", 10)] == [c.id for c in reversed(mine)]
    assert [c.id for c in store.list_for_user("bob", 10)] == [theirs.id]
    assert store.list_for_user("carol", 10) == []


def test_scan_filters_by_status_updated_before_and_created_after(store):
    t0 = lc.utcnow() - timedelta(hours=2)
    old = _new(created_at=t0)  # created long ago
    recent = _new(created_at=t0 + timedelta(hours=1))
    store.add(old)
    store.add(recent)
    store.update(
        recent.id, lambda c: lc.claim(c, owner="o", now=lc.utcnow(), lease=LEASE, max_attempts=3)
    )
    time.sleep(0.05)
    # A cut taken from the stored records themselves (Firestore's updated_at is server time).
    cut = max(store.get(old.id).updated_at, store.get(recent.id).updated_at) + timedelta(
        milliseconds=1
    )
    time.sleep(0.05)
    later = dataclasses.replace(
        _new(created_at=t0 + timedelta(hours=1, minutes=30)), updated_at=lc.utcnow()
    )
    store.add(later)

    ids = lambda cs: [c.id for c in cs]  # noqa: E731
    assert set(ids(store.scan())) == {old.id, recent.id, later.id}
    assert set(ids(store.scan(statuses=[Status.PENDING]))) == {old.id, later.id}
    assert ids(store.scan(statuses=[Status.PROCESSING])) == [recent.id]
    assert store.scan(statuses=[]) == []
    assert set(ids(store.scan(updated_before=cut))) == {old.id, recent.id}
    assert ids(store.scan(statuses=[Status.PENDING], updated_before=cut)) == [old.id]
    assert set(ids(store.scan(created_after=t0 + timedelta(minutes=30)))) == {recent.id, later.id}
    # Oldest updated_at first, and limit counts.
    ordered = store.scan()
    assert [c.updated_at for c in ordered] == sorted(c.updated_at for c in ordered)
    assert len(store.scan(limit=2)) == 2


def test_claim_semantics_through_update(store):
    c = _new(kind=Kind.VIDEO)
    store.add(c)
    now = lc.utcnow()

    def claim(owner: str, at: datetime):
        return lambda cur: lc.claim(cur, owner=owner, now=at, lease=LEASE, max_attempts=3)

    first = store.update(c.id, claim("exec-a", now))
    assert first.status is Status.PROCESSING and first.lease_owner == "exec-a"
    assert first.attempts == 1
    with pytest.raises(AlreadyClaimed):
        store.update(c.id, claim("exec-b", now + timedelta(seconds=1)))
    assert store.get(c.id).lease_owner == "exec-a"
    # exec-a died: once its lease has expired, a new execution takes over (attempt 2).
    later = now + LEASE + timedelta(seconds=1)
    taken = store.update(c.id, claim("exec-c", later))
    assert taken.lease_owner == "exec-c" and taken.attempts == 2
    stored = store.get(c.id)
    assert stored.lease_owner == "exec-c" and stored.attempts == 2
    assert stored.status is Status.PROCESSING


# --- Admission: the quota record (common.domain.quota) kept by every store ------------------

CAP = QuotaPolicy(max_active=3, per_minute=0)


def _admit(store, c: Creation, policy: QuotaPolicy = CAP, now: datetime | None = None):
    return store.admit(c.user_id, c.id, policy, now or lc.utcnow(), insert=c)


def test_admit_stores_the_creation_with_its_slot_and_refusal_writes_nothing(store):
    admitted = [_new("alice") for _ in range(3)]
    for c in admitted:
        assert _admit(store, c) is None
        assert store.get(c.id) is not None
    over = _new("alice")
    refusal = _admit(store, over)
    assert isinstance(refusal, Refusal) and refusal.code == "too_many_active"
    assert refusal.retry_after_seconds > 0
    assert store.get(over.id) is None
    assert set(store.quota("alice").active) == {c.id for c in admitted}
    # Another user is not affected.
    assert _admit(store, _new("bob")) is None


def test_finishing_a_creation_through_update_releases_its_slot(store):
    cs = [_new("alice") for _ in range(3)]
    for c in cs:
        assert _admit(store, c) is None
    now = lc.utcnow()
    store.update(
        cs[0].id, lambda cur: lc.claim(cur, owner="o", now=now, lease=LEASE, max_attempts=3)
    )
    # Progress is not an end: the slot stays taken.
    assert isinstance(_admit(store, _new("alice")), Refusal)
    store.update(
        cs[0].id,
        lambda cur: lc.complete(cur, owner="o", now=now, media=(MediaRef("k/0.png", "image/png"),)),
    )
    store.update(
        cs[1].id,
        lambda cur: lc.fail(cur, owner=None, now=now, error=CreationError("x", "y")),
    )
    assert set(store.quota("alice").active) == {cs[2].id}
    assert _admit(store, _new("alice")) is None
    assert _admit(store, _new("alice")) is None
    assert isinstance(_admit(store, _new("alice")), Refusal)


def test_release_quota_is_idempotent_and_holders_lists_only_users_holding_slots(store):
    a, b = _new("alice"), _new("bob")
    assert _admit(store, a) is None and _admit(store, b) is None
    assert {q.user_id for q in store.quota_holders()} == {"alice", "bob"}
    store.release_quota("alice", a.id)
    store.release_quota("alice", a.id)
    store.release_quota("carol", "never-admitted")
    assert store.quota("alice").active == {}
    assert [q.user_id for q in store.quota_holders()] == ["bob"]
    assert store.get(a.id) is not None  # releasing a slot never touches the creation


def test_admit_without_insert_takes_a_slot_for_an_existing_record(store):
    c = _new("alice")
    store.add(c)
    assert store.admit("alice", c.id, CAP, lc.utcnow()) is None
    assert set(store.quota("alice").active) == {c.id}
    assert store.admit("alice", c.id, CAP, lc.utcnow()) is None  # no second slot
    assert len(store.quota("alice").active) == 1


def test_admit_of_an_existing_id_raises_and_takes_no_slot(store):
    c = _new("alice")
    store.add(c)
    with pytest.raises(ValueError):
        _admit(store, dataclasses.replace(c, prompt="other"))
    assert store.quota("alice").active == {}
    assert store.get(c.id).prompt == c.prompt


def test_per_minute_window_and_global_ceiling_are_kept_in_the_store(store):
    t0 = lc.utcnow().replace(second=5, microsecond=0)
    per_minute = QuotaPolicy(max_active=0, per_minute=2)
    results = [_admit(store, _new("alice"), per_minute, t0) for _ in range(3)]
    assert results[:2] == [None, None]
    assert isinstance(results[2], Refusal) and results[2].code == "rate_limited"
    assert results[2].retry_after_seconds == 60
    assert _admit(store, _new("alice"), per_minute, t0 + timedelta(seconds=61)) is None

    ceiling = QuotaPolicy(max_active=0, per_minute=0, global_per_minute=2)
    results = [_admit(store, _new(f"user{i}"), ceiling, t0) for i in range(3)]
    assert results[:2] == [None, None]
    assert isinstance(results[2], Refusal) and results[2].code == "busy"
    assert _admit(store, _new("user9"), ceiling, t0 + timedelta(minutes=1)) is None


def test_cancel_through_update_pending_at_once_processing_by_request(store):
    now = lc.utcnow()
    queued, running = _new(), _new(kind=Kind.VIDEO)
    store.add(queued)
    store.add(running)
    gone = store.update(queued.id, lambda cur: lc.cancel(cur, now=now))
    assert gone.status is Status.CANCELLED and store.get(queued.id).cancelled_at is not None
    with pytest.raises(AlreadyFinished):  # a delivery after the cancel backs off
        store.update(
            queued.id, lambda cur: lc.claim(cur, owner="late", now=now, lease=LEASE, max_attempts=3)
        )
    store.update(
        running.id, lambda cur: lc.claim(cur, owner="job", now=now, lease=LEASE, max_attempts=3)
    )
    store.update(running.id, lambda cur: lc.cancel(cur, now=now))
    assert store.get(running.id).cancel_requested_at is not None
    with pytest.raises(CancelRequested):  # the job's next renewal is told, and writes nothing
        store.update(running.id, lambda cur: lc.renew(cur, owner="job", now=now, lease=LEASE))
    ended = store.update(running.id, lambda cur: lc.finish_cancel(cur, owner="job", now=now))
    stored = store.get(running.id)
    assert ended.status is stored.status is Status.CANCELLED
    assert stored.lease_owner is None and stored.cancelled_at is not None


def test_delete_removes_the_record_and_only_that_one(store):
    a, b = _new(user="d1"), _new(user="d1")
    store.add(a)
    store.add(b)
    store.update(a.id, lambda cur: lc.cancel(cur, now=lc.utcnow()))
    store.update(a.id, lambda cur: lc.mark_deleting(cur, now=lc.utcnow()))
    assert [c.id for c in store.scan(statuses=[Status.DELETING])] == [a.id]
    assert store.delete(a.id) is True
    assert store.get(a.id) is None and store.get(b.id) is not None
    assert [c.id for c in store.list_for_user("d1", 10)] == [b.id]
    assert store.delete(a.id) is False  # a second delete (the sweeper after the API) is fine
    with pytest.raises(NotFound):
        store.update(a.id, lambda cur: cur)


# --- Firestore only: the transaction retry path ---------------------------------------------


def _claim_loses_to_the_rival_after_one_retry(store, c: Creation, now: datetime) -> None:
    seen: list[str | None] = []

    def claim(cur: Creation) -> Creation:
        seen.append(cur.lease_owner)
        return lc.claim(cur, owner="me", now=now, lease=LEASE, max_attempts=3)

    with pytest.raises(AlreadyClaimed):
        store.update(c.id, claim)
    assert seen == [None, "rival"]  # ran twice: the second time on the rival's record
    assert store.get(c.id).lease_owner == "rival"


def test_firestore_update_reruns_the_change_on_fresh_data_when_the_commit_is_aborted(
    firestore_host, monkeypatch
):
    """Production Firestore aborts a transaction whose read document was written concurrently
    and the client retries it. We inject exactly that: during our first commit another
    execution claims the creation, and the commit fails with Aborted. The retry must re-read,
    re-run the lifecycle function (-> AlreadyClaimed) and write nothing of ours."""
    from google.api_core import exceptions as gexc
    from google.cloud.firestore_v1.transaction import Transaction

    from common.adapters import firestore_store

    store = _firestore_store(firestore_host, monkeypatch)
    c = _new(kind=Kind.VIDEO)
    store.add(c)
    now = lc.utcnow()
    rival = lc.claim(c, owner="rival", now=now, lease=LEASE, max_attempts=3)

    real_commit = Transaction._commit
    commits = {"n": 0}

    def contended_commit(self):
        commits["n"] += 1
        if commits["n"] == 1:
            # The rival's write lands between our read and our commit.
            store._collection.document(c.id).set(firestore_store._to_document(rival))
            self._clean_up()
            raise gexc.Aborted("transaction contention")
        return real_commit(self)

    monkeypatch.setattr(Transaction, "_commit", contended_commit)
    _claim_loses_to_the_rival_after_one_retry(store, c, now)


def test_firestore_admission_contended_past_every_retry_is_a_refusal_that_writes_nothing(
    firestore_host, monkeypatch
):
    """A burst from one user contends on one quota document; production Firestore aborts the
    losers, the client retries them. One that is still aborted after every attempt must come
    back as a short 'busy' refusal (429), with neither the creation nor a slot written."""
    from google.api_core import exceptions as gexc
    from google.cloud.firestore_v1.transaction import Transaction

    store = _firestore_store(firestore_host, monkeypatch)
    attempts = {"n": 0}

    def always_contended(self):
        attempts["n"] += 1  # the transaction stays open: the client rolls it back at the end
        raise gexc.Aborted("transaction contention")

    monkeypatch.setattr(Transaction, "_commit", always_contended)
    c = _new("alice")
    refusal = _admit(store, c)
    assert isinstance(refusal, Refusal) and refusal.code == "busy"
    assert refusal.retry_after_seconds >= 1
    assert attempts["n"] > 1  # it did retry before giving up
    monkeypatch.undo()
    assert store.get(c.id) is None
    assert store.quota("alice").active == {}


@pytest.mark.parametrize("writer", ["grpc", "rest"])
def test_firestore_documents_use_native_timestamps_and_server_updated_at(
    writer, firestore_env, monkeypatch
):
    """Whichever adapter writes, the raw document (read with the SDK) holds timestamps as
    Firestore timestamps and ``updated_at`` as the server's clock."""
    prefix = f"t{uuid.uuid4().hex[:10]}_"
    sdk = _firestore_store(firestore_env["FIRESTORE_EMULATOR_HOST"], monkeypatch, prefix)
    store = sdk if writer == "grpc" else _firestore_rest_store(firestore_env, prefix)
    past = lc.utcnow() - timedelta(days=3)
    c = dataclasses.replace(_new(created_at=past), updated_at=past)
    store.add(c)
    raw = sdk._collection.document(c.id).get().to_dict()
    assert isinstance(raw["created_at"], datetime) and isinstance(raw["updated_at"], datetime)
    # updated_at is the server's clock, not the (3 days old) value the caller put in.
    assert raw["updated_at"] - past > timedelta(days=2)
    assert raw["lease_expires_at"] is None and raw["status"] == "pending"


def _aborted():
    from common.adapters.firestore_rest_store import FirestoreRestError

    return FirestoreRestError("ABORTED", 409, "transaction contention")


def test_firestore_rest_update_reruns_the_change_on_fresh_data_when_the_commit_is_aborted(
    firestore_env, monkeypatch
):
    """The REST adapter's side of the test above: production answers a contended commit with
    409 ABORTED; ``update`` must begin again (retryTransaction), re-read, re-run the lifecycle
    function (-> AlreadyClaimed) and write nothing of ours."""
    from common.adapters import firestore_schema
    from common.adapters.firestore_rest_store import FirestoreRest, set_write

    store = _firestore_rest_store(firestore_env)
    c = _new(kind=Kind.VIDEO)
    store.add(c)
    now = lc.utcnow()
    rival = lc.claim(c, owner="rival", now=now, lease=LEASE, max_attempts=3)
    real_commit = FirestoreRest.commit
    commits = {"n": 0}

    def contended_commit(self, writes, transaction=None):
        if transaction is not None:
            commits["n"] += 1
            if commits["n"] == 1:
                # The rival's write lands between our read and our commit.
                rival_doc = firestore_schema.creation_document(rival)
                real_commit(self, [set_write(store._doc(c.id), rival_doc)])
                raise _aborted()
        return real_commit(self, writes, transaction)

    monkeypatch.setattr(FirestoreRest, "commit", contended_commit)
    _claim_loses_to_the_rival_after_one_retry(store, c, now)
    assert commits["n"] == 1  # the retry wrote nothing: the lifecycle refused


def test_firestore_rest_admission_contended_past_every_retry_is_a_refusal_that_writes_nothing(
    firestore_env, monkeypatch
):
    from common.adapters.firestore_rest_store import FirestoreRest

    store = _firestore_rest_store(firestore_env)
    real_commit = FirestoreRest.commit
    attempts = {"n": 0}

    def always_contended(self, writes, transaction=None):
        if transaction is None:
            return real_commit(self, writes, transaction)
        attempts["n"] += 1
        raise _aborted()

    monkeypatch.setattr(FirestoreRest, "commit", always_contended)
    c = _new("alice")
    refusal = _admit(store, c)
    assert isinstance(refusal, Refusal) and refusal.code == "busy"
    assert attempts["n"] == 20  # QUOTA_TX_ATTEMPTS, as the gRPC adapter
    monkeypatch.undo()
    assert store.get(c.id) is None
    assert store.quota("alice").active == {}


def test_both_firestore_adapters_read_what_the_other_wrote(firestore_env, monkeypatch):
    """The API writes a creation with the gRPC client, its job claims and finishes it over
    REST, the API reads the result: one document layout (firestore_schema), the same field
    types (timestamps as Firestore timestamps, ints as integers), and ``updated_at`` the
    server's commit time whichever client wrote."""
    prefix = f"t{uuid.uuid4().hex[:10]}_"
    api = _firestore_store(firestore_env["FIRESTORE_EMULATOR_HOST"], monkeypatch, prefix)
    job = _firestore_rest_store(firestore_env, prefix)
    past = lc.utcnow() - timedelta(days=3)
    full = dataclasses.replace(
        _new(created_at=past, kind=Kind.VIDEO, prompt="ünïcode ✓"),
        params={"aspect_ratio": "9:16", "duration_seconds": 8, "nested": {"a": [1, 2.5]}},
        updated_at=past,
        dispatched_at=past + timedelta(milliseconds=5),
        traceparent="00-" + "a" * 32 + "-" + "b" * 16 + "-01",
    )
    _admit(api, full)
    from_rest = job.get(full.id)
    assert from_rest is not None
    assert _without_updated_at(from_rest) == _without_updated_at(full)
    assert from_rest.updated_at - past > timedelta(days=2)  # the server's clock
    assert job.quota(full.user_id).active.keys() == {full.id}

    now = lc.utcnow()
    claimed = job.update(
        full.id, lambda cur: lc.claim(cur, owner="exec-1", now=now, lease=LEASE, max_attempts=3)
    )
    done = job.update(
        full.id,
        lambda cur: lc.complete(
            cur, owner="exec-1", media=(MediaRef("c/0.mp4", "video/mp4"),), now=lc.utcnow()
        ),
    )
    from_grpc = api.get(full.id)
    assert from_grpc is not None
    assert lc.to_dict(from_grpc) == lc.to_dict(done)
    assert from_grpc.updated_at >= claimed.updated_at
    # Finishing over REST released the slot the gRPC admission took, in the same transaction.
    assert api.quota(full.user_id).active == {}
    raw = api._collection.document(full.id).get().to_dict()
    assert isinstance(raw["claimed_at"], datetime) and isinstance(raw["finished_at"], datetime)
    assert isinstance(raw["params"]["duration_seconds"], int)
    api.close()
    job.close()


# --- SQLite only: the claim race with real isolation ----------------------------------------


def _claim_everything(path: str, ids: list[str], tag: str, start, out) -> None:
    store = SqliteCreationStore(path)
    wins: list[tuple[str, str]] = []
    lock = threading.Lock()

    def worker(n: int) -> None:
        owner = f"{tag}-t{n}"
        order = ids[:]
        random.Random(owner).shuffle(order)
        for cid in order:
            try:
                store.update(
                    cid,
                    lambda cur: lc.claim(
                        cur,
                        owner=owner,
                        now=lc.utcnow(),
                        lease=timedelta(minutes=5),
                        max_attempts=3,
                    ),
                )
            except AlreadyClaimed:
                continue
            with lock:
                wins.append((cid, owner))

    threads_at_once(start, worker, [(n,) for n in range(8)])
    out.extend(wins)


def test_sqlite_claim_race_across_processes_has_exactly_one_winner_per_creation(tmp_path):
    """2 processes x 8 threads each try to claim all 25 creations: exactly one wins each."""
    path = str(tmp_path / "race.sqlite3")
    seed = SqliteCreationStore(path)
    ids = []
    for _ in range(25):
        c = _new(kind=Kind.VIDEO)
        seed.add(c)
        ids.append(c.id)
    seed.close()
    wins = race_processes(_claim_everything, [(path, ids, f"p{i}") for i in range(2)])
    winners: dict[str, list[str]] = {}
    for cid, owner in wins:
        winners.setdefault(cid, []).append(owner)
    assert sorted(winners) == sorted(ids)
    assert all(len(owners) == 1 for owners in winners.values()), winners
    check = SqliteCreationStore(path)
    for cid, owners in winners.items():
        c = check.get(cid)
        assert c.lease_owner == owners[0] and c.attempts == 1


def _admit_from_threads(path: str, user: str, policy: QuotaPolicy, attempts: int, start, out):
    store = SqliteCreationStore(path)
    results: list[bool] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(attempts):
            c = _new(user)
            ok = store.admit(user, c.id, policy, lc.utcnow(), insert=c) is None
            with lock:
                results.append(ok)

    threads_at_once(start, worker, [()] * 8)
    out.extend(results)


@pytest.mark.parametrize(
    "policy, expected",
    [(QuotaPolicy(max_active=10, per_minute=0), 10), (QuotaPolicy(max_active=0, per_minute=7), 7)],
    ids=["cap", "per-minute"],
)
def test_sqlite_admission_holds_across_processes_and_threads(tmp_path, policy, expected):
    """4 processes x 8 threads x 5 attempts (160) for one user: exactly the limit admitted."""
    path = str(tmp_path / "quota.sqlite3")
    SqliteCreationStore(path).close()
    results = race_processes(_admit_from_threads, [(path, "alice", policy, 5)] * 4)
    assert len(results) == 160
    assert results.count(True) == expected
    check = SqliteCreationStore(path)
    assert len(check.list_for_user("alice", 500)) == expected
