"""The sweeper: nothing stays stuck, nothing is lost.

Every path can drop work: a dispatch that failed after the record was written (Cloud Tasks or
Redis down: the API answered 503 but the record exists), a local queue lost with its process,
a job killed mid-run whose lease ran out. The sweeper finds those records and either hands them
to their dispatcher again or, past the limits, fails them with a clear code. It runs every
minute in the local runtime and, in production, as a scheduled command (`python -m api.sweep`).

Before re-sending, the sweeper asks the creation's queue whether its last task still exists
(``Dispatcher.task_exists``): a creation waiting in a backlog is left alone however long the
backlog (re-sending would only start extra executions later, and failing it would fail work
that was merely waiting). It re-sends when the task is known gone (or the lease expired) and
fails only for a real reason: ``max_age``, attempts, or, for a queue that cannot answer, the
old dispatch limit.

Re-dispatching is always safe because jobs are idempotent (lease claim, resumable operations).
We chose "record + sweep" over a transactional outbox: the creation record already is the
outbox (pending + ``dispatched_at``/``dispatch_error``), so a second table would duplicate it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import structlog

from common import metrics
from common.domain import creation as lifecycle
from common.domain.creation import Creation, CreationError, Kind, Status
from common.domain.errors import AlreadyClaimed, AlreadyFinished, DomainError
from common.domain.payload import TaskPayload
from common.ports import CreationStore, Dispatcher, MediaStore

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class SweepPolicy:
    # A pending record whose dispatch failed (or never happened) is retried after this grace,
    # so the sweeper never races the API's own first dispatch.
    dispatch_grace: timedelta = timedelta(seconds=10)
    # A dispatched record nobody claimed within this time was lost by its queue: send again.
    pending_timeout: timedelta = timedelta(minutes=5)
    # After this many dispatches without a claim, give up with a clear reason. Applies only
    # when the queue cannot say whether the last task still exists (``task_exists`` is None).
    max_dispatches: int = 5
    # Creations older than this that are still not finished are failed, whatever their state
    # (a bound on how long a user can be kept waiting).
    max_age: timedelta = timedelta(hours=6)


@dataclass
class SweepReport:
    redispatched: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    # Admission slots freed because their creation had finished or vanished (reconcile_quotas).
    slots_released: list[str] = field(default_factory=list)
    # Due by time, but their task is still in the queue: left alone (a backlog, not a loss).
    queued: list[str] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, int]:
        return {
            "redispatched": len(self.redispatched),
            "failed": len(self.failed),
            "errors": len(self.errors),
            "cancelled": len(self.cancelled),
            "deleted": len(self.deleted),
            "slots_released": len(self.slots_released),
            "queued": len(self.queued),
        }


def _needs_dispatch(c: Creation, now: datetime, policy: SweepPolicy) -> bool:
    if c.status is Status.PENDING:
        if c.dispatched_at is None or c.dispatch_error is not None:
            return c.updated_at <= now - policy.dispatch_grace
        # Dispatched (or handed back for retry) but nobody picked it up in time.
        return c.updated_at <= now - policy.pending_timeout
    if c.status is Status.PROCESSING:
        # The job holding it died: its lease ran out without renewal or completion. Once we
        # re-dispatched it, give that delivery the same time as any other to be claimed,
        # instead of re-sending on every pass until some job takes the lease over.
        if c.lease_expires_at is None or c.lease_expires_at > now:
            return False
        if c.dispatched_at is None or c.dispatched_at < c.lease_expires_at:
            return True  # not re-sent since the lease ran out
        return c.dispatched_at <= now - policy.pending_timeout
    return False


def sweep(
    store: CreationStore,
    dispatcher_for: Callable[[str], Dispatcher],
    *,
    now: datetime,
    policy: SweepPolicy = SweepPolicy(),
    limit: int = 500,
    route: Callable[[Kind, str], str] | None = None,
    media: MediaStore | None = None,
) -> SweepReport:
    """``media`` lets the pass finish deletes whose media removal failed (``deleting``
    tombstones); without it they wait for a pass that has one.

    ``route`` (the API's rollout) picks the path a re-dispatch takes: normally the path the
    creation already has (routing is sticky per user), but once a path is drained its stuck
    creations move to the path their user is routed to now instead of going back to it."""
    report = SweepReport()
    candidates = store.scan(
        statuses=[Status.PENDING, Status.PROCESSING],
        updated_before=now - min(policy.dispatch_grace, policy.pending_timeout),
        limit=limit,
    )
    # Processing records renew updated_at only when they report; an expired lease can hide
    # behind a recent update, so also look at every processing record's lease.
    seen = {c.id for c in candidates}
    candidates += [
        c for c in store.scan(statuses=[Status.PROCESSING], limit=limit) if c.id not in seen
    ]
    for c in candidates:
        try:
            _sweep_one(store, dispatcher_for, c, now, policy, report, route, media)
        except Exception as exc:  # one bad record or a flaky queue must not stop the sweep
            report.errors.append(c.id)
            log.warning("sweep_error", creation_id=c.id, error=f"{type(exc).__name__}: {exc}")
    if media is not None:
        for c in store.scan(statuses=[Status.DELETING], limit=limit):
            try:
                finish_delete(store, media, c.id)
                report.deleted.append(c.id)
            except Exception as exc:  # stays a tombstone: next pass tries again
                report.errors.append(c.id)
                log.warning("sweep_delete_failed", creation_id=c.id, error=repr(exc)[:300])
    try:
        report.slots_released = reconcile_quotas(store, limit=limit)
    except Exception as exc:  # the quota bookkeeping must not stop the recovery above
        log.warning("sweep_quota_error", error=f"{type(exc).__name__}: {exc}")
    if any(report.as_dict().values()):
        log.info("sweep_done", **report.as_dict())
    return report


def reconcile_quotas(store: CreationStore, *, limit: int = 1000) -> list[str]:
    """Free every admission slot whose creation is finished or gone, and return their ids.

    Slots are released in the same transaction that makes a creation terminal, so this finds
    only what bypassed that: a record deleted or rewritten outside ``update``, a bug, a restore
    from backup. A user stuck at the cap with nothing running would otherwise stay stuck."""
    try:
        holders = store.quota_holders(limit)
    except NotImplementedError:
        return []
    released: list[str] = []
    for quota in holders:
        for creation_id in list(quota.active):
            c = store.get(creation_id)
            if c is None or c.status.terminal or c.user_id != quota.user_id:
                store.release_quota(quota.user_id, creation_id)
                released.append(creation_id)
                log.warning(
                    "sweep_quota_slot_released", creation_id=creation_id, found=c is not None
                )
    return released


def finish_delete(store: CreationStore, media: MediaStore, creation_id: str) -> None:
    """Step two of a delete: media first, then the record, so a failure in between leaves the
    tombstone (never a record-less object nobody would find again)."""
    media.delete_for(creation_id)
    store.delete(creation_id)


def _finish_stale_cancel(
    store: CreationStore,
    dispatcher_for: Callable[[str], Dispatcher],
    c: Creation,
    now: datetime,
    report: SweepReport,
    media: MediaStore | None,
) -> None:
    """A cancel was requested but the job holding the lease never ended it (it died, or hangs
    in a provider call and so stopped renewing): end it ``cancelled`` and, as a backstop, ask
    its path to stop whatever may still run. Never re-dispatched."""
    try:
        done = store.update(c.id, lambda cur: lifecycle.cancel(cur, now=now))
    except (AlreadyClaimed, AlreadyFinished):
        return
    if done.status is not Status.CANCELLED:
        return  # its lease is live again (renewed meanwhile): the job will stop by itself
    report.cancelled.append(c.id)
    try:
        dispatcher_for(c.path).stop_execution(done)
    except Exception as exc:
        log.warning("sweep_cancel_backstop_failed", creation_id=c.id, error=repr(exc)[:300])
    if media is not None:
        try:
            media.delete_for(c.id)  # anything the dead job or its provider wrote
        except Exception as exc:
            log.warning("sweep_cancel_cleanup_failed", creation_id=c.id, error=repr(exc)[:300])


def _fail(store: CreationStore, c: Creation, now: datetime, code: str, message: str) -> bool:
    try:
        store.update(
            c.id,
            lambda cur: lifecycle.fail(
                cur, owner=None, now=now, error=CreationError(code, message)
            ),
        )
    except (AlreadyClaimed, AlreadyFinished):
        return False  # it moved on while we looked: leave it to its new owner
    # A creation the sweeper fails never reaches a job: without this it would be missing from
    # the failure counter.
    metrics.record_failed(c.kind.value, c.path, code)
    return True


def _last_task_exists(dispatcher_for: Callable[[str], Dispatcher], c: Creation) -> bool | None:
    """Whether the creation's last accepted task is still queued, asked of the path it was sent
    on. A queue error propagates (the record is left alone this pass and reported)."""
    if c.dispatches <= 0:
        return False  # no dispatcher ever accepted it
    last = TaskPayload(
        creation_id=c.id, kind=c.kind, traceparent=c.traceparent, dispatch=c.dispatches - 1
    )
    return dispatcher_for(c.path).task_exists(last)


def _sweep_one(
    store: CreationStore,
    dispatcher_for: Callable[[str], Dispatcher],
    c: Creation,
    now: datetime,
    policy: SweepPolicy,
    report: SweepReport,
    route: Callable[[Kind, str], str] | None = None,
    media: MediaStore | None = None,
) -> None:
    if c.cancel_requested_at is not None:
        if not c.lease_live(now):
            _finish_stale_cancel(store, dispatcher_for, c, now, report, media)
        return  # cancelled work is never re-dispatched
    if c.created_at <= now - policy.max_age:
        if _fail(store, c, now, "timed_out", f"not finished after {policy.max_age}"):
            report.failed.append(c.id)
        return
    if not _needs_dispatch(c, now, policy):
        return
    exists = _last_task_exists(dispatcher_for, c)
    if exists:
        report.queued.append(c.id)
        return
    if exists is None and c.dispatches >= policy.max_dispatches and c.status is Status.PENDING:
        reason = c.dispatch_error or "no job picked it up"
        if _fail(
            store, c, now, "dispatch_failed", f"gave up after {c.dispatches} dispatches: {reason}"
        ):
            report.failed.append(c.id)
        return

    # Re-check under the store's transaction that nothing changed, then dispatch.
    def still_stuck(cur: Creation) -> Creation:
        if not _needs_dispatch(cur, now, policy):
            raise AlreadyClaimed(cur.id)
        return cur

    try:
        store.update(c.id, still_stuck)
    except DomainError:
        return
    payload = TaskPayload(
        creation_id=c.id, kind=c.kind, traceparent=c.traceparent, dispatch=c.dispatches
    )
    path = route(c.kind, c.user_id) if route is not None else c.path
    try:
        dispatcher_for(path).dispatch(payload)
    except Exception as exc:
        reason = f"{type(exc).__name__}: {exc}"
        store.update(c.id, lambda cur: lifecycle.mark_dispatch_failed(cur, now=now, reason=reason))
        report.errors.append(c.id)
        log.warning("sweep_redispatch_failed", creation_id=c.id, error=reason)
        return

    def dispatched(cur: Creation) -> Creation:
        if path != cur.path:
            cur = lifecycle.reroute(cur, now=now, path=path)
        return lifecycle.mark_dispatched(cur, now=now)

    store.update(c.id, dispatched)
    report.redispatched.append(c.id)
    log.info("sweep_redispatched", creation_id=c.id, status=c.status.value, path=path)
