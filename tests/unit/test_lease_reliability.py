"""Leases at fleet scale (issue 12): instant takeover by a later attempt of the same execution,
a heartbeat that outlives a blocking provider call, a loser that can never overwrite the
winner's media, and paid-for operations that are resumed instead of thrown away.

Each test whose docstring starts with "Before:" was written before its fix and failed against
the previous code in the way it names; tests marked "Guard" pin the other side of a rule (they
passed before too, or could only fail by signature). After the merge with issue 15 each fix was
also removed on its own on a scratch branch (``scratch/reliability-break-<name>``, never merged):
the docstrings say which tests that made fail.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from datetime import datetime, timedelta, timezone

import pytest

from common.adapters.local_media import LocalMediaStore
from common.adapters.memory_store import InMemoryCreationStore
from common.domain import creation as lc
from common.domain.creation import Kind, Status
from common.domain.errors import AlreadyClaimed, GenerationError, LeaseLost
from common.job_runner import EXIT_DONE, EXIT_RETRY, JobDeps, run_job
from common.ports import GeneratedMedia, Generator

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
LEASE = timedelta(minutes=2)
PNG = [GeneratedMedia(mime_type="image/png", data=b"\x89PNG winner")]


def _new(store, kind=Kind.IMAGE, **changes):
    c = lc.new(user_id="u", kind=kind, prompt="p", params={}, path="cloud-tasks", now=T0)
    store.add(c)
    for change in changes.get("steps", []):
        store.update(c.id, change)
    return c.id


def _claim(owner, execution=None, attempt=None, now=T0, max_attempts=3):
    return lambda c: lc.claim(
        c,
        owner=owner,
        now=now,
        lease=LEASE,
        max_attempts=max_attempts,
        execution=execution,
        attempt=attempt,
    )


# --- takeover within one Cloud Run execution ---------------------------------------------------


def test_a_later_attempt_of_the_same_execution_takes_a_live_lease_over_at_once():
    """Before: the retry of a SIGKILLed attempt met its own execution's live lease, exited 0 as
    a duplicate, and the creation waited for the lease to expire and the sweeper.

    Shown to fail on 2026-12-01 with the same-execution takeover rule removed from ``claim``
    (``scratch/reliability-break-no-same-execution-takeover``).
    """
    store = InMemoryCreationStore()
    cid = _new(store, steps=[_claim("exec-1/a0", "exec-1", 0)])
    taken = store.update(cid, _claim("exec-1/a1", "exec-1", 1, now=T0 + timedelta(seconds=5)))
    assert taken.lease_owner == "exec-1/a1" and taken.lease_attempt == 1
    assert taken.attempts == 2 and taken.status is Status.PROCESSING


def test_another_execution_or_an_earlier_attempt_still_respects_a_live_lease():
    """Guards the takeover rule from the other side: only a LATER attempt of the SAME
    execution may take over; a second execution (a duplicate delivery) backs off."""
    store = InMemoryCreationStore()
    cid = _new(store, steps=[_claim("exec-1/a1", "exec-1", 1)])
    for owner, execution, attempt in [
        ("exec-2/a0", "exec-2", 0),  # another execution
        ("exec-2/a5", "exec-2", 5),
        ("exec-1/a0", "exec-1", 0),  # an earlier attempt of the holder (cannot run now)
        ("exec-1/a1b", "exec-1", 1),  # the same attempt number
        ("job/x", None, None),  # no execution identity (legacy worker)
    ]:
        with pytest.raises(AlreadyClaimed):
            store.update(cid, _claim(owner, execution, attempt))


def test_run_job_passes_the_execution_so_the_retry_completes_instead_of_exiting_duplicate(
    tmp_path,
):
    """Before: run_job had no execution/attempt, so the retry's outcome was "duplicate".

    Attempt 0 was SIGKILLed 5 s ago: its lease is still live when attempt 1 starts.

    Shown to fail on 2026-12-01 with the same-execution takeover rule removed from ``claim``
    (``scratch/reliability-break-no-same-execution-takeover``).
    """
    store = InMemoryCreationStore()
    cid = _new(store, steps=[_claim("exec-1/a0", "exec-1", 0)])  # attempt 0 was SIGKILLed
    deps = JobDeps(
        store=store,
        generator=_Returns(PNG),
        media=LocalMediaStore(tmp_path),
        clock=lambda: T0 + timedelta(seconds=5),
    )
    out = run_job(cid, Kind.IMAGE, deps, owner="exec-1/a1", execution="exec-1", attempt=1)
    assert out.status == "completed" and store.get(cid).status is Status.COMPLETED


# --- a heartbeat independent of provider calls ------------------------------------------------


class _Returns(Generator):
    def __init__(self, media, block: float = 0.0, during=None):
        self.media, self.block, self.during = media, block, during
        self.calls = 0

    def generate(self, kind, prompt, params, ctx):
        self.calls += 1
        if self.during is not None:
            self.during(ctx)
        time.sleep(self.block)  # one provider call that blocks (no ctx call meanwhile)
        return self.media


def test_the_lease_stays_live_while_one_provider_call_blocks_longer_than_the_lease(tmp_path):
    """Before: renewal happened only between provider calls, so a call longer than the lease
    let it lapse and a second execution's claim succeeded mid-call (it would generate again).

    Shown to fail on 2026-12-01 with the heartbeat thread never started
    (``scratch/reliability-break-no-heartbeat-thread``).
    """
    store = InMemoryCreationStore()
    cid = _new(store)
    lease = timedelta(seconds=0.4)
    deps = JobDeps(
        store=store,
        generator=_Returns(PNG, block=1.5),
        media=LocalMediaStore(tmp_path),
        lease=lease,
        clock=lc.utcnow,
        heartbeat_every=0.1,
    )
    intruder: list[str] = []

    def second_execution():
        time.sleep(1.0)  # well past the 0.4 s lease, while the call still blocks
        try:
            store.update(
                cid,
                lambda c: lc.claim(c, owner="other", now=lc.utcnow(), lease=lease, max_attempts=3),
            )
            intruder.append("claimed")
        except AlreadyClaimed:
            intruder.append("backed off")

    t = threading.Thread(target=second_execution)
    t.start()
    out = run_job(cid, Kind.IMAGE, deps, owner="first")
    t.join()
    assert intruder == ["backed off"]
    assert out.status == "completed"


def test_a_job_whose_lease_was_taken_stores_nothing_and_stops(tmp_path):
    """Before: a job whose lease was taken while its provider call blocked still wrote its
    media (under the same key the new holder writes), only failing at ``complete``."""
    store = InMemoryCreationStore()
    cid = _new(store)

    def steal(ctx):
        # The lease is taken over while the call blocks (as after a lapse elsewhere).
        store.update(
            cid,
            lambda c: lc.claim(
                lc.release_for_retry(
                    c,
                    owner="first",
                    now=T0,
                    error=lc.CreationError("x", "y"),
                    max_attempts=3,
                ),
                owner="thief",
                now=T0,
                lease=timedelta(hours=1),
                max_attempts=3,
            ),
        )

    deps = JobDeps(
        store=store,
        generator=_Returns(PNG, block=0.5, during=steal),
        media=LocalMediaStore(tmp_path),
        clock=lc.utcnow,
        heartbeat_every=0.05,
    )
    out = run_job(cid, Kind.IMAGE, deps, owner="first")
    assert (out.exit_code, out.status) == (EXIT_DONE, "lost")
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []
    assert store.get(cid).lease_owner == "thief"


def test_the_heartbeat_thread_sees_a_cancel_during_a_blocked_call_and_the_job_ends_cancelled(
    tmp_path,
):
    """Issue 15 meets issue 12: a cancel is reported by the lease renewal, and renewals now run
    on the heartbeat thread. A cancel requested while the provider call blocks (no ctx call at
    all) is seen by that thread; the job stores nothing and ends the record ``cancelled``, with
    ``provider_started`` true (the call had returned).

    Shown to fail on 2026-12-01 with the heartbeat thread never started
    (``scratch/reliability-break-no-heartbeat-thread``).
    """
    store = InMemoryCreationStore()
    cid = _new(store)
    seen: list[str] = []

    def cancel_then_wait_for_the_beat(ctx):
        store.update(cid, lambda c: lc.cancel(c, now=lc.utcnow()))
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and ctx._beat.stop_reason is None:
            time.sleep(0.01)  # the blocked provider call: no ctx call, only the thread runs
        seen.append(type(ctx._beat.stop_reason).__name__)

    deps = JobDeps(
        store=store,
        generator=_Returns(PNG, during=cancel_then_wait_for_the_beat),
        media=LocalMediaStore(tmp_path),
        clock=lc.utcnow,
        heartbeat_every=0.05,
    )
    out = run_job(cid, Kind.IMAGE, deps, owner="first")
    assert seen == ["CancelRequested"]
    assert (out.exit_code, out.status) == (EXIT_DONE, "cancelled")
    done = store.get(cid)
    assert done.status is Status.CANCELLED and done.provider_started is True
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


def test_a_loser_never_overwrites_the_winners_media(tmp_path):
    """Before: media keys were ``<id>/<n>.<ext>``, the same for every execution, so a job that
    lost its lease and then wrote its output replaced the completed winner's file.

    The loser passes every lease check (its lease lapsed only after them) and its write lands
    after the winner completed: the worst interleaving, which no check before the write can
    exclude. Only a key unique per claim keeps the winner's file.

    Shown to fail on 2026-12-01 with one media key for every claim
    (``scratch/reliability-break-media-keys-shared``).
    """
    store = InMemoryCreationStore()
    cid = _new(store)
    clock = {"now": T0}

    class WinnerFinishesFirst(LocalMediaStore):
        """The loser's write is delayed (a slow upload) until a winner has run to the end."""

        def put(self, key, data, mime_type):
            if data == b"\x89PNG loser":
                clock["now"] = T0 + LEASE + timedelta(seconds=1)  # the loser's lease lapsed
                winner = JobDeps(
                    store=store,
                    generator=_Returns(PNG),
                    media=LocalMediaStore(tmp_path),
                    clock=lambda: clock["now"],
                )
                assert run_job(cid, Kind.IMAGE, winner, owner="winner").status == "completed"
            return super().put(key, data, mime_type)

    loser = JobDeps(
        store=store,
        generator=_Returns([GeneratedMedia(mime_type="image/png", data=b"\x89PNG loser")]),
        media=WinnerFinishesFirst(tmp_path),
        clock=lambda: clock["now"],
        heartbeat_every=3600,  # the lapse happened while no renewal ran
    )
    assert run_job(cid, Kind.IMAGE, loser, owner="loser").status == "lost"
    done = store.get(cid)
    assert done.status is Status.COMPLETED
    media = LocalMediaStore(tmp_path)
    assert [media.read(m.key) for m in done.media] == [b"\x89PNG winner"]


# --- recorded operations are resumed, not thrown away -----------------------------------------


def _with_operation(attempts: int):
    def change(c):
        return dataclasses.replace(
            c, attempts=attempts, operation="operations/paid", status=Status.PENDING
        )

    return change


def test_a_claim_at_the_attempt_limit_resumes_a_recorded_operation():
    """Before: ``claim`` at max_attempts failed the creation without looking at ``operation``,
    discarding a video already paid for.

    Shown to fail on 2026-12-01 with ``claim`` not resuming a recorded operation or unknown start
    (``scratch/reliability-break-claim-ignores-operation``).
    """
    store = InMemoryCreationStore()
    cid = _new(store, kind=Kind.VIDEO, steps=[_with_operation(3)])
    c = store.update(cid, _claim("resumer", max_attempts=3))
    assert c.status is Status.PROCESSING and c.operation == "operations/paid"


def test_resuming_a_recorded_operation_uses_no_attempt():
    """Before: every claim counted an attempt, including one that only polls paid work.

    Shown to fail on 2026-12-01 with ``claim`` not resuming a recorded operation or unknown start
    (``scratch/reliability-break-claim-ignores-operation``).
    """
    store = InMemoryCreationStore()
    cid = _new(store, kind=Kind.VIDEO, steps=[_with_operation(1)])
    c = store.update(cid, _claim("resumer"))
    assert c.attempts == 1 and c.resumes == 1 and c.claims == 1


def test_a_retryable_failure_at_the_limit_hands_a_recorded_operation_back():
    """Before: release_for_retry at max_attempts failed the record even with a live operation
    (e.g. after a provider_timeout while Veo was still running).

    Shown to fail on 2026-12-01 with ``claim`` not resuming a recorded operation or unknown start
    (``scratch/reliability-break-claim-ignores-operation``).
    """
    store = InMemoryCreationStore()
    cid = _new(store, kind=Kind.VIDEO, steps=[_with_operation(3), _claim("a")])
    c = store.update(
        cid,
        lambda c: lc.release_for_retry(
            c, owner="a", now=T0, error=lc.CreationError("provider_timeout", "slow"), max_attempts=3
        ),
    )
    assert c.status is Status.PENDING and c.operation == "operations/paid"


def test_resumes_are_bounded_so_a_crash_loop_still_ends():
    """Guard for the resume rule: resumes use no attempt, but MAX_RESUMES still ends a loop.

    Shown to fail on 2026-12-01 with ``claim`` not resuming a recorded operation or unknown start
    (``scratch/reliability-break-claim-ignores-operation``).
    """
    store = InMemoryCreationStore()
    cid = _new(store, kind=Kind.VIDEO, steps=[_with_operation(1)])
    for n in range(lc.MAX_RESUMES):
        store.update(cid, _claim(f"r{n}", now=T0 + n * (LEASE + timedelta(seconds=1))))
    c = store.update(cid, _claim("last", now=T0 + timedelta(days=1)))
    assert c.status is Status.FAILED and c.error.code == "max_attempts_exceeded"


def test_a_job_without_the_lease_cannot_mark_a_provider_start():
    """Before: there was no marker at all (``mark_start`` did not exist). The unknown-outcome marker needs the lease: a job that lost it fails before it could
    call the provider (so a loser can never start a second generation)."""
    store = InMemoryCreationStore()
    cid = _new(store, kind=Kind.VIDEO, steps=[_claim("holder")])
    with pytest.raises(LeaseLost):
        store.update(cid, lambda c: lc.mark_start(c, owner="loser", now=T0, marker="m"))
    c = store.update(cid, lambda c: lc.mark_start(c, owner="holder", now=T0, marker="m"))
    assert c.start_marker == "m"
    c = store.update(
        cid, lambda c: lc.record_operation(c, owner="holder", now=T0, operation="operations/1")
    )
    assert c.start_marker is None and c.operation == "operations/1"


def test_a_failed_operation_write_does_not_throw_the_generation_away(tmp_path):
    """Before: a store error while recording Veo's operation name ended the attempt (retryable),
    and the retry started a second operation. Now the job keeps polling the name it holds.

    Shown to fail on 2026-12-01 with a failed operation write ending the attempt
    (``scratch/reliability-break-operation-write-fails-attempt``).
    """

    class FlakyOnce(InMemoryCreationStore):
        failed = False

        def update(self, creation_id, change):
            probe = change(self.get(creation_id))
            if probe.operation and not FlakyOnce.failed:
                FlakyOnce.failed = True
                raise ConnectionError("store blip")
            return super().update(creation_id, change)

    class StartsThenPolls(Generator):
        starts = 0

        def generate(self, kind, prompt, params, ctx):
            StartsThenPolls.starts += 1
            ctx.mark_start()
            ctx.record_operation("operations/1")  # the write fails once
            ctx.report_progress(50)  # retried here
            return [GeneratedMedia(mime_type="video/mp4", data=b"mp4")]

    store = FlakyOnce()
    cid = _new(store, kind=Kind.VIDEO)
    deps = JobDeps(store=store, generator=StartsThenPolls(), media=LocalMediaStore(tmp_path))
    out = run_job(cid, Kind.VIDEO, deps, owner="a")
    assert out.status == "completed" and StartsThenPolls.starts == 1
    assert store.get(cid).operation == "operations/1"


def test_retryable_failure_keeps_exit_code_and_attempt_accounting(tmp_path):
    """Guard: an ordinary retryable failure still uses one attempt and exits 1."""
    store = InMemoryCreationStore()
    cid = _new(store)
    gen = _Raises(GenerationError("quota_exhausted", "429", retryable=True))
    deps = JobDeps(store=store, generator=gen, media=LocalMediaStore(tmp_path), max_attempts=2)
    assert run_job(cid, Kind.IMAGE, deps, owner="a").exit_code == EXIT_RETRY
    assert store.get(cid).attempts == 1


class _Raises(Generator):
    def __init__(self, exc):
        self.exc = exc

    def generate(self, kind, prompt, params, ctx):
        raise self.exc


def test_a_claim_that_finds_an_unknown_outcome_start_uses_no_attempt():
    """Guard (the marker is new): a retry that only looks for the output of a start whose
    answer was lost resumes paid-for work, like polling a recorded operation.

    Shown to fail on 2026-12-01 with ``claim`` not resuming a recorded operation or unknown start
    (``scratch/reliability-break-claim-ignores-operation``).
    """
    store = InMemoryCreationStore()
    cid = _new(store, kind=Kind.VIDEO, steps=[_claim("a0")])
    store.update(cid, lambda c: lc.mark_start(c, owner="a0", now=T0, marker="m"))
    later = T0 + LEASE + timedelta(seconds=1)  # a0 died mid-call; its lease ran out
    c = store.update(cid, _claim("a1", now=later, max_attempts=1))
    assert (c.status, c.attempts, c.resumes, c.start_marker) == (Status.PROCESSING, 1, 1, "m")


class _Interrupt(BaseException):
    """Stands for the job's ``Terminated``, raised by its SIGTERM handler wherever it lands."""


class _RaiseAfterCommit:
    def __init__(self, real):
        self._real = real

    def __getattr__(self, name):
        return getattr(self._real, name)

    def execute(self, sql, *args):
        result = self._real.execute(sql, *args)
        if sql == "COMMIT":
            raise _Interrupt()
        return result


def test_a_signal_landing_right_after_a_commit_is_not_masked(tmp_path):
    """Before: the SQLite store and guard answered any exception with ROLLBACK, which after a
    finished COMMIT fails with "cannot rollback - no transaction is active"; that
    OperationalError replaced the job's Terminated and a best-effort ``except Exception``
    (the Veo slot renewal) swallowed it: the job ignored SIGTERM (seen in test_job_sigterm)."""
    from common.adapters.concurrency_guard import SqliteConcurrencyGuard
    from common.adapters.sqlite_store import SqliteCreationStore

    store = SqliteCreationStore(tmp_path / "s.sqlite3")
    cid = _new(store)
    store._local.conn = _RaiseAfterCommit(store._connect())
    with pytest.raises(_Interrupt):
        store.update(cid, lambda c: dataclasses.replace(c, progress=5))
    guard = SqliteConcurrencyGuard(tmp_path / "s.sqlite3")
    guard._local.conn = _RaiseAfterCommit(guard._connect())
    with pytest.raises(_Interrupt):
        guard.renew("veo", "me", ttl=LEASE)


class _RaiseAfterBegin(_RaiseAfterCommit):
    def execute(self, sql, *args):
        result = self._real.execute(sql, *args)
        if sql == "BEGIN IMMEDIATE":
            raise _Interrupt()
        return result


def test_a_signal_landing_right_after_begin_releases_the_write_lock(tmp_path):
    """Written after the fix, for a failure seen first in test_job_sigterm: BEGIN IMMEDIATE ran
    outside the try, so an exception landing right after it left the transaction open; the
    job's hand-back (another connection) then waited on SQLite's lock for its whole busy
    timeout, and the job ignored SIGTERM. The heartbeat thread's renewals made it likelier."""
    from common.adapters.concurrency_guard import SqliteConcurrencyGuard
    from common.adapters.sqlite_store import SqliteCreationStore

    store = SqliteCreationStore(tmp_path / "s.sqlite3")
    cid = _new(store)
    guard = SqliteConcurrencyGuard(tmp_path / "s.sqlite3")
    real_guard_conn = guard._connect()
    guard._local.conn = _RaiseAfterBegin(real_guard_conn)
    with pytest.raises(_Interrupt):
        guard.renew("veo", "me", ttl=LEASE)
    assert not real_guard_conn.in_transaction
    real_store_conn = store._connect()
    store._local.conn = _RaiseAfterBegin(real_store_conn)
    with pytest.raises(_Interrupt):
        store.update(cid, lambda c: dataclasses.replace(c, progress=5))
    assert not real_store_conn.in_transaction
