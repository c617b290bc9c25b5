"""The sweeper's rules over an in-memory store and a scripted dispatcher."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from common.adapters.local_dispatch import RecordingDispatcher
from common.adapters.memory_store import InMemoryCreationStore
from common.domain import creation as lc
from common.domain.creation import Kind, Status
from common.domain.errors import DispatchError
from common.sweeper import SweepPolicy, sweep
from tests.support.sweep_counts import sweep_counts

T0 = datetime(2026, 1, 1, tzinfo=UTC)
POLICY = SweepPolicy(
    dispatch_grace=timedelta(seconds=10),  # pending_timeout: the default, 5 min
    max_dispatches=3,
    max_age=timedelta(hours=1),
)


class DownDispatcher(RecordingDispatcher):
    def dispatch(self, payload):
        raise DispatchError("redis down")


def setup(**changes):
    store = InMemoryCreationStore()
    c = lc.new(user_id="u", kind=Kind.VIDEO, prompt="p", params={}, path="celery", now=T0)
    store.add(c)
    for fn in changes.get("steps", []):
        store.update(c.id, fn)
    return store, c.id


def test_failed_dispatch_is_redispatched_after_the_grace_period():
    """Shown to fail when the sweeper skips refused dispatches (scratch branch
    scratch/promises-break-sweep-refused, 2026-12-01)."""
    store, cid = setup(steps=[lambda c: lc.mark_dispatch_failed(c, now=T0, reason="down")])
    rec = RecordingDispatcher()
    paths = []

    def dispatcher_for(path):
        paths.append(path)
        return rec

    assert (
        sweep(store, dispatcher_for, now=T0 + timedelta(seconds=5), policy=POLICY).redispatched
        == []
    )
    report = sweep(store, dispatcher_for, now=T0 + timedelta(seconds=11), policy=POLICY)
    assert report.redispatched == [cid] and paths == ["celery"]
    assert [p.creation_id for p in rec.dispatched] == [cid]
    c = store.get(cid)
    assert c.dispatch_error is None and c.dispatches == 1 and c.status is Status.PENDING


def test_dispatcher_still_down_keeps_the_record_and_the_reason():
    store, cid = setup(steps=[lambda c: lc.mark_dispatch_failed(c, now=T0, reason="down")])
    report = sweep(store, lambda p: DownDispatcher(), now=T0 + timedelta(minutes=1), policy=POLICY)
    assert report.errors == [cid]
    c = store.get(cid)
    assert c.status is Status.PENDING and "redis down" in c.dispatch_error


def test_dispatched_but_never_claimed_is_sent_again_then_given_up():
    store, cid = setup(steps=[lambda c: lc.mark_dispatched(c, now=T0)])
    rec = RecordingDispatcher()
    now = T0
    for _ in range(2):
        now += timedelta(minutes=6)
        assert sweep(store, lambda p: rec, now=now, policy=POLICY).redispatched == [cid]
    now += timedelta(minutes=6)
    report = sweep(store, lambda p: rec, now=now, policy=POLICY)
    assert report.failed == [cid]
    assert store.get(cid).error.code == "dispatch_failed"


def test_expired_lease_is_redispatched_but_a_live_one_is_left_alone():
    """Shown to fail when the sweeper ignores expired leases (scratch branch
    scratch/promises-break-sweep-leases, 2026-12-01)."""
    lease = timedelta(minutes=2)
    store, cid = setup(
        steps=[
            lambda c: lc.mark_dispatched(c, now=T0),
            lambda c: lc.claim(c, owner="job", now=T0, lease=lease, max_attempts=3),
        ]
    )
    rec = RecordingDispatcher()
    assert (
        sweep(store, lambda p: rec, now=T0 + timedelta(minutes=1), policy=POLICY).redispatched == []
    )
    assert sweep(
        store, lambda p: rec, now=T0 + timedelta(minutes=3), policy=POLICY
    ).redispatched == [cid]
    assert store.get(cid).status is Status.PROCESSING  # the next claim takes it over


def test_too_old_creations_fail_with_timed_out():
    store, cid = setup(steps=[lambda c: lc.mark_dispatched(c, now=T0)])
    report = sweep(
        store, lambda p: RecordingDispatcher(), now=T0 + timedelta(hours=2), policy=POLICY
    )
    assert report.failed == [cid] and store.get(cid).error.code == "timed_out"


def test_finished_creations_are_never_touched():
    store, cid = setup(
        steps=[
            lambda c: lc.claim(c, owner="j", now=T0, lease=timedelta(seconds=1), max_attempts=3),
            lambda c: lc.complete(c, owner="j", now=T0, media=(lc.MediaRef("k", "video/mp4"),)),
        ]
    )
    report = sweep(
        store, lambda p: RecordingDispatcher(), now=T0 + timedelta(hours=9), policy=POLICY
    )
    assert report.as_dict() == sweep_counts()


def test_a_drained_path_sends_stuck_creations_to_the_users_current_path():
    store, cid = setup(steps=[lambda c: lc.mark_dispatch_failed(c, now=T0, reason="down")])
    built = {}

    def dispatcher_for(path):
        return built.setdefault(path, RecordingDispatcher())

    report = sweep(
        store,
        dispatcher_for,
        now=T0 + timedelta(minutes=1),
        policy=POLICY,
        route=lambda kind, user: "cloud-tasks",
    )
    assert report.redispatched == [cid]
    assert list(built) == ["cloud-tasks"]
    assert store.get(cid).path == "cloud-tasks"


def test_an_expired_lease_is_resent_once_per_pending_timeout_not_every_pass():
    lease = timedelta(minutes=2)
    store, cid = setup(
        steps=[lambda c: lc.claim(c, owner="job", now=T0, lease=lease, max_attempts=3)]
    )
    rec = RecordingDispatcher()
    now = T0 + timedelta(minutes=3)
    assert sweep(store, lambda p: rec, now=now, policy=POLICY).redispatched == [cid]
    for minutes in (1, 2, 4):  # nobody claimed it yet: wait for the pending timeout (5 min)
        later = now + timedelta(minutes=minutes)
        assert sweep(store, lambda p: rec, now=later, policy=POLICY).redispatched == []
    assert sweep(
        store, lambda p: rec, now=now + timedelta(minutes=6), policy=POLICY
    ).redispatched == [cid]
    assert len(rec.dispatched) == 2


def test_sweep_frees_admission_slots_whose_creation_finished_or_vanished():
    """A slot held for a creation that is terminal or gone (its release was lost) is freed by
    the sweeper; a slot for a creation still running is kept."""
    import dataclasses as _dc

    from common.adapters.memory_store import InMemoryCreationStore
    from common.domain import creation as _lc
    from common.domain.creation import Kind as _Kind
    from common.domain.quota import QuotaPolicy as _Policy

    store = InMemoryCreationStore()
    policy = _Policy(max_active=3, per_minute=0)
    now = _lc.utcnow()
    made = [
        _lc.new(user_id="u", kind=_Kind.IMAGE, prompt="p", params={}, path="local", now=now)
        for _ in range(3)
    ]
    for c in made:
        assert store.admit("u", c.id, policy, now, insert=c) is None
    # Out of step: one record finished without going through update, one vanished.
    store._items[made[0].id] = _dc.replace(made[0], status=_lc.Status.COMPLETED)
    del store._items[made[1].id]
    assert store.admit("u", "next", policy, now) is not None  # still refused: looks full

    report = sweep(store, lambda path: None, now=now)  # nothing to dispatch
    assert sorted(report.slots_released) == sorted([made[0].id, made[1].id])
    assert set(store.quota("u").active) == {made[2].id}
    assert store.admit("u", "next", policy, now) is None


def test_cancelled_creations_are_never_redispatched():
    store, cid = setup(steps=[lambda c: lc.cancel(c, now=T0)])
    rec = RecordingDispatcher()
    report = sweep(store, lambda p: rec, now=T0 + timedelta(minutes=30), policy=POLICY)
    assert rec.dispatched == [] and report.redispatched == [] and report.failed == []
    assert store.get(cid).status is Status.CANCELLED


def test_a_cancel_requested_creation_whose_job_died_is_ended_cancelled_not_redispatched():
    lease = timedelta(seconds=30)
    store, cid = setup(
        steps=[
            lambda c: lc.mark_dispatched(c, now=T0),
            lambda c: lc.claim(c, owner="j", now=T0, lease=lease, max_attempts=3),
            lambda c: lc.cancel(c, now=T0 + timedelta(seconds=5)),
        ]
    )

    class Backstop(RecordingDispatcher):
        stopped: list = []

        def stop_execution(self, creation):
            self.stopped.append(creation.id)
            return True

    rec = Backstop()
    # While the lease is live the job may still see the request: leave it alone.
    live = sweep(store, lambda p: rec, now=T0 + timedelta(seconds=20), policy=POLICY)
    assert live.cancelled == [] and store.get(cid).status is Status.PROCESSING
    report = sweep(store, lambda p: rec, now=T0 + timedelta(minutes=2), policy=POLICY)
    assert report.cancelled == [cid] and report.redispatched == [] and rec.dispatched == []
    assert store.get(cid).status is Status.CANCELLED
    assert rec.stopped == [cid]  # the path is asked to stop whatever may still run
