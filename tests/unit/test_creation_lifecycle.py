"""The creation status machine: every allowed transition, and the ones that must be refused."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from common.domain import creation as lc
from common.domain.creation import CreationError, Kind, MediaRef, Status
from common.domain.errors import AlreadyClaimed, AlreadyFinished, InvalidTransition, LeaseLost

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
LEASE = timedelta(seconds=60)


def pending(**kw):
    return lc.new(
        user_id="u",
        kind=Kind.IMAGE,
        prompt="a cat",
        params={"count": 1},
        path="local",
        now=T0,
        **kw,
    )


def claimed(owner="a", now=T0):
    return lc.claim(pending(), owner=owner, now=now, lease=LEASE, max_attempts=3)


def test_new_creation_is_pending_with_no_attempts():
    c = pending()
    assert c.status is Status.PENDING and c.attempts == 0 and c.progress == 0
    assert len(c.id) == 32 and c.created_at == c.updated_at == T0


def test_claim_takes_a_lease_and_counts_the_attempt():
    c = claimed()
    assert c.status is Status.PROCESSING
    assert c.attempts == 1 and c.lease_owner == "a"
    assert c.lease_expires_at == T0 + LEASE and c.claimed_at == T0


def test_second_claim_while_lease_is_live_is_refused():
    c = claimed()
    with pytest.raises(AlreadyClaimed):
        lc.claim(c, owner="b", now=T0 + timedelta(seconds=30), lease=LEASE, max_attempts=3)


def test_same_owner_reclaiming_is_idempotent():
    c = claimed()
    assert lc.claim(c, owner="a", now=T0 + timedelta(seconds=1), lease=LEASE, max_attempts=3) is c


def test_expired_lease_is_taken_over_as_a_new_attempt():
    c = claimed()
    later = T0 + LEASE + timedelta(seconds=1)
    taken = lc.claim(c, owner="b", now=later, lease=LEASE, max_attempts=3)
    assert taken.lease_owner == "b" and taken.attempts == 2
    assert taken.claimed_at == T0  # queue-wait is measured from the first claim
    with pytest.raises(LeaseLost):
        lc.report_progress(taken, owner="a", now=later, progress=50)


def test_takeover_past_max_attempts_fails_the_creation():
    c = pending()
    now = T0
    for i in range(3):
        c = lc.claim(c, owner=f"o{i}", now=now, lease=LEASE, max_attempts=3)
        now = now + LEASE + timedelta(seconds=1)
    final = lc.claim(c, owner="o4", now=now, lease=LEASE, max_attempts=3)
    assert final.status is Status.FAILED
    assert final.error is not None and final.error.code == "max_attempts_exceeded"
    assert final.lease_owner is None and final.finished_at == now


def test_terminal_creations_cannot_be_claimed_again():
    done = lc.complete(claimed(), owner="a", now=T0, media=(MediaRef("k", "image/png"),))
    with pytest.raises(AlreadyFinished):
        lc.claim(done, owner="b", now=T0, lease=LEASE, max_attempts=3)


def test_complete_requires_media_and_the_lease():
    c = claimed()
    with pytest.raises(InvalidTransition):
        lc.complete(c, owner="a", now=T0, media=())
    with pytest.raises(LeaseLost):
        lc.complete(c, owner="intruder", now=T0, media=(MediaRef("k", "image/png"),))
    done = lc.complete(c, owner="a", now=T0, media=(MediaRef("k", "image/png"),))
    assert done.status is Status.COMPLETED and done.progress == 100 and done.error is None


def test_progress_is_monotonic_capped_below_100_and_renews_the_lease():
    c = claimed()
    c = lc.report_progress(c, owner="a", now=T0 + timedelta(seconds=10), progress=40, lease=LEASE)
    assert c.progress == 40 and c.lease_expires_at == T0 + timedelta(seconds=10) + LEASE
    c = lc.report_progress(c, owner="a", now=T0, progress=20)
    assert c.progress == 40
    c = lc.report_progress(c, owner="a", now=T0, progress=250)
    assert c.progress == 99


def test_retryable_failure_hands_the_creation_back_until_attempts_run_out():
    err = CreationError("quota_exhausted", "429")
    c = claimed()
    released = lc.release_for_retry(c, owner="a", now=T0, error=err, max_attempts=3)
    assert released.status is Status.PENDING and released.lease_owner is None
    assert released.error == lc.user_safe(err)
    assert released.error.detail == "429" and released.error.message != "429"
    last = lc.claim(released, owner="b", now=T0, lease=LEASE, max_attempts=2)
    final = lc.release_for_retry(last, owner="b", now=T0, error=err, max_attempts=2)
    assert final.status is Status.FAILED and final.error is not None
    assert final.error.code == "quota_exhausted" and "after 2 attempts" in final.error.detail


def test_fail_by_owner_and_by_sweeper():
    err = CreationError("content_filtered", "blocked")
    assert lc.fail(claimed(), owner="a", now=T0, error=err).status is Status.FAILED
    with pytest.raises(AlreadyClaimed):  # the sweeper never fails a creation someone holds
        lc.fail(claimed(), owner=None, now=T0, error=err)
    assert lc.fail(pending(), owner=None, now=T0, error=err).status is Status.FAILED


def test_operation_is_recorded_for_resumption():
    c = lc.record_operation(claimed(), owner="a", now=T0, operation="ops/1")
    taken = lc.claim(c, owner="b", now=T0 + LEASE * 2, lease=LEASE, max_attempts=3)
    assert taken.operation == "ops/1"


def test_serialisation_round_trips_every_field():
    c = lc.record_operation(claimed(), owner="a", now=T0, operation="ops/1")
    c = lc.mark_dispatch_failed(c, now=T0, reason="redis down")
    assert lc.from_dict(lc.to_dict(c)) == c
