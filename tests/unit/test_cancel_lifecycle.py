"""Cancel and delete in the pure lifecycle: every transition into and out of ``cancelled`` and
``deleting``, the cancel request a running job sees at its next renewal, and the two races that
matter (cancel vs complete, cancel vs claim) on a real store, where exactly one side wins."""

from __future__ import annotations

import dataclasses
import threading
from datetime import datetime, timedelta, timezone

import pytest

from common.adapters.sqlite_store import SqliteCreationStore
from common.domain import creation as lc
from common.domain.creation import CreationError, Kind, MediaRef, Status
from common.domain.errors import (
    AlreadyClaimed,
    AlreadyFinished,
    CancelRequested,
    InvalidTransition,
    LeaseLost,
)

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
LEASE = timedelta(seconds=60)
MEDIA = (MediaRef("x/0.png", "image/png"),)
ERR = CreationError("quota_exhausted", "try later")


def pending(kind=Kind.VIDEO):
    return lc.new(
        user_id="u",
        kind=kind,
        prompt="a fox",
        params={"duration_seconds": 8, "aspect_ratio": "16:9"},
        path="cloud-tasks",
        now=T0,
    )


def claimed(owner="job-a", now=T0, execution=None):
    return lc.claim(
        pending(), owner=owner, now=now, lease=LEASE, max_attempts=3, execution=execution
    )


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


# --- states ------------------------------------------------------------------------------------


def test_cancelled_and_deleting_are_terminal_and_only_deleting_is_hidden():
    assert Status.CANCELLED.terminal and Status.DELETING.terminal
    assert not Status.PENDING.terminal and not Status.PROCESSING.terminal
    assert Status.CANCELLED.public and not Status.DELETING.public
    assert [s.value for s in Status if s.public] == [
        "pending",
        "processing",
        "completed",
        "failed",
        "cancelled",
    ]


# --- cancel ------------------------------------------------------------------------------------


def test_cancel_of_a_pending_creation_is_immediate_and_terminal():
    c = lc.cancel(pending(), now=at(5))
    assert c.status is Status.CANCELLED
    assert c.cancelled_at == c.finished_at == c.cancel_requested_at == at(5)
    assert c.provider_started is False and c.error is None and c.attempts == 0


def test_cancel_is_idempotent():
    once = lc.cancel(pending(), now=at(5))
    assert lc.cancel(once, now=at(9)) is once
    requested = lc.cancel(claimed(), now=at(5))
    assert lc.cancel(requested, now=at(9)) is requested


def test_cancel_of_a_running_creation_only_records_the_request():
    c = lc.cancel(claimed(), now=at(5))
    assert c.status is Status.PROCESSING and c.cancel_requested_at == at(5)
    assert c.cancelled_at is None and c.lease_owner == "job-a"
    assert c.updated_at == at(5)  # pollers (ETag) see the request


def test_cancel_of_a_running_creation_whose_job_died_is_immediate():
    c = lc.cancel(claimed(), now=T0 + LEASE + timedelta(seconds=1))
    assert c.status is Status.CANCELLED and c.lease_owner is None


@pytest.mark.parametrize(
    "finish",
    [
        lambda c: lc.complete(c, owner="job-a", now=at(1), media=MEDIA),
        lambda c: lc.fail(c, owner="job-a", now=at(1), error=ERR),
    ],
    ids=["completed", "failed"],
)
def test_cancel_of_a_finished_creation_is_refused(finish):
    with pytest.raises(AlreadyFinished):
        lc.cancel(finish(claimed()), now=at(2))


@pytest.mark.parametrize(
    "change",
    [
        lambda c: lc.renew(c, owner="job-a", now=at(6), lease=LEASE),
        lambda c: lc.report_progress(c, owner="job-a", now=at(6), progress=40),
        lambda c: lc.record_operation(c, owner="job-a", now=at(6), operation="ops/1"),
        lambda c: lc.complete(c, owner="job-a", now=at(6), media=MEDIA),
        lambda c: lc.fail(c, owner="job-a", now=at(6), error=ERR),
        lambda c: lc.release_for_retry(c, owner="job-a", now=at(6), error=ERR, max_attempts=3),
        lambda c: lc.ensure_active(c, owner="job-a", now=at(6)),
    ],
    ids=["renew", "progress", "operation", "complete", "fail", "release", "ensure_active"],
)
def test_every_lease_bearing_change_refuses_once_cancel_was_requested(change):
    requested = lc.cancel(claimed(), now=at(5))
    with pytest.raises(CancelRequested) as info:
        change(requested)
    # A CancelRequested is a LeaseLost: code that stops on a lost lease stops on a cancel too.
    assert isinstance(info.value, LeaseLost)


def test_the_job_ends_a_requested_cancel_and_records_whether_the_provider_had_started():
    c = lc.record_operation(claimed(), owner="job-a", now=at(2), operation="ops/veo-1")
    requested = lc.cancel(c, now=at(5))
    done = lc.finish_cancel(requested, owner="job-a", now=at(7))
    assert done.status is Status.CANCELLED and done.cancelled_at == at(7)
    assert done.cancel_requested_at == at(5) and done.provider_started is True
    assert done.lease_owner is None and done.media == ()

    before_any_call = lc.finish_cancel(lc.cancel(claimed(), now=at(5)), owner="job-a", now=at(6))
    assert before_any_call.provider_started is False
    image_returned = lc.finish_cancel(
        lc.cancel(claimed(), now=at(5)), owner="job-a", now=at(6), provider_started=True
    )
    assert image_returned.provider_started is True


def test_finish_cancel_needs_the_lease_and_a_request():
    requested = lc.cancel(claimed(), now=at(5))
    with pytest.raises(LeaseLost):
        lc.finish_cancel(requested, owner="someone-else", now=at(6))
    with pytest.raises(InvalidTransition):
        lc.finish_cancel(claimed(), owner="job-a", now=at(6))
    done = lc.finish_cancel(requested, owner="job-a", now=at(6))
    with pytest.raises(AlreadyFinished):
        lc.finish_cancel(done, owner="job-a", now=at(7))


def test_a_delivery_after_cancel_is_refused_at_claim():
    cancelled = lc.cancel(pending(), now=at(1))
    with pytest.raises(AlreadyFinished):
        lc.claim(cancelled, owner="late-job", now=at(2), lease=LEASE, max_attempts=3)


def test_a_takeover_of_a_cancel_requested_creation_finishes_the_cancel():
    requested = lc.cancel(claimed(), now=at(5))
    # The first job died before it saw the request; its lease runs out; a redelivery claims.
    taken = lc.claim(requested, owner="job-b", now=T0 + LEASE * 2, lease=LEASE, max_attempts=3)
    assert taken.status is Status.CANCELLED and taken.attempts == 1
    # ... while the lease is live, the duplicate still backs off as usual.
    with pytest.raises(AlreadyClaimed):
        lc.claim(requested, owner="job-b", now=at(6), lease=LEASE, max_attempts=3)


def test_the_sweeper_failing_a_dead_cancel_requested_creation_ends_it_cancelled():
    requested = lc.cancel(claimed(), now=at(5))
    swept = lc.fail(
        requested, owner=None, now=T0 + LEASE * 2, error=CreationError("timed_out", "x")
    )
    assert swept.status is Status.CANCELLED and swept.error is None


def test_the_execution_is_recorded_at_claim_and_kept_on_takeover_without_one():
    c = claimed(execution="jobs/phoenix-video-job/executions/phoenix-video-job-abcde")
    assert c.execution == "jobs/phoenix-video-job/executions/phoenix-video-job-abcde"
    again = lc.claim(
        dataclasses.replace(c, lease_expires_at=at(1)),
        owner="b",
        now=at(2),
        lease=LEASE,
        max_attempts=3,
    )
    assert again.execution == c.execution


# --- delete ------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", ["completed", "failed", "cancelled"])
def test_finished_creations_become_deleting_tombstones(status):
    c = claimed()
    if status == "completed":
        c = lc.complete(c, owner="job-a", now=at(1), media=MEDIA)
    elif status == "failed":
        c = lc.fail(c, owner="job-a", now=at(1), error=ERR)
    else:
        c = lc.cancel(pending(), now=at(1))
    gone = lc.mark_deleting(c, now=at(3))
    assert gone.status is Status.DELETING and gone.updated_at == at(3)
    assert lc.mark_deleting(gone, now=at(4)) is gone  # idempotent
    with pytest.raises(AlreadyFinished):  # nothing comes back from a tombstone
        lc.cancel(gone, now=at(5))
    with pytest.raises(AlreadyFinished):
        lc.claim(gone, owner="x", now=at(5), lease=LEASE, max_attempts=3)


def test_unfinished_creations_cannot_be_deleted():
    for c in (pending(), claimed()):
        with pytest.raises(InvalidTransition, match="cancel it first"):
            lc.mark_deleting(c, now=at(1))


def test_the_new_fields_survive_serialisation():
    c = lc.finish_cancel(
        lc.cancel(claimed(execution="jobs/j/executions/e"), now=at(5)), owner="job-a", now=at(6)
    )
    assert lc.from_dict(lc.to_dict(c)) == c


# --- races on a real store (SQLite, one transaction per change) --------------------------------


def _race(store, first, second) -> tuple[object, object]:
    """Run two changes on one record from two threads released together; each result is the
    record written or the exception raised."""
    results: list[object] = [None, None]
    gate = threading.Barrier(2)

    def run(i, change):
        gate.wait()
        try:
            results[i] = change()
        except Exception as exc:  # noqa: BLE001 - the outcome is the point
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i, f)) for i, f in enumerate((first, second))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    return results[0], results[1]


def test_cancel_racing_complete_has_exactly_one_winner(tmp_path):
    store = SqliteCreationStore(tmp_path / "race.sqlite3")
    outcomes = {"completed": 0, "cancelled": 0}
    for _ in range(40):
        c = claimed(now=lc.utcnow())
        store.add(c)
        done, cancel = _race(
            store,
            lambda cid=c.id: store.update(
                cid, lambda cur: lc.complete(cur, owner="job-a", now=lc.utcnow(), media=MEDIA)
            ),
            lambda cid=c.id: store.update(cid, lambda cur: lc.cancel(cur, now=lc.utcnow())),
        )
        final = store.get(c.id)
        if isinstance(cancel, AlreadyFinished):
            # Completion committed first: the cancel was refused, the media stand.
            assert final.status is Status.COMPLETED and final.media == MEDIA
            assert final.cancel_requested_at is None
            outcomes["completed"] += 1
        else:
            # The cancel request committed first: completion was refused; the job ends it.
            assert isinstance(done, CancelRequested), done
            assert final.status is Status.PROCESSING and final.cancel_requested_at is not None
            ended = store.update(
                c.id, lambda cur: lc.finish_cancel(cur, owner="job-a", now=lc.utcnow())
            )
            assert ended.status is Status.CANCELLED and ended.media == ()
            outcomes["cancelled"] += 1
    assert sum(outcomes.values()) == 40
    store.close()


def test_cancel_racing_claim_has_exactly_one_outcome(tmp_path):
    store = SqliteCreationStore(tmp_path / "race.sqlite3")
    for _ in range(40):
        c = pending()
        c = dataclasses.replace(c, created_at=lc.utcnow(), updated_at=lc.utcnow())
        store.add(c)
        claim, cancel = _race(
            store,
            lambda cid=c.id: store.update(
                cid,
                lambda cur: lc.claim(
                    cur, owner="job-a", now=lc.utcnow(), lease=LEASE, max_attempts=3
                ),
            ),
            lambda cid=c.id: store.update(cid, lambda cur: lc.cancel(cur, now=lc.utcnow())),
        )
        final = store.get(c.id)
        if isinstance(claim, AlreadyFinished):
            # Cancel first: cancelled at once, the delivery backs off before any provider call.
            assert final.status is Status.CANCELLED and final.attempts == 0
            assert final.provider_started is False
        else:
            # Claim first: the job runs and will see the request at its next renewal.
            assert claim.status is Status.PROCESSING
            assert final.status is Status.PROCESSING and final.cancel_requested_at is not None
            with pytest.raises(CancelRequested):
                store.update(
                    c.id, lambda cur: lc.renew(cur, owner="job-a", now=lc.utcnow(), lease=LEASE)
                )
    store.close()
